"""Assemble RESULTS.md from the files the benchmarks wrote under benchmarks/results/.

    python benchmarks/results_md.py
Nothing here measures anything: every number is copied from a results file, and each
section names the command that wrote that file.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results"


def section(path: Path, drop_title: bool = True) -> str:
    if not path.exists():
        return f"_not run yet: {path.relative_to(ROOT)} is missing._\n"
    lines = path.read_text().splitlines()
    if drop_title and lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(l.replace("\n## ", "\n### ") if not l.startswith("## ") else "#" + l for l in lines) + "\n"


def main() -> None:
    out = ["# Results", "",
           "Every number below was measured on this project's 2-core CPU machine (no GPU, no native bf16: "
           "`torch.cpu._is_amx_tile_supported()` and `_is_avx512_bf16_supported()` are both False here, and "
           "bf16 autocast measured 7× slower than fp32 on a 2048×384 by 384×1536 matmul, so every run is fp32). "
           "The machine was shared with other jobs while these ran; wall times and examples/s are therefore "
           "pessimistic and only comparable within one table. `python benchmarks/results_md.py` rebuilds this file "
           "from `benchmarks/results/`.", ""]

    out += ["## Masking vs finetuning on the paper's tasks", ""]
    out.append(section(RES / "paper_table_cpu.md"))
    notes = RES / "paper_table_notes.md"
    if notes.exists():
        out.append(notes.read_text())
    grids = sorted(RES.glob("grid_*.md"))
    if grids:
        out += ["## What was tried: dev-split grids", ""] + [section(g, drop_title=False) for g in grids]
    out += ["## Earlier, shorter runs (`--profile quick`)", ""]
    out.append(section(RES / "paper_table_quick.md"))

    speed = RES / "train_speed.json"
    out += ["## Training speed: maskfit masking vs transformers.Trainer finetuning", ""]
    if speed.exists():
        s = json.loads(speed.read_text())
        out += [f"`{s['command']}` (threads: {s['threads']}, native bf16: {s['cpu_native_bf16']})", "",
                "| | examples/s | wall s |", "|---|---:|---:|",
                f"| maskfit train --method mask ({s['maskfit_mask']['precision']}) | "
                f"{s['maskfit_mask']['examples_per_s']:.1f} | {s['maskfit_mask']['wall_s']:.1f} |",
                f"| transformers.Trainer, default settings (finetune, fp32) | "
                f"{s['trainer_finetune']['examples_per_s']:.1f} | {s['trainer_finetune']['wall_s']:.1f} |",
                "", f"**Speed-up: {s['speedup']:.2f}×** ({s['n_train']} {s['task']} examples, {s['epochs']} epoch, "
                f"batch {s['batch_size']}). Without native bf16 the gain comes from length-bucketed dynamic padding, "
                "no backward pass below the lowest masked block, and Adam over the 7.2M scores instead of all 22.7M "
                "weights; bf16 autocast would add to it on a CPU with AMX.", ""]

    size = RES / "mask_size.json"
    out += ["## Mask-file size (paper preset, 2-label sequence task)", "",
            "`python benchmarks/mask_size.py --models minilm mpnet`", "",
            "| model | fp32 model | masked weights (layers) | mask file | share of fp32 |", "|---|---:|---:|---:|---:|"]
    if size.exists():
        for r in json.loads(size.read_text()):
            out.append(f"| {r['model']} | {r['fp32_bytes']:,} B | {r['masked_weights']:,} ({r['masked_layers']}) | "
                       f"{r['file_bytes']:,} B | {r['percent_of_fp32']:.2f}% |")
    out += ["", "One bit per masked weight plus the random head (fp32) and a JSON header.", ""]

    for model in ("minilm", "mpnet"):
        out += [f"## Serving many tasks from one base: {model}", ""]
        out.append(section(RES / f"serve_{model}.md"))
    (ROOT / "RESULTS.md").write_text("\n".join(out))
    print((ROOT / "RESULTS.md").read_text()[:400])


if __name__ == "__main__":
    main()
