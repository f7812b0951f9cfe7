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


def engine_section() -> list[str]:
    """Issue 9: the device-aware engine against the one before it, and what parallelism changes."""
    out = ["## The engine: no regression, and what data parallelism changes", "",
           "No GPU was lent to the session that rebuilt the engine, so every figure here is the CPU's; the CUDA "
           "tests (`pytest -m cuda`) are written and skipped without a GPU.", ""]
    before, now = RES / "train_speed_f76d1d8.json", RES / "train_speed.json"
    if before.exists() and now.exists():
        b, n = json.loads(before.read_text()), json.loads(now.read_text())
        out += ["Training speed, the same benchmark on the same machine in one session (1 thread, fp32):", "",
                "| engine | maskfit mask ex/s | Trainer finetune ex/s | speed-up |", "|---|---:|---:|---:|",
                f"| before (f76d1d8) | {b['maskfit_mask']['examples_per_s']:.1f} | "
                f"{b['trainer_finetune']['examples_per_s']:.1f} | {b['speedup']:.2f}× |",
                f"| accelerate engine | {n['maskfit_mask']['examples_per_s']:.1f} | "
                f"{n['trainer_finetune']['examples_per_s']:.1f} | {n['speedup']:.2f}× |", "",
                f"Commands: `{n['command']}`; before: `{b['command']}`.", ""]
    ab = RES / "switch_ab.json"
    if ab.exists():
        a = json.loads(ab.read_text())
        this, base = a["median_ms"]["this"], a["median_ms"]["baseline"]
        out += [f"Task-switch latency, MiniLM, 4 tasks, CPU time per switch, median over {len(a['rounds']['this'])} "
                f"alternating rounds of 100 switches ({a['when']}; `{a['command']}`, the baseline a worktree of "
                "f76d1d8):", "", "| strategy | before ms | now ms | change |", "|---|---:|---:|---:|"]
        for k in this:
            out.append(f"| {k} | {base[k]:.2f} | {this[k]:.2f} | {100 * (this[k] / base[k] - 1):+.0f}% |")
        out.append("")
    eq = RES / "parallel_equivalence.json"
    if eq.exists():
        e = json.loads(eq.read_text())
        out += [f"Data parallelism and accumulation on the same examples (`{e['command']}`, MiniLM masks, CPU, "
                "gloo, dropout off):", "", "| run | mask bits that differ | train loss per epoch | dev per epoch | wall s |",
                "|---|---:|---|---|---:|"]
        for name, r in e["runs"].items():
            out.append(f"| {name} | {r['bits_differ']:,} of {r['bits_total']:,} | "
                       f"{' '.join(f'{x:.5f}' for x in r['losses'])} | {' '.join(f'{x:.4f}' for x in r['dev'])} | "
                       f"{r['wall_s']:.0f} |")
        out += ["", "The same examples make the same global batches; each shard's loss is divided by the item count "
                "of the whole global batch, so the gradient is the same. Bits can still differ by rounding: each "
                "micro-batch is padded to its own longest input, and Adam's first steps move a score by about ±lr "
                "whatever its gradient's size, so a weight whose gradient is rounding noise may flip (the tests "
                "measured 1,412 of 7,226,112 bits with accumulation on 96 MRPC examples, with equal dev scores, "
                "and allow 1e-3 of the bits).", ""]
    return out


METHODS = ("mask", "finetune", "lora")  # the fidelity goal table's columns, in order


def lr_tuned(row: dict) -> str:
    """The protocol's test: the chosen lr is tuned when its grid holds a tried lr on each side of it."""
    grid = row["lr_grid"]
    if len(grid) == 1:
        return "no"
    return "yes" if min(grid) < row["lr"] < max(grid) else "border"


