"""Does bf16 autocast change the direction of mask training? Score gradients, bf16 vs fp32.

    python benchmarks/precision_probe.py --task mrpc --batches 4

Early in training Adam moves every score by about ±lr in the direction of its gradient's
sign, so what bf16 could break is the *sign* of the score gradients. On real batches of
the task (MiniLM, paper-preset masks, dropout off so both passes see the same network),
this computes the score gradients under fp32 and under bf16 autocast and reports how
often their signs agree (over all nonzero gradients, over the above-median ones, and
weighted by |gradient|) and their cosine. bf16 on a CPU without AMX/AVX512-BF16 is
emulated (slow) but rounds the same way. Writes ``benchmarks/results/precision_probe.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision_probe.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from maskfit import MaskConfig, build_model, load_tokenizer, mask_model
    from maskfit.data.loader import batches
    from maskfit.masking import masked_layers
    from maskfit.runtime import autocast
    from maskfit.tasks import get_task
    from maskfit.tasktypes import task_type
    from maskfit.train import task_labels

    torch.set_num_threads(1)
    task, tok = get_task(a.task), load_tokenizer(a.model)
    kind, labels = task_type(task.type), task_labels(task)
    feats = kind.encode(task.load("train")[: a.batches * a.batch_size], tok, labels, 128)
    model = build_model(a.model, task.type, labels, seed=0, dropout=0.0)
    mask_model(model, MaskConfig(seed=0))
    model.train()
    layers = masked_layers(model)
    rows = []
    for piece, batch in batches(feats, tok.pad_token_id, a.batch_size, order="input"):
        grads = {}
        for precision in ("fp32", "bf16"):
            model.zero_grad(set_to_none=True)
            with autocast(torch.device("cpu"), precision):
                logits = kind.logits(model, batch)
            (kind.loss_sum(logits, batch["labels"]) / max(1, sum(kind.items(feats[i]) for i in piece.indices))).backward()
            grads[precision] = torch.cat([m.scores.grad.flatten().double() for m in layers.values()])
        g32, g16 = grads["fp32"], grads["bf16"]
        same = torch.sign(g32) == torch.sign(g16)
        big = g32.abs() > g32.abs().median()
        rows.append({"batch": piece.step,
                     "sign_agreement_nonzero": float(same[g32 != 0].float().mean()),
                     "sign_agreement_above_median": float(same[big].float().mean()),
                     "sign_agreement_weighted": float((same.double() * g32.abs()).sum() / g32.abs().sum()),
                     "cosine": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)),
                     "scores": int(g32.numel())})
        print(rows[-1])
    a.out.write_text(json.dumps({"command": f"python benchmarks/precision_probe.py --task {a.task} --batches "
                                            f"{a.batches}", "model": a.model, "task": a.task, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
