"""Memory of N tasks: N finetuned copies vs one base + N mask files (paper Table 8, Figure 3).

Counts come from the real model's parameter shapes: the architecture is instantiated on
PyTorch's ``meta`` device (no weights are loaded), its head parameters are split off as
in :func:`maskfit.heads.random_head_parameters`, and the masked layers are the ones
:func:`maskfit.masking.target_names` selects for the given blocks (paper preset: all
blocks but the two lowest, plus the pooler and the classifier).

* finetuning, N tasks: N × (pretrained + head) fp32 parameters;
* masking, N tasks: 1 × pretrained fp32 + N × (1 bit per masked weight, packed per
  layer to whole bytes as in a mask file, + the fp32 random head).

For ``BertConfig()`` (bert-base-uncased's shape) with the preset: 109,482,240
pretrained parameters, 71,368,704 masked weights (blocks 2–11: 10 × 7,077,888, plus the
pooler's 589,824), i.e. 8.9 MB of bits per task against 438 MB per finetuned copy.

:func:`measure_resident` measures the resident set size (psutil) of a live
:class:`~maskfit.serve.MultiTaskModel` as mask files are registered one by one.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

MB = 1e6


def _config(model_name_or_config):
    if isinstance(model_name_or_config, str):
        from transformers import AutoConfig

        from .errors import ModelError
        from .models import resolve_model

        try:
            return AutoConfig.from_pretrained(resolve_model(model_name_or_config))
        except (OSError, ValueError) as e:
            raise ModelError(f"could not load the config of '{model_name_or_config}': {str(e).splitlines()[0]}") from None
    return copy.deepcopy(model_name_or_config)


def count_params(model_name_or_config, blocks=None, task_type: str = "sequence", num_labels: int = 2,
                 mask_config=None) -> dict:
    """Parameter counts of one task model: pretrained, head, masked weights, mask file bytes.

    ``blocks``: which blocks are masked (``None`` = paper preset, ``"all"``, ``"2-11"``…);
    ``mask_config`` (a :class:`~maskfit.MaskConfig`) overrides it when given.
    """
    import torch

    from .heads import HEAD_CLASSES, POOLER_INTO_PRE_CLASSIFIER, random_head_parameters
    from .masking import MaskConfig, target_names
    from .model import MaskfitModel

    config = _config(model_name_or_config)
    if task_type != "choice":
        config.num_labels = num_labels
    cfg = mask_config or MaskConfig(blocks=blocks)
    with torch.device("meta"):
        model = HEAD_CLASSES[task_type].from_config(config)
    target = POOLER_INTO_PRE_CLASSIFIER.get(config.model_type)
    copied = False
    if target is not None:
        try:
            model.get_submodule(target)
            copied = True  # the bundled checkpoints carry a pooler to start it from
        except AttributeError:
            pass
    total = sum(p.numel() for p in model.parameters())
    head = random_head_parameters(MaskfitModel(model, str(config.model_type), task_type, pooler_copied=copied))
    head_params = sum(p.numel() for p in head.values())
    masked = head_masked = 0
    packed_bytes = 0
    for name in target_names(model, cfg):
        n = model.get_submodule(name).weight.numel()
        packed_bytes += (n + 7) // 8
        if f"{name}.weight" in head:
            head_masked += n
        else:
            masked += n
    return {
        "model_type": config.model_type,
        "pretrained_params": total - head_params,
        "head_params": head_params,
        "masked_weights": masked,
        "head_masked_weights": head_masked,
        "mask_file_bytes": packed_bytes + 4 * head_params,
        "blocks": cfg.block_indices(_num_blocks(model)),
    }


def _num_blocks(model) -> int:
    from .masking import architecture_for

    arch = architecture_for(model.config.model_type)
    return len(model.base_model.get_submodule(arch.blocks))


def memory_table(model_name_or_config, n_tasks: int = 16, blocks=None, task_type: str = "sequence",
                 num_labels: int = 2) -> list[dict]:
    """One row per N = 1..``n_tasks``: parameters and bytes of finetuning vs masking."""
    if n_tasks < 1:
        raise ValueError("n_tasks must be >= 1")
    c = count_params(model_name_or_config, blocks=blocks, task_type=task_type, num_labels=num_labels)
    per_copy = c["pretrained_params"] + c["head_params"]
    rows = []
    for n in range(1, n_tasks + 1):
        ft_bytes = 4 * n * per_copy
        mask_bytes = 4 * c["pretrained_params"] + n * c["mask_file_bytes"]
        rows.append({
            "n_tasks": n,
            "finetune_params": n * per_copy,
            "finetune_bytes": ft_bytes,
            "mask_fp32_params": c["pretrained_params"] + n * c["head_params"],
            "mask_bits": n * (c["masked_weights"] + c["head_masked_weights"]),
            "mask_bytes": mask_bytes,
            "ratio": ft_bytes / mask_bytes,
            "pretrained_params": c["pretrained_params"],
            "masked_weights": c["masked_weights"],
            "per_task_bytes": c["mask_file_bytes"],
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of :func:`memory_table` rows."""
    lines = ["| tasks | finetuning: params | finetuning: MB | masking: fp32 params + mask bits | masking: MB | ratio |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n_tasks']} | {r['finetune_params']:,} | {r['finetune_bytes'] / MB:,.1f} | "
                     f"{r['mask_fp32_params']:,} + {r['mask_bits']:,} bits | {r['mask_bytes'] / MB:,.1f} | "
                     f"{r['ratio']:.2f}× |")
    return "\n".join(lines)


