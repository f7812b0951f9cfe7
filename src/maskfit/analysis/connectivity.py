"""Fig. 6 of Zhao et al. (2020): mode connectivity along straight lines in weight space.

Three endpoints of one architecture, all of the same task and seed:

* **pretrained**: the pretrained encoder with the random classifier ``build_model`` draws
  from the seed (exactly the head the mask run starts from and keeps, since masking never
  trains W_T);
* **finetuned**: a ``train.fit`` finetuning run (every weight trained, its own classifier);
* **masked**: a ``train.fit`` mask run, materialised as plain weights: each masked linear
  becomes ``W ⊙ M`` (``masking.merged``), every unmasked tensor (embeddings, LayerNorms,
  biases, unmasked blocks) is the pretrained one, and its classifier is the masked random
  W_T with its bias.

For each pair (A, B) the dev score (and mean cross-entropy) is measured along
``W(γ) = W_A + γ (W_B − W_A)``, γ = 0, 0.1, …, 1, over the **whole** parameter set,
classifier included: each endpoint keeps its own classifier and the path interpolates
between them, so γ = 0 and γ = 1 reproduce the two endpoint models exactly (``torch.lerp``
is exact at both ends; tested to 1e-6 on the logits). Pairs: masked → finetuned (the
paper's Fig. 6), pretrained → finetuned and pretrained → masked.

Evaluation goes through ``engine.predict_outputs`` on ``torch.func.functional_call`` of
one plain model at each point (no weights are copied into a module).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (RAW, Settings, add_common_args, csv_list, eval_examples, get_task, int_list, lerp,
                     majority_score, out_dir, param_point, plain_model, pyplot, save_figure, scale_note,
                     score_point, settings_from_args, tokenizer_for, train_run, write_csv, write_json)

NAME = "connectivity"
PAIRS = (("masked", "finetuned"), ("pretrained", "finetuned"), ("pretrained", "masked"))


def gammas(n_points: int = 11) -> list[float]:
    return [round(float(g), 6) for g in np.linspace(0.0, 1.0, n_points)]


def endpoints(task, seed: int, settings: Settings, out: Path) -> tuple[dict, dict, object]:
    """``({name: parameter point}, {name: TrainedRun}, plain model)`` for the three endpoints."""
    ft = train_run(task, "finetune", out, settings, seed=seed)
    mk = train_run(task, "mask", out, settings, seed=seed)
    base = plain_model(task, settings, seed)
    points = {"pretrained": param_point(base), "finetuned": param_point(ft.model()), "masked": param_point(mk.model())}
    return points, {"finetuned": ft, "masked": mk}, base


def run(task_name: str = "pos", seed: int = 0, settings: Settings | None = None,
        out: str | Path = f"analysis/{NAME}", n_points: int = 11, pairs=PAIRS) -> dict:
    """Train (or reuse) the endpoints, walk each line, write ``connectivity.png/.csv/.json``."""
    settings = settings or Settings()
    out = out_dir(out)
    task = get_task(task_name, settings)
    points, runs, base = endpoints(task, seed, settings, out)
    examples = eval_examples(task, settings)
    tok = tokenizer_for(settings)
    from ..tasktypes import task_type
    from ..train import task_labels

    feats = task_type(task.type).encode(examples, tok, task_labels(task), settings.max_length)
    rows = []
    for a, b in pairs:
        for g in gammas(n_points):
            s = score_point(base, lerp(points[a], points[b], g), task, feats, examples, tok.pad_token_id)
            rows.append({"start": a, "end": b, "gamma": g, **s})
    write_csv(out / f"{NAME}.csv", rows)
    result = {"analysis": NAME, "task": task_name, "metric": task.metric, "seed": seed, "n_dev": len(examples),
              "settings": settings.describe(), "endpoint_dev_scores": {k: r.score for k, r in runs.items()},
              "majority_baseline": majority_score(task, settings), "path": rows}
    write_json(out / f"{NAME}.json", result)
    _plot(rows, pairs, task, settings, out / f"{NAME}.png", result["majority_baseline"])
    return result


def _plot(rows, pairs, task, settings, path, majority=None):
    plt = pyplot()
    has_loss = any("loss" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_loss else 1, figsize=(12 if has_loss else 6.5, 4.5), squeeze=False)
    for a, b in pairs:
        rs = [r for r in rows if r["start"] == a and r["end"] == b]
        lab = f"{a} (γ=0) → {b} (γ=1)"
        axes[0][0].plot([r["gamma"] for r in rs], [r["score"] for r in rs], marker="o", label=lab)
        if has_loss:
            axes[0][1].plot([r["gamma"] for r in rs], [r["loss"] for r in rs], marker="o", label=lab)
    if majority is not None:
        axes[0][0].axhline(majority, ls=":", color="gray", label="majority-class baseline")
    axes[0][0].set_ylabel(f"dev {task.metric}")
    axes[0][0].set_title("dev score along W(γ) = W_A + γ(W_B − W_A)", fontsize=10)
    if has_loss:
        axes[0][1].set_ylabel("dev cross-entropy")
        axes[0][1].set_yscale("log")
        axes[0][1].set_title("dev loss along the same lines", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("interpolation coefficient γ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{task.name}: linear mode connectivity of pretrained, finetuned and masked models (Fig. 6)\n"
                 f"{scale_note(settings)}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("connectivity", help="Fig. 6: dev score along lines between pretrained, finetuned, masked",
                       description=__doc__, formatter_class=RAW)
    add_common_args(p, NAME, tasks="pos")
    p.add_argument("--points", type=int, default=11, help="points on each line, γ from 0 to 1 (default 11)")
    p.set_defaults(func=main)


def main(a) -> int:
    tasks, seeds = csv_list(a.tasks), int_list(a.seeds)
    for t in tasks:
        out = Path(a.out) if len(tasks) == 1 else Path(a.out) / t
        res = run(t, seeds[0], settings_from_args(a), out, a.points)
        for a_, b_ in PAIRS:
            vals = " ".join(f"{r['score']:.3f}" for r in res["path"] if r["start"] == a_ and r["end"] == b_)
            print(f"{t} {a_} -> {b_}: {vals}")
        print(f"-> {out / (NAME + '.png')}")
    return 0
