"""Fig. 5 of Zhao et al. (2020): how different are the masks that different tasks learn?

Every task is trained (through ``train.fit``) from the **same seed**, so all tasks start
from the same initial mask M0 (``initial_scores`` is seeded by the seed and the layer
name) and the same random classifier. For two tasks' trained masks M1, M2 of one layer
we report three numbers; the heat map shows the first two.

``dissimilarity`` (the main score, plotted on the left)::

    s = 1 − Σ 1[M1 = 1 ∧ M2 = 1] / Σ 1[M1 = 1 ∨ M2 = 1]

the Jaccard distance between the sets of weights the two masks *keep*. Identical masks
give 0; masks that keep disjoint sets give 1. We could not pin the paper's exact formula
from the sources we had (the brief quotes it as starting ``s = 1 − (Σ 1[M1 = M2 = 1]) …``,
which is this numerator); the Jaccard form is the natural completion of it, and it is
what we implemented. Because both masks start from M0 with 95% of the weights kept and
training flips only a few percent, s is small and close to the Hamming distance.

``hamming``: the normalised Hamming distance, mean 1[M1 ≠ M2].

``flip_dissimilarity_if_independent``: the reference for s_flip, what it would be in
expectation if the two tasks had flipped the same *numbers* of weights but chosen them
independently at random (flip rates p1, p2): ``1 − p1·p2 / (p1 + p2 − p1·p2)``. s_flip
below it means the tasks flip overlapping weights more often than chance.

``flip_dissimilarity`` (plotted in the middle): the same Jaccard distance applied to the
sets of weights each task *changed* relative to the shared initial mask,
F_i = {M_i ≠ M0}::

    s_flip = 1 − |F1 ∩ F2| / |F1 ∪ F2| = Σ 1[M1 ≠ M2] / |F1 ∪ F2|

(two binary masks that both flipped a weight from the same M0 agree on it), i.e. the
Hamming distance relative to the weights that moved at all. It is 0 when both tasks
flipped the same weights and 1 when no weight was flipped by both, so it is not diluted
by the 90+% of weights neither task touched; this is the number to read at small scale.

Per block, the counts of all masked linears in the block are summed before dividing
(a weighted average over the block's weights); the pooler (W_P) and classifier (W_T) are
their own groups. Example by hand (``tests/test_analysis.py``): M0 = ten ones, M1 zeroes
weights {0, 1}, M2 zeroes {2, 3}: kept sets of 8 each with 6 in common and 10 in the
union give s = 1 − 6/10 = 0.4, hamming = 4/10 = 0.4 and s_flip = 1 − 0/4 = 1.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import torch

from ..masking import initial_scores
from ..maskfile import read_maskfile
from .common import (RAW, Settings, add_common_args, csv_list, get_task, int_list, out_dir, pyplot, save_figure,
                     scale_note, settings_from_args, train_run, write_csv, write_json)

NAME = "similarity"
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks)\.(\d+)\.")


def mask_counts(m1: torch.Tensor, m2: torch.Tensor, m0: torch.Tensor | None = None) -> dict[str, int]:
    """The counts the scores are made of, for bool masks of one shape (M0 optional)."""
    m1, m2 = m1.bool(), m2.bool()
    if m1.shape != m2.shape:
        raise ValueError(f"mask shapes differ: {tuple(m1.shape)} vs {tuple(m2.shape)}")
    c = {"n": m1.numel(), "both_kept": int((m1 & m2).sum()), "either_kept": int((m1 | m2).sum()),
         "differ": int((m1 != m2).sum())}
    if m0 is not None:
        f1, f2 = m1 != m0.bool(), m2 != m0.bool()
        c.update(flipped_1=int(f1.sum()), flipped_2=int(f2.sum()), flipped_both=int((f1 & f2).sum()),
                 flipped_either=int((f1 | f2).sum()))
    return c


def scores_from_counts(c: dict[str, int]) -> dict[str, float]:
    """``dissimilarity``, ``hamming`` and (when M0 was given) ``flip_dissimilarity``."""
    out = {"dissimilarity": 1.0 - c["both_kept"] / c["either_kept"] if c["either_kept"] else 0.0,
           "hamming": c["differ"] / c["n"] if c["n"] else 0.0}
    if "flipped_either" in c:
        out["flip_dissimilarity"] = 1.0 - c["flipped_both"] / c["flipped_either"] if c["flipped_either"] else 0.0
        p1, p2 = c["flipped_1"] / c["n"], c["flipped_2"] / c["n"]
        union = p1 + p2 - p1 * p2
        out["flip_dissimilarity_if_independent"] = 1.0 - p1 * p2 / union if union else 0.0
    return out


def dissimilarity(m1: torch.Tensor, m2: torch.Tensor) -> float:
    """1 − |kept by both| / |kept by either| (Jaccard distance of the kept weights)."""
    return scores_from_counts(mask_counts(m1, m2))["dissimilarity"]


def flip_dissimilarity(m1: torch.Tensor, m2: torch.Tensor, m0: torch.Tensor) -> float:
    """Jaccard distance of the sets of weights each mask flipped relative to ``m0``."""
    return scores_from_counts(mask_counts(m1, m2, m0))["flip_dissimilarity"]


def layer_group(name: str) -> str:
    """``block N`` for a transformer block's linear, else ``pooler`` or ``classifier``."""
    m = _BLOCK.search(name)
    if m:
        return f"block {int(m.group(1))}"
    if "pooler" in name or "pre_classifier" in name or name.endswith("classifier.dense"):
        return "pooler"
    return "classifier"


