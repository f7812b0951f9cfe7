"""Table 3 of Zhao et al. (2020), extended to IMDB: out-of-domain generalisation.

A masked and a finetuned model are trained (``train.fit``) on a *source* task and scored
on a *target* task with the same label names (default SST-2 → IMDB: both ``0`` = negative,
``1`` = positive), with no training on the target.

The target is scored on its evaluation split (IMDB: the test split, since it has no dev)
on a seeded random sample of ``--limit-eval`` examples (the first N rows of a sorted file
could hold one label only). The **majority-vote baseline** predicts, for every target
example, the most frequent label of the target's *train* split (falling back to the
evaluated sample when the target has no labelled train split); ``gain`` is a model's
target score minus that baseline's score on the same sample. The source dev score is
the run's best dev score. On the command line the source is the first of ``--tasks``.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from ..train import evaluate
from .common import (RAW, Settings, add_common_args, get_task, int_list, out_dir, pyplot, save_figure, scale_note,
                     settings_from_args, tokenizer_for, train_run, write_csv, write_json)

NAME = "transfer"
METHODS = ("mask", "finetune")


def target_sample(task, n: int | None, seed: int) -> list:
    """A seeded random sample of ``n`` examples of the target's evaluation split (all if None)."""
    split = task.eval_split if task.has_split(task.eval_split) else "dev"
    exs = task.load(split)
    if n is None or n >= len(exs):
        return list(exs)
    return random.Random(seed).sample(list(exs), n)


def majority_baseline(task, examples: list) -> dict:
    """Most frequent train label of the target (or of ``examples``) and its score on ``examples``."""
    source = "target train split"
    try:
        labels = [ex.label for ex in task.load("train") if ex.label is not None]
    except Exception:  # no train split
        labels = []
    if not labels:
        labels, source = [ex.label for ex in examples], "evaluated sample"
    majority = Counter(labels).most_common(1)[0][0]
    from ..metrics import compute_metric

    score = compute_metric(task.metric, [majority] * len(examples), [ex.label for ex in examples])
    return {"label": majority, "from": source, "score": float(score)}


def run(source: str = "sst2", target: str = "imdb", seeds=(0,), settings: Settings | None = None,
        out: str | Path = f"analysis/{NAME}", target_max_length: int | None = None) -> dict:
    """Train (or reuse) mask and finetune runs on ``source``; score them on ``target``."""
    settings = settings or Settings()
    out = out_dir(out)
    src, tgt = get_task(source, settings), get_task(target, settings)
    if src.type != "sequence" or tgt.type != "sequence":
        raise ValueError("transfer needs two sequence classification tasks")
    if list(src.labels) != list(tgt.labels):
        raise ValueError(f"{source} and {target} have different label names ({src.labels} vs {tgt.labels})")
    tok = tokenizer_for(settings)
    max_len = target_max_length or settings.max_length
    rows = []
    for seed in seeds:
        examples = target_sample(tgt, settings.limit_eval, seed)
        base = majority_baseline(tgt, examples)
        for method in METHODS:
            r = train_run(src, method, out, settings, seed=seed)
            score, _ = evaluate(r.model(), tgt, tok, examples, max_len)
            rows.append({"source": source, "target": target, "method": method, "seed": seed,
                         "metric": tgt.metric, "source_dev_score": r.score, "target_score": float(score),
                         "majority_label": base["label"], "majority_from": base["from"],
                         "majority_score": base["score"], "gain": float(score) - base["score"],
                         "n_target": len(examples), "target_max_length": max_len})
    write_csv(out / f"{NAME}.csv", rows)
    result = {"analysis": NAME, "source": source, "target": target, "settings": settings.describe(), "rows": rows}
    write_json(out / f"{NAME}.json", result)
    _plot(rows, settings, out / f"{NAME}.png")
    return result


def _plot(rows, settings, path):
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(len(METHODS))
    w = 0.38

    def agg(method, key):
        v = [r[key] for r in rows if r["method"] == method]
        return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    for off, key, lab in ((-w / 2, "source_dev_score", f"source dev ({rows[0]['source']})"),
                          (w / 2, "target_score", f"target ({rows[0]['target']}, no training on it)")):
        ms = [agg(m, key) for m in METHODS]
        several = len({r["seed"] for r in rows}) > 1
        bars = ax.bar(x + off, [m for m, _ in ms], w, yerr=[s for _, s in ms] if several else None, capsize=4,
                      label=lab + (" (mean ± std over seeds)" if several else ""))
        for b, (m, sd) in zip(bars, ms):
            ax.text(b.get_x() + b.get_width() / 2, m + sd + 0.01, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    maj = float(np.mean([r["majority_score"] for r in rows]))
    ax.axhline(maj, color="k", ls="--", lw=1, label=f"target majority-vote baseline ({maj:.3f})")
    ax.set_xticks(x, ["masking", "finetuning"])
    ax.set_ylabel(rows[0]["metric"])
    ax.set_ylim(0, 1.08)
    ax.set_title(f"Train on {rows[0]['source']}, evaluate on {rows[0]['target']} (Table 3 + IMDB)\n"
                 f"{scale_note(settings)}; target n={rows[0]['n_target']}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("transfer", help="Table 3 + IMDB: train on one task, evaluate on another (SST-2 -> IMDB)",
                       description=__doc__, formatter_class=RAW)
    add_common_args(p, NAME, tasks="sst2")  # the source task
    p.add_argument("--target", default="imdb", help="target task with the same labels (default: imdb)")
    p.add_argument("--target-max-length", type=int, help="max tokens for target inputs (default: --max-length)")
    p.set_defaults(func=main)


def main(a) -> int:
    source = a.tasks.split(",")[0].strip()
    res = run(source, a.target, int_list(a.seeds), settings_from_args(a), a.out, a.target_max_length)
    for r in res["rows"]:
        print(f"{r['source']} -> {r['target']} {r['method']:8s} seed {r['seed']}: source dev {r['source_dev_score']:.4f}, "
              f"target {r['target_score']:.4f}, majority {r['majority_score']:.4f}, gain {r['gain']:+.4f}")
    print(f"-> {Path(a.out) / (NAME + '.png')}")
    return 0
