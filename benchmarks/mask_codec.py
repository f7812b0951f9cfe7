"""Mask file bytes per task: v1 (1 bit per weight), v2 (entropy-coded), the entropy bound, LoRA r=8.

    python benchmarks/mask_codec.py MASKFILE [MASKFILE ...] [--synthetic-mpnet]

For each given mask file (any version, e.g. a run's ``task.masks``): the v1 and v2 sizes,
the per-layer empirical entropy bound (sum of n·H(p) over layers), bits per masked weight
and the v2 encode / decode time (median of 5). ``--synthetic-mpnet`` adds an MPNet row whose
mask is *random* with the first file's overall sparsity (for when no trained MPNet mask
is at hand; said so in the output): i.i.d. bits are what the coder's
model assumes, so these rows show its size, not a trained mask's. The LoRA rows are the
bytes of ``maskfit train --method lora``'s file (r=8 on query and value, the head trained,
fp32 as maskfit saves it, and the same tensors in bf16), built on the base untrained
(the size does not depend on training). Writes ``benchmarks/results/mask_codec.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maskfit.maskcodec import decode, encode, entropy_bits  # noqa: E402
from maskfit.maskfile import convert, read_maskfile  # noqa: E402


def timed(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(model: str, task: str, masks: dict[str, torch.Tensor], head_bytes: int, v1_bytes: int | None,
        v2_bytes: int | None, source: str) -> dict:
    n = sum(m.numel() for m in masks.values())
    coded = {k: encode(m) for k, m in masks.items()}
    payload = sum(p.numel() for _, p in coded.values())
    bound = sum(entropy_bits(m) for m in masks.values()) / 8
    enc = timed(lambda: [encode(m) for m in masks.values()])
    dec = timed(lambda: [decode(c, p, masks[k].shape) for k, (c, p) in coded.items()])
    return {"model": model, "task": task, "source": source, "masked_weights": n,
            "sparsity": 1 - sum(float(m.sum()) for m in masks.values()) / n,
            "v1_mask_bytes": (n + 7) // 8 if v1_bytes is None else None, "v1_file_bytes": v1_bytes,
            "v2_mask_bytes": payload, "v2_file_bytes": v2_bytes, "entropy_bound_bytes": bound,
            "v2_over_bound": payload / bound, "bits_per_weight_v2": 8 * payload / n, "head_bytes": head_bytes,
            "encode_s": enc, "decode_s": dec}


def lora_sizes(model_name: str) -> dict:
    from maskfit import build_model
    from maskfit.lora import add_lora, lora_config, save_lora

    model = build_model(model_name, "sequence", ["0", "1"])
    add_lora(model, lora_config(model, 8, 16.0, ("q", "v"), 0.0))
    with tempfile.TemporaryDirectory() as d:
        path = save_lora(model, Path(d) / "lora.safetensors")
        fp32 = path.stat().st_size
        from safetensors.torch import load_file, save_file

        t = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        save_file(t, str(Path(d) / "bf16.safetensors"))
        bf16 = (Path(d) / "bf16.safetensors").stat().st_size
    return {"fp32": fp32, "bf16": bf16}


def trained_by(mask_file: Path) -> str:
    """`, from maskfit train ...`: the training command rebuilt from the run.json beside a run's task.masks."""
    run = mask_file.parent / "run.json"
    if not run.is_file():
        return ""
    r = json.loads(run.read_text())
    a = r.get("args", {})
    cmd = ["maskfit", "train", "--task", r["task"]["name"] if isinstance(r["task"], dict) else str(r["task"]),
           "--model", str(r["model"]), "--method", str(r["method"]), "--seed", str(a.get("seed", 0)),
           "--epochs", str(a.get("epochs"))]
    if r.get("lr") is not None:  # the lr it trained with (the default has changed over time)
        cmd += ["--lr", f"{r['lr']:g}"]
    if a.get("limit_train"):
        cmd += ["--limit-train", str(a["limit_train"])]
    return f", from `{shlex.join(cmd)}`"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="mask files (task.masks of finished runs)")
    ap.add_argument("--synthetic-mpnet", action="store_true")
    a = ap.parse_args()
    rows = []
    for f in a.files:
        mf = read_maskfile(f)
        task = ((mf.meta.get("extra") or {}).get("task") or {}).get("name", Path(f).parent.name)
        head = sum(t.numel() * t.element_size() for t in mf.head.values())
        with tempfile.TemporaryDirectory() as d:
            v2 = convert(f, Path(d) / "v2.masks").stat().st_size
        v1 = Path(f).stat().st_size if mf.meta["version"] == 1 else None
        rows.append(row(mf.meta["base_model"], task, mf.masks, head, v1, v2, f"trained: {f}{trained_by(Path(f))}"))
        if a.synthetic_mpnet and f == a.files[0]:
            from maskfit import MaskConfig, build_model, mask_model
            from maskfit.masking import active_layers

            base = build_model("mpnet", "sequence", ["0", "1"])
            mask_model(base, MaskConfig())
            keep = 1 - rows[-1]["sparsity"]
            g = torch.Generator().manual_seed(0)
            masks = {n: torch.rand(m.weight.shape, generator=g) < keep for n, m in active_layers(base).items()}
            rows.append(row("mpnet", task, masks, head_bytes=0, v1_bytes=None, v2_bytes=None,
                            source=f"synthetic: random bits at the sparsity of {f}"))
    lora = {m: lora_sizes(m) for m in sorted({r["model"] for r in rows})}
    out = {"command": "python benchmarks/mask_codec.py " + shlex.join(sys.argv[1:]), "rows": rows, "lora_r8": lora}
    res = ROOT / "benchmarks" / "results"
    (res / "mask_codec.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Mask file bytes: v1, v2 (entropy-coded), the entropy bound, LoRA r=8", "",
             f"`{out['command']}`", "",
             "| model | task | masks | sparsity | v1 masks B | v2 masks B | entropy bound B | v2 / bound | "
             "bits / weight (v2) | v2 file B | LoRA r=8 file B (fp32 / bf16) | encode ms | decode ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lr = lora[r["model"]]
        lines.append(f"| {r['model']} | {r['task']} | {'trained' if r['source'].startswith('trained') else 'random'} | "
                     f"{r['sparsity']:.4f} | {(r['masked_weights'] + 7) // 8:,} | {r['v2_mask_bytes']:,} | "
                     f"{r['entropy_bound_bytes']:,.0f} | {r['v2_over_bound']:.4f} | {r['bits_per_weight_v2']:.3f} | "
                     f"{r['v2_file_bytes'] or 0:,} | {lr['fp32']:,} / {lr['bf16']:,} | {1000 * r['encode_s']:.0f} | "
                     f"{1000 * r['decode_s']:.0f} |")
    lines += ["", "v1 spends 1 bit per masked weight; v2 codes each layer as i.i.d. bits with its own probability "
              "(ANS, `maskfit/maskcodec.py`); the bound is Σ n·H(p) over layers. File bytes add the random head "
              "(fp32) and the JSON header. Decoding happens once, when a file is read or a task registered; "
              "serving switches between the decoded 1-bit masks as before."]
    if any(not r["source"].startswith("trained") for r in rows):
        lines[-1] += (" Random (MPNet) rows: i.i.d. bits at a trained MiniLM mask's overall sparsity, "
                      "not trained masks.")
    lines += ["", "Sources:", ""] + [f"- {r['model']} {r['task']}: {r['source']}" for r in rows]
    (res / "mask_codec.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
