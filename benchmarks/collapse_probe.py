"""Has a sequence head collapsed onto one answer? Probe what it reads on real dev examples.

A mask that falls back to the majority class predicts the label prior for every input
(its dev loss equals the label entropy). This probe says where the input dependence is
lost, on the first ``--limit`` dev examples of a run's task:

- ``read``: the vector the head reads ([CLS] or the mean; the input of W_P), its norm and
  the mean cosine between examples (1.0: every input reads the same);
- ``pooled``: W_P's output before tanh, its mean |x| and the share of tanh outputs past
  ±0.99 (saturated: the gradient through them vanishes), and the same mean cosine;
- ``logits``: the std across examples of the logit margin, the share of the top prediction.

    python benchmarks/collapse_probe.py RUN [--checkpoint | --init] [--limit 128]

``RUN`` is a ``maskfit train`` output directory of a mask run: its best mask by default;
with ``--checkpoint`` the scores of its last epoch checkpoint (a run still training),
which is where a collapse that followed the best epoch shows; with ``--init`` the model
before its first step (the run's seed and mask config drawn again). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def _pooler(model) -> torch.nn.Module:
    """The W_P linear of ``model``'s head (a pre-classifier, else the base model's pooler)."""
    from maskfit.masking.targets import architecture_for
    from maskfit.masking.apply import unwrap

    task_model = unwrap(model)
    arch = architecture_for(task_model.config.model_type)
    named = dict(task_model.named_modules())
    base = {n: m for n, m in task_model.base_model.named_modules()}
    for name in arch.pre_classifier:
        if name in named:
            return named[name]
    for name in arch.pooler:
        if name in base:
            return base[name]
    raise SystemExit("error: this head has no pooler / pre-classifier to probe")


def _load_checkpoint_scores(model, run_dir: Path) -> str:
    """Put the scores of the run's last epoch checkpoint into ``model``'s masked layers."""
    from safetensors.torch import load_file

    from maskfit.masking import masked_layers

    progress = run_dir / "checkpoint" / "progress.json"
    if not progress.is_file():
        raise SystemExit(f"error: {run_dir} has no epoch checkpoint (checkpoint/progress.json)")
    state = json.loads(progress.read_text())["state"]
    tensors = load_file(str(run_dir / "checkpoint" / state / "model.safetensors"))
    layers = masked_layers(model)
    loaded = 0
    for name, layer in layers.items():
        key = next((k for k in tensors if k.endswith(f"{name}.scores")), None)
        if key is None:
            raise SystemExit(f"error: the checkpoint has no scores for {name}")
        with torch.no_grad():
            layer.scores.copy_(tensors[key])
        loaded += 1
    return f"{state} ({loaded} masked layers)"


def _mean_cosine(x: np.ndarray) -> float:
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = u @ u.T
    n = len(x)
    return float((sims.sum() - n) / (n * (n - 1)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--checkpoint", action="store_true", help="probe the last epoch checkpoint, not the best mask")
    state.add_argument("--init", action="store_true", help="probe the model before training")
    p.add_argument("--limit", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    from maskfit.engine import predict_outputs
    from maskfit.run import load_run
    from maskfit.runtime import set_threads
    from maskfit.tasktypes import task_type
    from maskfit.train import top_prediction_share

    set_threads(a.threads)
    run = load_run(a.run)
    if run.task_type != "sequence" or run.method != "mask":
        raise SystemExit(f"error: the probe reads mask runs of sequence tasks; {a.run} is {run.method} on {run.task_type}")
    if a.init or a.checkpoint:  # the training model, drawn again from the run's seed and config
        from maskfit.masking import MaskConfig
        from maskfit.train import TrainArgs, make_model, split_data

        known = TrainArgs.defaults()
        args = TrainArgs(**{k: v for k, v in run.info["args"].items() if k in known})
        model = make_model(run.info["model"], run.task, args, MaskConfig(**run.info["mask_config"]),
                           train=split_data(run.task, args)[0]).eval()
        source = "checkpoint " + _load_checkpoint_scores(model, Path(a.run)) if a.checkpoint else "init"
    else:
        model = run.model()
        source = "best mask"
    task = run.task
    split = "dev" if task.has_split("dev") else task.eval_split
    examples = task.load(split)[: a.limit]

    seen = {"read": [], "pooled": []}

    def record(module, inputs, output):  # returns None: the forward is unchanged
        seen["read"].append(inputs[0].detach().float().numpy())
        seen["pooled"].append(output.detach().float().numpy())

    hook = _pooler(model).register_forward_hook(record)
    kind, tok = task_type(run.task_type), run.tokenizer
    feats = kind.encode(examples, tok, run.labels, run.max_length)
    pairs = predict_outputs(model, kind, feats, tok.pad_token_id, run.labels, batch_size=32)
    hook.remove()
    logits = np.stack([o for _, o in sorted(pairs, key=lambda q: q[0])])
    read, pre = np.concatenate(seen["read"]), np.concatenate(seen["pooled"])
    score, preds = kind.score(task.metric, list(logits), examples, run.labels)
    margin = logits[:, -1] - logits[:, 0]
    print(json.dumps({
        "run": a.run, "state": source, "examples": len(examples), "pooling": run.info.get("args", {}).get("pooling"),
        "read": {"norm": float(np.linalg.norm(read, axis=1).mean()), "mean_cosine": _mean_cosine(read)},
        "pooled": {"mean_abs_pre_tanh": float(np.abs(pre).mean()),
                   "saturated": float((np.abs(np.tanh(pre)) > 0.99).mean()),
                   "mean_cosine": _mean_cosine(np.tanh(pre))},
        "logits": {"margin_std": float(margin.std()), "margin_mean": float(margin.mean()),
                   "top_prediction_share": top_prediction_share(preds), task.metric: score},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
