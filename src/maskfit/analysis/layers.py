"""Fig. 2 / Table 7 of Zhao et al. (2020): which transformer blocks need masks.

For k = 0 … L (L = number of blocks), masks are trained on only k blocks, either
*bottom-up* (blocks 0 … k−1) or *top-down* (blocks L−k … L−1); the pooler (W_P) and the
classifier (W_T) are always masked, and unmasked blocks keep their pretrained weights.
k = 0 masks only the pooler and classifier, k = L masks every block: both directions
share these two runs (one run directory per distinct block set). The top-down set that
equals the paper preset (blocks 2 … L−1, i.e. k = L−2) is the default mask run, shared
with the other analyses when they use the same ``--runs`` folder.
"""
from __future__ import annotations

from pathlib import Path

from ..masking import MaskConfig
from .common import (RAW, Settings, add_common_args, csv_list, get_task, int_list, majority_score, mean_std,
                     num_blocks, out_dir, pyplot, save_figure, scale_note, settings_from_args, train_run,
                     write_csv, write_json)

NAME = "layers"
DIRECTIONS = ("bottom-up", "top-down")


def blocks_for(direction: str, k: int, n_blocks: int) -> list[int]:
    """The masked blocks for ``k`` blocks ``direction`` in a model of ``n_blocks``."""
    if not 0 <= k <= n_blocks:
        raise ValueError(f"k must be in 0..{n_blocks}, got {k}")
    if direction == "bottom-up":
        return list(range(k))
    if direction == "top-down":
        return list(range(n_blocks - k, n_blocks))
    raise ValueError(f"direction must be bottom-up or top-down, got {direction!r}")


def mask_config_for(blocks: list[int], n_blocks: int, seed: int) -> MaskConfig:
    """The run's config; the paper preset's block set is written as the preset (``blocks=None``)
    so that this run is the very run other analyses train with the default config."""
    preset = MaskConfig(seed=seed)
    return preset if blocks == preset.block_indices(n_blocks) else MaskConfig(blocks=blocks, seed=seed)


def run(tasks=("pos",), ks=None, seeds=(0,), settings: Settings | None = None,
        out: str | Path = f"analysis/{NAME}") -> dict:
    """Train every (task, direction, k, seed); write ``layers.png/.csv/.json``.

    ``ks`` defaults to 0 … L. Returns ``{"runs": [...], "summary": [{"task", "direction",
    "k", "blocks", "mean", "std", "n"}], "n_blocks": L}``.
    """
    settings = settings or Settings()
    out = out_dir(out)
    n = num_blocks(settings)
    ks = list(range(n + 1)) if ks is None else [int(k) for k in ks]
    runs, summary, majority = [], [], {}
    for task_name in tasks:
        task = get_task(task_name, settings)
        majority[task_name] = majority_score(task, settings)
        for direction in DIRECTIONS:
            for k in ks:
                blocks = blocks_for(direction, k, n)
                scores = []
                for seed in seeds:
                    cfg = mask_config_for(blocks, n, seed)
                    r = train_run(task, "mask", out, settings, seed=seed, mask_config=cfg)
                    scores.append(r.score)
                    runs.append({"task": task_name, "metric": r.metrics["metric"], "direction": direction, "k": k,
                                 "blocks": " ".join(map(str, blocks)) or "none", "seed": seed, "dev_score": r.score,
                                 "final_sparsity": r.metrics.get("sparsity"), "reused": r.reused})
                m, s = mean_std(scores)
                summary.append({"task": task_name, "metric": task.metric, "direction": direction, "k": k,
                                "blocks": " ".join(map(str, blocks)) or "none", "mean": m, "std": s, "n": len(scores)})
    write_csv(out / f"{NAME}.csv", summary)
    result = {"analysis": NAME, "settings": settings.describe(), "n_blocks": n, "seeds": list(seeds),
              "runs": runs, "summary": summary, "majority_baseline": majority}
    write_json(out / f"{NAME}.json", result)
    _plot(summary, tasks, settings, n, out / f"{NAME}.png", majority)
    return result


def _plot(summary, tasks, settings, n, path, majority=None):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7.5, 5.5 * len(tasks)), 4.8), squeeze=False)
    for ax, task_name in zip(axes[0], tasks):
        metric = ""
        for direction, marker in zip(DIRECTIONS, ("o", "s")):
            rows = [r for r in summary if r["task"] == task_name and r["direction"] == direction]
            metric = rows[0]["metric"] if rows else metric
            ax.errorbar([r["k"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
                        marker=marker, capsize=3, label=f"{direction} (blocks {'0…k−1' if direction == 'bottom-up' else 'L−k…L−1'})")
        if majority and majority.get(task_name) is not None:
            ax.axhline(majority[task_name], ls=":", color="gray", label="majority-class baseline")
        ax.set_xlabel(f"number of masked transformer blocks k (of L = {n})")
        ax.set_ylabel(f"best dev {metric}")
        ax.set_title(task_name)
        ax.set_xticks(sorted({r["k"] for r in summary}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Masking only k transformer blocks, bottom-up vs top-down (Fig. 2)\n"
                 f"pooler (if the head has one) and classifier always masked\n{scale_note(settings)}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("layers", help="Fig. 2 / Table 7: masking k blocks bottom-up vs top-down",
                       description=__doc__, formatter_class=RAW)
    add_common_args(p, NAME, tasks="pos")
    p.add_argument("--ks", help="comma-separated k values (default: 0 … number of blocks)")
    p.set_defaults(func=main)


def main(a) -> int:
    ks = int_list(a.ks) if a.ks else None
    res = run(csv_list(a.tasks), ks, int_list(a.seeds), settings_from_args(a), a.out)
    for r in res["summary"]:
        print(f"{r['task']:6s} {r['direction']:9s} k={r['k']} (blocks {r['blocks']}): {r['metric']} "
              f"{r['mean']:.4f} ± {r['std']:.4f}")
    print(f"-> {Path(a.out) / (NAME + '.png')}")
    return 0