def _group_order(groups) -> list[str]:
    blocks = sorted((g for g in groups if g.startswith("block ")), key=lambda g: int(g.split()[1]))
    return blocks + [g for g in ("pooler", "classifier") if g in groups]


def initial_mask(cfg, name: str, shape) -> torch.Tensor:
    """The mask layer ``name`` of this shape started from under ``cfg`` (its seed)."""
    return initial_scores(torch.Size(shape), cfg, name) >= cfg.threshold


def compare(mask_files: dict[str, str | Path]) -> tuple[list[dict], list[dict]]:
    """Per-layer and per-group rows for every pair of tasks' mask files."""
    files = {t: read_maskfile(p) for t, p in mask_files.items()}
    cfgs = {t: {k: v for k, v in mf.meta["mask_config"].items()} for t, mf in files.items()}
    first = next(iter(cfgs.values()))
    for t, c in cfgs.items():
        if c != first:
            raise ValueError(f"{t}'s mask was not trained from the same initial mask (config {c} vs {first})")
    cfg = next(iter(files.values())).config
    init: dict[tuple, torch.Tensor] = {}
    layer_rows, group_rows = [], []
    for t1, t2 in itertools.combinations(files, 2):
        a, b = files[t1], files[t2]
        groups: dict[str, dict[str, int]] = {}
        total: dict[str, int] = {}
        for name, m1 in a.masks.items():
            m2 = b.masks.get(name)
            if m2 is None or m2.shape != m1.shape:
                continue  # e.g. classifiers of tasks with different label counts
            key = (name, tuple(m1.shape))
            if key not in init:
                init[key] = initial_mask(cfg, name, m1.shape)
            c = mask_counts(m1, m2, init[key])
            g = layer_group(name)
            layer_rows.append({"task_1": t1, "task_2": t2, "layer": name, "group": g, **c, **scores_from_counts(c)})
            for acc in (groups.setdefault(g, {}), total):
                for k, v in c.items():
                    acc[k] = acc.get(k, 0) + v
        for g in _group_order(groups) + ["all"]:
            c = total if g == "all" else groups[g]
            group_rows.append({"task_1": t1, "task_2": t2, "group": g, **c, **scores_from_counts(c)})
    return layer_rows, group_rows


