"""Fig. 1 of Zhao et al. (2020): dev score against the *initial* mask sparsity.

For each task, initial sparsity p and seed, one mask run (``MaskConfig(init_sparsity=p,
seed=seed)``, everything else the paper preset) is trained through ``train.fit``; the
plot shows the mean ± std over seeds of the best dev score, one line per task. The CSV
has every run (with the sparsity the mask ended at) and the per-(task, p) aggregates.
"""
from __future__ import annotations

from pathlib import Path

from ..masking import MaskConfig
from .common import (RAW, Settings, add_common_args, csv_list, float_list, get_task, int_list, majority_score,
                     mean_std, out_dir, pyplot, save_figure, scale_note, settings_from_args, train_run, write_csv,
                     write_json)

NAME = "sparsity_sweep"
DEFAULT_SPARSITIES = (0.01, 0.03, 0.05, 0.10, 0.20, 0.50, 0.95)


def run(tasks=("pos",), sparsities=DEFAULT_SPARSITIES, seeds=(0,), settings: Settings | None = None,
        out: str | Path = f"analysis/{NAME}") -> dict:
    """Train every (task, sparsity, seed); write ``sparsity_sweep.png/.csv/.json``.

    Returns ``{"runs": [...], "summary": [{"task", "init_sparsity", "mean", "std", "n"}], ...}``.
    """
    settings = settings or Settings()
    out = out_dir(out)
    runs, summary, majority = [], [], {}
    for task_name in tasks:
        task = get_task(task_name, settings)
        majority[task_name] = majority_score(task, settings)
        for p in sparsities:
            scores = []
            for seed in seeds:
                cfg = MaskConfig(init_sparsity=float(p), seed=seed)
                r = train_run(task, "mask", out, settings, seed=seed, mask_config=cfg)
                scores.append(r.score)
                runs.append({"task": task_name, "metric": r.metrics["metric"], "init_sparsity": float(p),
                             "seed": seed, "dev_score": r.score, "final_sparsity": r.metrics.get("sparsity"),
                             "best_epoch": r.metrics.get("best_epoch"), "wall_time_s": r.metrics.get("wall_time_s"),
                             "reused": r.reused})
            m, s = mean_std(scores)
            summary.append({"task": task_name, "metric": task.metric, "init_sparsity": float(p), "mean": m, "std": s,
                            "n": len(scores)})
    write_csv(out / f"{NAME}.csv", runs)
    result = {"analysis": NAME, "settings": settings.describe(), "seeds": list(seeds), "runs": runs,
              "summary": summary, "majority_baseline": majority}
    write_json(out / f"{NAME}.json", result)
    _plot(summary, tasks, sparsities, settings, out / f"{NAME}.png", majority)
    return result


def _plot(summary, tasks, sparsities, settings, path, majority=None):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = list(range(len(sparsities)))
    for task_name in tasks:
        rows = [r for r in summary if r["task"] == task_name]
        metric = rows[0]["metric"] if rows else ""
        line = ax.errorbar(xs, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o", capsize=4,
                           label=f"{task_name} ({metric})")
        if majority and majority.get(task_name) is not None:
            ax.axhline(majority[task_name], ls=":", color=line[0].get_color(),
                       label=f"{task_name} majority-class baseline")
    ax.set_xticks(xs, [f"{100 * p:g}%" for p in sparsities])
    ax.set_xlabel("initial mask sparsity (fraction of weights zeroed at start)")
    ax.set_ylabel("best dev score (mean ± std over seeds)")
    ax.set_title(f"Masking: dev score vs initial sparsity (Fig. 1)\n{scale_note(settings)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("sparsity-sweep", help="Fig. 1: dev score vs initial mask sparsity",
                       description=__doc__, formatter_class=RAW)
    add_common_args(p, NAME, tasks="pos", seeds="0,1")
    p.add_argument("--sparsities", default=",".join(f"{s:g}" for s in DEFAULT_SPARSITIES),
                   help="initial sparsities as fractions (default: 0.01,0.03,0.05,0.1,0.2,0.5,0.95)")
    p.set_defaults(func=main)


def main(a) -> int:
    res = run(csv_list(a.tasks), float_list(a.sparsities), int_list(a.seeds), settings_from_args(a), a.out)
    for r in res["summary"]:
        print(f"{r['task']:8s} init sparsity {100 * r['init_sparsity']:5.1f}%: {r['metric']} "
              f"{r['mean']:.4f} ± {r['std']:.4f} (n={r['n']})")
    print(f"-> {Path(a.out) / (NAME + '.png')}")
    return 0
