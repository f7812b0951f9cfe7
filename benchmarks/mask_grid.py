"""Dev-split grids for one task: what was tried where masking falls short of finetuning.

Each grid point is one ``maskfit train`` command (printed in the table), run as a
subprocess; runs already complete under ``--runs`` are reused, so a grid can be
extended or resumed by rerunning it. Only dev scores are used to compare points;
test splits are never looked at here.

    python benchmarks/mask_grid.py --name mrpc-lr --task mrpc --method mask \\
        --vary lr=1e-3,3e-4 --vary init-sparsity=0.05,0.2 -- --epochs 4 --patience 0

Every ``--vary FLAG=V1,V2,...`` is a ``maskfit train`` flag; the grid is their product.
Flags after ``--`` are passed to every run. Results go to
``benchmarks/results/grid_<name>.md`` (RESULTS.md includes them).
"""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_table import ROOT, run_row  # noqa: E402


def parse_vary(items: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for item in items:
        flag, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"mask_grid: --vary wants FLAG=V1,V2,... (got '{item}')")
        out.append((flag.lstrip("-"), values.split(",")))
    return out


def point_dir(base: Path, point: dict[str, str]) -> Path:
    return base / ("_".join(f"{k}-{v}" for k, v in point.items()) or "default")


def main() -> None:
    argv = sys.argv[1:]
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="grid name (results file and run folder)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--method", choices=["mask", "finetune"], required=True)
    ap.add_argument("--vary", action="append", default=[], metavar="FLAG=V1,V2")
    ap.add_argument("--runs", default="runs/grid")
    ap.add_argument("--note", default="", help="one line written under the table")
    a = ap.parse_args(argv)
    os.chdir(ROOT)
    vary = parse_vary(a.vary)
    base = Path(a.runs) / a.name
    rows = []
    for values in itertools.product(*[v for _, v in vary]):
        point = {flag: v for (flag, _), v in zip(vary, values)}
        out = point_dir(base, point)
        cmd = ["maskfit", "train", "--task", a.task, "--model", a.model, "--method", a.method,
               "--out", str(out), "--quiet"]
        for flag, v in point.items():
            cmd += [f"--{flag}", v]
        cmd += passthrough
        rows.append((point, cmd, run_row(cmd, out)))

    full = sys.argv[1:]
    shown = [x for i, x in enumerate(full) if x != "--note" and (i == 0 or full[i - 1] != "--note")]
    lines = [f"### Grid `{a.name}`: {a.method}, {a.model}, {a.task} (dev)", "",
             f"Written by `python benchmarks/mask_grid.py {shlex.join(shown)}`.", ""]
    if a.note:
        lines += [a.note, ""]
    head = [flag for flag, _ in vary]
    lines += ["| " + " | ".join(head + ["best dev", "best epoch", "dev per epoch", "wall s"]) + " |",
              "|" + "---|" * (len(head) + 4)]
    for point, _, m in rows:
        if m is None:
            cells = ["failed", "", "", ""]
        else:
            per_epoch = " ".join(f"{100 * e['dev_score']:.1f}" for e in m["epochs"])
            cells = [f"{100 * m['best_score']:.1f}", str(m["best_epoch"]), per_epoch, f"{m['wall_time_s']:.0f}"]
        lines.append("| " + " | ".join([point[h] for h in head] + cells) + " |")
    lines += ["", "Commands:", ""] + [f"    {shlex.join(cmd)}" for _, cmd, _ in rows]
    path = ROOT / "benchmarks" / "results" / f"grid_{a.name}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