def run(tasks=("pos", "ner", "sst2", "mrpc"), seed: int = 0, settings: Settings | None = None,
        out: str | Path = f"analysis/{NAME}") -> dict:
    """Train (or reuse) one mask run per task from ``seed``; compare; write ``similarity.*``."""
    if len(tasks) < 2:
        raise ValueError("the similarity analysis needs at least two tasks")
    settings = settings or Settings()
    out = out_dir(out)
    files, scores = {}, {}
    for t in tasks:
        r = train_run(get_task(t, settings), "mask", out, settings, seed=seed)
        files[t] = r.run_dir / "task.masks"
        scores[t] = {"metric": r.metrics["metric"], "dev_score": r.score, "sparsity": r.metrics.get("sparsity")}
    layer_rows, group_rows = compare(files)
    write_csv(out / f"{NAME}.csv", group_rows)
    write_csv(out / f"{NAME}_layers.csv", layer_rows)
    result = {"analysis": NAME, "seed": seed, "tasks": scores, "settings": settings.describe(), "groups": group_rows,
              "formula": {"dissimilarity": "1 - sum(M1 & M2) / sum(M1 | M2)  (Jaccard distance of kept weights)",
                          "hamming": "mean(M1 != M2)",
                          "flip_dissimilarity": "1 - |F1 & F2| / |F1 | F2|, F_i = (M_i != M0)"}}
    write_json(out / f"{NAME}.json", result)
    _plot(group_rows, list(tasks), settings, out / f"{NAME}.png")
    return result


def _matrix(rows, pairs, groups, key):
    m = np.full((len(pairs), len(groups)), np.nan)
    for r in rows:
        i, j = pairs.index((r["task_1"], r["task_2"])), groups.index(r["group"]) if r["group"] in groups else None
        if j is not None and key in r:
            m[i, j] = r[key]
    return m


def _heat(ax, m, xlabels, ylabels, title, cmap, fmt="{:.3f}"):
    im = ax.imshow(m, aspect="auto", cmap=cmap)
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right")
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_title(title, fontsize=10)
    finite = m[np.isfinite(m)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                        color="black" if m[i, j] > mid else "white")
            else:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="gray")
    return im


def _plot(group_rows, tasks, settings, path):
    plt = pyplot()
    pairs = list(dict.fromkeys((r["task_1"], r["task_2"]) for r in group_rows))
    groups = _group_order({r["group"] for r in group_rows if r["group"] != "all"})
    ylabels = [f"{a} vs {b}" for a, b in pairs]
    fig, axes = plt.subplots(1, 3, figsize=(17, 1.2 + 0.55 * max(len(pairs), len(tasks)) + 2),
                             gridspec_kw={"width_ratios": [len(groups), len(groups), len(tasks) + 1]})
    im = _heat(axes[0], _matrix(group_rows, pairs, groups, "dissimilarity"), groups, ylabels,
               "dissimilarity 1 − |M1∧M2| / |M1∨M2|\n(Jaccard distance of kept weights)", "viridis")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    im = _heat(axes[1], _matrix(group_rows, pairs, groups, "flip_dissimilarity"), groups, ylabels,
               "flip dissimilarity 1 − |F1∩F2| / |F1∪F2| (F = weights changed\nfrom the shared initial mask; n/a: "
               "layer not in both models)", "magma", "{:.2f}")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    n = len(tasks)
    tt = np.zeros((n, n))
    for r in group_rows:
        if r["group"] == "all":
            i, j = tasks.index(r["task_1"]), tasks.index(r["task_2"])
            tt[i, j] = tt[j, i] = r["dissimilarity"]
    im = _heat(axes[2], tt, tasks, tasks, "dissimilarity over all masked weights\n(task × task)", "viridis")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes[:2]:
        ax.set_xlabel("layer group (transformer block, pooler W_P, classifier W_T)")
    axes[0].set_ylabel("task pair")
    fig.suptitle(f"Dissimilarity of masks learned for different tasks from the same initial mask (Fig. 5)\n"
                 f"{scale_note(settings)}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("similarity", help="Fig. 5: dissimilarity of masks of different tasks (same initial mask)",
                       description=__doc__, formatter_class=RAW)
    add_common_args(p, NAME, tasks="pos,ner,sst2,mrpc")
    p.set_defaults(func=main)


def main(a) -> int:
    res = run(csv_list(a.tasks), int_list(a.seeds)[0], settings_from_args(a), a.out)
    for r in res["groups"]:
        if r["group"] == "all":
            print(f"{r['task_1']} vs {r['task_2']}: dissimilarity {r['dissimilarity']:.4f}, hamming "
                  f"{r['hamming']:.4f}, flip dissimilarity {r.get('flip_dissimilarity', float('nan')):.3f} "
                  f"(independent flips: {r.get('flip_dissimilarity_if_independent', float('nan')):.3f})")
    print(f"-> {Path(a.out) / (NAME + '.png')}")
    return 0