def fidelity_section() -> list[str]:
    """The table of benchmarks/results/fidelity.json: per task, each method at its chosen lr over seeds."""
    path = RES / "fidelity.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    out = ["## Fidelity: mask vs finetune vs LoRA, full train sets, over seeds", "",
           "Dev scores ×100, mean ± std over seeds at each method's chosen lr (chosen by the first seed's dev "
           "score among `lr grid`; a grid of one value means that lr was not tuned). Built from "
           "`benchmarks/results/fidelity.json`; the commands are under the table.", "",
           "| model | task | method | lr (grid) | dev mean ± std | per seed | test mean | train n | epochs | wall s per run |",
           "|---|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        grid = ", ".join(f"{x:g}" for x in r["lr_grid"])
        out.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['lr']:g} ({grid}) | "
                   f"**{r['mean']:.2f} ± {r['std']:.2f}** | {', '.join(f'{x:.2f}' for x in r['scores'])} | "
                   f"{format(r['test_mean'], '.2f') if 'test_mean' in r else '–'} | "
                   f"{r.get('train_n') or ''}{' (sample)' if r.get('train_sample') else ''} | {r.get('epochs') or ''} | {r.get('wall_s_per_run') or ''} |")
    out.append("")
    by_task = {}
    for r in rows:
        by_task.setdefault((r["model"], r["task"]), {})[r["method"]] = r
    # One line per task: the goal (|mask − finetune| ≤ 1.0) and which lrs were tuned, at a glance.
    out += ["The goal, per task (a method's lr is `yes`, tuned, when its chosen lr has a tried lr on each side; "
            "`border` when it is the grid's lowest or highest, so the protocol would extend the grid; `no` for a grid "
            "of one value; `–` where that method has no row yet):", "",
            "| model | task | metric | mask | finetune | lora | mask − finetune | goal met | lr tuned (mask / ft / lora) |",
            "|---|---|---|---:|---:|---:|---:|---|---|"]
    for (model, task), m in by_task.items():
        cells = [f"{m[k]['mean']:.2f} ± {m[k]['std']:.2f}" if k in m else "–" for k in METHODS]
        tuned = [lr_tuned(m[k]) if k in m else "–" for k in METHODS]
        gap = m["mask"]["mean"] - m["finetune"]["mean"] if "mask" in m and "finetune" in m else None
        met = "–" if gap is None else "yes" if abs(gap) <= 1.0 else "no (mask ahead)" if gap > 0 else "no"
        metric = next(iter(m.values())).get("metric", "")
        out.append(f"| {model} | {task} | {metric} | {' | '.join(cells)} | "
                   f"{'–' if gap is None else format(gap, '+.2f')} | {met} | {' / '.join(tuned)} |")
    out.append("")
    for model, task, sample in dict.fromkeys((r["model"], r["task"], r["train_sample"]) for r in rows
                                             if r.get("train_sample")):
        out.append(f"- {model} {task}: train n (sample) is a {sample} of the train split, not the full set.")
    out += ["", "Rows written by `benchmarks/fidelity_seeds.py` from the runs' results, whose files name the "
            "training commands (`benchmarks/readme_mrpc.py` for the README command's mask seeds, `maskfit sweep` "
            "for the others):", ""]
    for (model, task), m in by_task.items():
        sources = sorted({s for r in m.values() for s in r.get("sources", [])})
        logs = sorted({(log, seed) for r in m.values() for log, seed in r.get("train_logs", [])})
        if sources or logs:
            out.append(f"    python benchmarks/fidelity_seeds.py --model {model} --task {task}"
                       + "".join(f" --runs {s}" if i == 0 else f" {s}" for i, s in enumerate(sources))
                       + "".join(f" --train-log {log} {seed}" for log, seed in logs))
    notes = RES / "fidelity_notes.md"
    if notes.exists():
        out += ["", notes.read_text().strip()]
    return out + [""]


def main() -> None:
    out = ["# Results", "",
           "Every number below was measured on a 2-core CPU machine without a GPU. The CPU model changes between "
           "sessions: most runs had a 2-core AMD EPYC with AVX2 and no native bf16 (`torch.cpu._is_amx_tile_supported()` "
           "and `_is_avx512_bf16_supported()` both False; bf16 autocast measured 7× slower than fp32 on a 2048×384 by "
           "384×1536 matmul there); the runs that had a 2-core Intel Xeon with AVX-512 and AMX say so where they appear. "
           "Every training run below is fp32 unless its section says bf16: `--precision auto` picks fp32 on the AMD "
           "machine, and for masks on any CPU; the Intel runs of other methods pinned `--precision fp32`. "
           "The machine was shared with other jobs while these ran; wall times and examples/s are therefore "
           "pessimistic and only comparable within one table. `python benchmarks/results_md.py` rebuilds this file "
           "from `benchmarks/results/`.", ""]

    out += fidelity_section()
    out += ["## Masking vs finetuning on the paper's tasks", ""]
    out.append(section(RES / "paper_table_cpu.md"))
    notes = RES / "paper_table_notes.md"
    if notes.exists():
        out.append(notes.read_text())
    defaults = RES / "mask_defaults.md"
    if defaults.exists():
        out.append(section(defaults, drop_title=False).replace("# Why", "## Why", 1))
        out += [section(p, drop_title=False) for p in sorted(RES.glob("readme_mrpc*.md"))]
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

    out += engine_section()

    size = RES / "mask_size.json"
    out += ["## Mask-file size (paper preset, 2-label sequence task)", "",
            "`python benchmarks/mask_size.py --models minilm mpnet`", "",
            "| model | fp32 model | masked weights (layers) | mask file | share of fp32 |", "|---|---:|---:|---:|---:|"]
    if size.exists():
        for r in json.loads(size.read_text()):
            out.append(f"| {r['model']} | {r['fp32_bytes']:,} B | {r['masked_weights']:,} ({r['masked_layers']}) | "
                       f"{r['file_bytes']:,} B | {r['percent_of_fp32']:.2f}% |")
    out += ["", "One bit per masked weight (mask file v1) plus the random head (fp32) and a JSON header; v2 "
            "(below) codes the same masks under the entropy bound.", ""]
    codec = section(RES / "mask_codec.md", drop_title=False)
    out.append("##" + codec if codec.startswith("# ") else codec)

    for model in ("minilm", "mpnet"):
        out += [f"## Serving many tasks from one base: {model}", ""]
        if model == "mpnet":
            out += ["(Measured with the engine before issue 9, in an earlier session; not rerun since.)", ""]
        out.append(section(RES / f"serve_{model}.md"))
    out += ["## Reliability", "",
            "Hostile and careless input, fuzzing and concurrent load (`benchmarks/reliability.py`): cases tried "
            "and failures, not timings.", ""]
    out.append(section(RES / "reliability.md"))
    (ROOT / "RESULTS.md").write_text("\n".join(out))
    print((ROOT / "RESULTS.md").read_text()[:400])


if __name__ == "__main__":
    main()
