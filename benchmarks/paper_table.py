"""Masking vs finetuning on the paper's tasks, with the real models: writes RESULTS.md.

Every row is one ``maskfit train`` command (printed in the table) run as a subprocess,
so anyone can rerun a single row. Runs already complete in ``--runs`` are reused, so an
interrupted benchmark resumes where it stopped.

    python benchmarks/paper_table.py --profile quick      # subsampled, fits a 2-core CPU in ~1-2 h
    python benchmarks/paper_table.py --profile full       # full train sets, 10 epochs (days on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MINILM_TASKS = ["mrpc", "rte", "cola", "sst2", "agnews", "ner", "pos", "arc-easy"]
MPNET_TASKS = ["mrpc", "rte", "cola"]

# Learning rates fixed a priori from the paper's ranges (mask 1e-3 … 1e-4, finetune
# 1e-5 … 5e-5): short runs take the top of each range. Nothing is tuned on test data.
PROFILES = {
    "quick": {"minilm": {"limit_train": 2000, "epochs": 3}, "mpnet": {"limit_train": 500, "epochs": 2},
              "lr": {"mask": 1e-3, "finetune": 5e-5}, "patience": 0},
    "full": {"minilm": {"limit_train": None, "epochs": 10}, "mpnet": {"limit_train": None, "epochs": 10},
             "lr": {"mask": 1e-4, "finetune": 2e-5}, "patience": 2},
}


def command(model: str, task: str, method: str, out: Path, prof: dict, extra: list[str]) -> list[str]:
    p = prof[model]
    cmd = ["maskfit", "train", "--task", task, "--model", model, "--method", method, "--out", str(out),
           "--epochs", str(p["epochs"]), "--patience", str(prof["patience"]), "--lr", str(prof["lr"][method]),
           "--quiet"]
    if p["limit_train"]:
        cmd += ["--limit-train", str(p["limit_train"])]
    return cmd + extra


def run_row(cmd: list[str], out: Path) -> dict | None:
    metrics = out / "metrics.json"
    if not metrics.exists():
        print("$", shlex.join(cmd), flush=True)
        exe = [sys.executable, "-m", "maskfit.cli"] + cmd[1:]
        t0 = time.time()
        rc = subprocess.call(exe, cwd=ROOT)
        print(f"  rc={rc} in {time.time() - t0:.0f} s", flush=True)
        if rc != 0 or not metrics.exists():
            return None
    return json.loads(metrics.read_text())


def fmt(score: float | None, metric: str) -> str:
    if score is None:
        return "–"
    return f"{100 * score:.1f}"


def write_results(rows: list[dict], profile: str, path: Path) -> None:
    lines = [
        "# Masking vs finetuning: measured results",
        "",
        f"Written by `python benchmarks/paper_table.py --profile {profile}` "
        f"(machine: {os.cpu_count()} CPU cores, fp32; see the per-row commands). Scores are ×100 on the dev split "
        "(AG News: a held-out 10% of its train sample is the dev split for model selection, and the test score of "
        "the kept epoch is reported next to it). `train n` is the number of training examples used.",
        "",
        "| model | task | metric | mask | finetune | Δ (mask − ft) | train n | epochs | mask: wall s / train ex/s | "
        "finetune: wall s / train ex/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, f = r.get("mask"), r.get("finetune")
        ms = m["best_score"] if m else None
        fs = f["best_score"] if f else None
        delta = f"{100 * (ms - fs):+.1f}" if ms is not None and fs is not None else "–"
        test = ""
        if m and "test_score" in m and f and "test_score" in f:
            test = f" (test: {100 * m['test_score']:.1f} vs {100 * f['test_score']:.1f})"
        timing = lambda x: f"{x['wall_time_s']:.0f} / {x['train_examples_per_s']:.1f}" if x else "–"
        n = (m or f or {}).get("n_train", "–")
        ep = len((m or f or {}).get("epochs", [])) or "–"
        lines.append(f"| {r['model']} | {r['task']} | {(m or f or {}).get('metric', '')} | {fmt(ms, '')} | "
                     f"{fmt(fs, '')} | {delta}{test} | {n} | {ep} | {timing(m)} | {timing(f)} |")
    lines += ["", "Commands (one per row and method):", ""]
    for r in rows:
        for method in ("mask", "finetune"):
            lines.append(f"    {shlex.join(r['commands'][method])}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--models", nargs="+", default=["minilm", "mpnet"])
    ap.add_argument("--tasks", nargs="+", help="restrict to these tasks")
    ap.add_argument("--runs", default="runs/paper_table", help="where run directories go")
    ap.add_argument("--results", default="benchmarks/results/paper_table.md")
    ap.add_argument("--extra", default="", help="extra flags for every maskfit train call")
    a = ap.parse_args()
    os.chdir(ROOT)
    prof = PROFILES[a.profile]
    rows = []
    for model in a.models:
        for task in MINILM_TASKS if model == "minilm" else MPNET_TASKS:
            if a.tasks and task not in a.tasks:
                continue
            row = {"model": model, "task": task, "commands": {}}
            for method in ("mask", "finetune"):
                out = Path(a.runs) / a.profile / model / task / method
                cmd = command(model, task, method, out, prof, shlex.split(a.extra))
                row["commands"][method] = cmd
                row[method] = run_row(cmd, out)
            rows.append(row)
            Path(a.results).parent.mkdir(parents=True, exist_ok=True)
            write_results(rows, a.profile, Path(a.results))
    print(Path(a.results).read_text())


if __name__ == "__main__":
    main()