def plot_memory(rows: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Line plot of memory (MB) against the number of tasks, finetuning vs masking (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = [r["n_tasks"] for r in rows]
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(n, [r["finetune_bytes"] / MB for r in rows], marker="o", label="finetuning (N fp32 copies)")
    ax.plot(n, [r["mask_bytes"] / MB for r in rows], marker="s",
            label="masking (1 fp32 base + N 1-bit masks)")
    measured = [r for r in rows if "measured_bytes" in r]
    if measured:
        ax.plot([r["n_tasks"] for r in measured], [r["measured_bytes"] / MB for r in measured], marker="^",
                linestyle="--", label="masking, measured (base + RSS growth)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of tasks N")
    ax.set_ylabel("memory (MB)")
    ax.set_title(title or "Memory for N tasks: finetuning vs masking")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from .run import atomic_write

    atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png"))
    return path


# --------------------------------------------------------------------------- measured


def _trim() -> None:
    gc.collect()
    try:  # give freed heap pages back to the OS, so RSS shows what is held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    import psutil

    _trim()
    return psutil.Process().memory_info().rss


def measure_resident(model_name: str, mask_files, strategy: str = "cache", fresh_process: bool = False) -> list[dict]:
    """RSS of a live MultiTaskModel with 0, 1, …, N of ``mask_files`` registered.

    Rows: ``n_tasks``, ``rss_bytes``, ``delta_bytes`` (over the previous row),
    ``file_bytes`` (size of the mask file just added). No request is run, so no merged
    weights exist: this is the cost of *holding* tasks. ``fresh_process=True`` measures
    in a new Python process (the current one may hold unrelated memory).
    """
    mask_files = [str(p) for p in mask_files]
    if fresh_process:
        cmd = [sys.executable, "-m", "maskfit.memory", "--measure", model_name, "--strategy", strategy, *mask_files]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring in a subprocess failed: {proc.stderr.strip().splitlines()[-1:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    from .serve.multitask import MultiTaskModel

    mt = MultiTaskModel(model_name, strategy=strategy)
    rows = [{"n_tasks": 0, "rss_bytes": _rss(), "delta_bytes": 0, "file_bytes": 0}]
    for i, f in enumerate(mask_files, 1):
        mt.register(f"task{i}", f)
        rss = _rss()
        rows.append({"n_tasks": i, "rss_bytes": rss, "delta_bytes": rss - rows[-1]["rss_bytes"],
                     "file_bytes": os.path.getsize(f)})
    return rows


def memory_command(model_name: str, n_tasks: int = 16, plot_path: str | os.PathLike | None = None,
                   mask_files=None, blocks=None) -> list[dict]:
    """What ``maskfit memory`` runs: print the table, optionally plot it and measure RSS."""
    rows = memory_table(model_name, n_tasks, blocks=blocks)
    r0 = rows[0]
    print(f"{model_name}: {r0['pretrained_params']:,} pretrained parameters, {r0['masked_weights']:,} masked "
          f"weights, {r0['per_task_bytes'] / MB:.2f} MB per task as a mask file "
          f"vs {4 * (r0['finetune_params']) / MB:.1f} MB per finetuned copy")
    print(format_table(rows))
    if mask_files:
        measured = measure_resident(model_name, mask_files, fresh_process=True)
        print("\nmeasured resident set size (fresh process, masks registered one by one):")
        print("| tasks | RSS MB | added MB | mask file MB |\n|---:|---:|---:|---:|")
        for m in measured:
            print(f"| {m['n_tasks']} | {m['rss_bytes'] / MB:.1f} | {m['delta_bytes'] / MB:.2f} | "
                  f"{m['file_bytes'] / MB:.2f} |")
        by_n = {m["n_tasks"]: m["rss_bytes"] for m in measured}
        for r in rows:  # what the tasks measurably add, on top of the (computed) fp32 base
            if r["n_tasks"] in by_n:
                r["measured_bytes"] = 4 * r["pretrained_params"] + by_n[r["n_tasks"]] - by_n[0]
    if plot_path:
        p = plot_memory(rows, plot_path, title=f"Memory for N tasks on {model_name}: finetuning vs masking")
        print(f"plot written to {p}")
    return rows


def _main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m maskfit.memory")
    ap.add_argument("--measure", metavar="MODEL", help="measure RSS with the mask files registered one by one")
    ap.add_argument("--strategy", default="cache")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_resident(args.measure, args.files, strategy=args.strategy)))
    else:
        ap.error("use --measure MODEL FILE...")


if __name__ == "__main__":
    _main()
