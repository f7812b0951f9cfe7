"""The README's first command over several seeds: the figure the README states, with its spread.

    python benchmarks/readme_mrpc.py --seeds 0,1,2 --jobs 2 --name lr7e-5 -- --lr 7e-5

Each seed runs ``maskfit train --task mrpc --model minilm --method mask`` with every default
(lr, epochs, early stopping, ``--precision auto``; the README's command adds ``--lr 7e-5``, so
``-- --lr 7e-5`` runs exactly that) plus ``--seed N`` and, so
that ``--jobs`` runs can share the machine, ``--threads`` (default: cores / jobs). Extra
``maskfit train`` flags after ``--`` are added to every run (to compare a changed default
before making it the default). Finished runs under ``--runs`` are reused. Writes
``benchmarks/results/readme_mrpc[_<name>].json`` and ``.md``: per seed the best dev accuracy,
its epoch, the epochs run, wall time and the precision ``auto`` picked; mean ± std.

``--replay-patience 2,3,4`` over runs made with ``-- --patience 0`` adds what each early-stopping
patience would have kept of the same runs (``maskfit.train.EarlyStopping.replay``: the lr
schedule spans all epochs whatever the patience, so a run with patience P is the first epochs
of the run without early stopping), so one set of runs compares every patience.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_table import ROOT, run_row  # noqa: E402

from maskfit.runtime import cpu_model  # noqa: E402
from maskfit.train import EarlyStopping  # noqa: E402

README_CMD = ["maskfit", "train", "--task", "mrpc", "--model", "minilm", "--method", "mask"]


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    ap.add_argument("--runs", default="runs/readme_mrpc", help="folder of the per-seed run directories")
    ap.add_argument("--name", default="", help="suffix of the results files (for a comparison with extra flags)")
    ap.add_argument("--note", default="", help="one line written under the table")
    ap.add_argument("--replay-patience", default="", help="patiences to replay over runs made with --patience 0")
    a = ap.parse_args(argv)
    os.chdir(ROOT)
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    seeds = [int(s) for s in a.seeds.split(",")]
    base = Path(a.runs) / (a.name or "default")

    def one(seed: int):
        out = base / f"seed{seed}"
        cmd = README_CMD + ["--out", str(out), "--seed", str(seed), "--threads", str(threads), "--quiet", *extra]
        return seed, cmd, run_row(cmd, out)

    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(one, seeds))
    done = [(s, c, m) for s, c, m in rows if m is not None]
    scores = [100 * m["best_score"] for _, _, m in done]
    result = {
        "command": shlex.join(README_CMD + ["--out", "runs/mrpc"]), "extra_flags": extra,
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model()},
        "runs": [{"seed": s, "command": shlex.join(c), "best_dev_accuracy": 100 * m["best_score"],
                  "best_epoch": m["best_epoch"], "epochs_run": len(m["epochs"]), "wall_time_s": m["wall_time_s"],
                  "precision": m["precision"], "lr": m["lr"],
                  "dev_per_epoch": [round(100 * e["dev_score"], 2) for e in m["epochs"]]} for s, c, m in done],
        "failed_seeds": [s for s, _, m in rows if m is None], "note": a.note,
        "mean": statistics.fmean(scores) if scores else None,
        "std": statistics.stdev(scores) if len(scores) > 1 else None,
    }
    replays = [int(x) for x in a.replay_patience.split(",") if x.strip()]
    if replays and any(m["args"].get("patience") != 0 for _, _, m in done):
        sys.exit("readme_mrpc.py: --replay-patience needs runs made without early stopping (`-- --patience 0`)")
    result["replayed_patience"] = {}
    for p in replays:
        kept = [EarlyStopping.replay(m["epochs"], p) for _, _, m in done]
        best = [100 * k.best for k, _ in kept]
        result["replayed_patience"][str(p)] = {
            "runs": [{"seed": s, "best_dev_accuracy": b, "best_epoch": k.best_epoch + 1, "epochs_run": n}
                     for (s, _, _), b, (k, n) in zip(done, best, kept)],
            "mean": statistics.fmean(best), "std": statistics.stdev(best) if len(best) > 1 else None}
    stem = ROOT / "benchmarks" / "results" / ("readme_mrpc" + (f"_{a.name}" if a.name else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    full = sys.argv[1:]
    shown = shlex.join([x for i, x in enumerate(full) if x != "--note" and (i == 0 or full[i - 1] != "--note")])
    lines = [f"### The README's MRPC command{' with ' + shlex.join(extra) if extra else ''} over seeds", "",
             f"Written by `python benchmarks/readme_mrpc.py {shown}` ({cpu_model()}; {a.jobs} run(s) "
             f"at once, {threads} thread(s) each).", "",
             "| seed | best dev acc | best epoch | epochs run | dev acc per epoch | precision | wall s |",
             "|---:|---:|---:|---:|---|---|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['seed']} | {r['best_dev_accuracy']:.1f} | {r['best_epoch']} | {r['epochs_run']} | "
                     f"{' '.join(f'{x:.1f}' for x in r['dev_per_epoch'])} | {r['precision']} | "
                     f"{r['wall_time_s']:.0f} |")
    if scores:
        std = f" ± {result['std']:.1f}" if result["std"] is not None else ""
        lines += ["", f"Mean over {len(scores)} seed(s): **{result['mean']:.1f}{std}** dev accuracy."]
    if replays:
        lines += ["", "The same runs with early stopping replayed at each patience (best dev acc, its epoch / "
                  "epochs trained):", "",
                  "| patience | " + " | ".join(f"seed {s}" for s, _, _ in done) + " | mean ± std |",
                  "|---:|" + "---|" * len(done) + "---|"]
        for p, r in result["replayed_patience"].items():
            std = f" ± {r['std']:.1f}" if r["std"] is not None else ""
            lines.append(f"| {p} | " + " | ".join(f"{x['best_dev_accuracy']:.1f} ({x['best_epoch']}/{x['epochs_run']})"
                                                  for x in r["runs"]) + f" | {r['mean']:.1f}{std} |")
    if a.note:
        lines += ["", a.note]
    if result["failed_seeds"]:
        lines += ["", f"Failed seeds: {result['failed_seeds']}."]
    lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in result["runs"]]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
