"""Task-switch latency of two checkouts of maskfit, alternating, on the same mask files.

    git worktree add /tmp/old <commit> && python benchmarks/switch_ab.py --baseline /tmp/old --rounds 5

Each round runs this checkout and the baseline in fresh processes, one after the other,
with 4 MiniLM tasks (random fixed masks written by ``serve_bench.make_mask_files``) and
25 switches per task and strategy, timed in CPU time of the process (``process_time``:
single-threaded work, unaffected by other processes holding the cores). Prints the median
over rounds of each round's median, in ms.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import time
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import sys, time, statistics, torch
from pathlib import Path
torch.set_num_threads(1)
from maskfit.serve import MultiTaskModel
mt = MultiTaskModel("minilm")
names = []
for i, f in enumerate(sorted(Path(sys.argv[1]).glob("*.masks"))[:4]):
    mt.register(f"t{i}", f)
    names.append(f"t{i}")
out = {}
for label, strategy, budget in [("masked", "masked", None), ("merge", "merge", None), ("cache miss", "cache", 1),
                                ("cache hit", "cache", 1 << 40)]:
    mt.set_strategy(strategy, budget)
    for t in names:
        mt.switch(t)
    times = []
    for _ in range(25):
        for t in names:
            t0 = time.process_time()
            mt.switch(t)
            times.append(time.process_time() - t0)
    out[label] = 1e3 * statistics.median(times)
print(out)
'''


def run(src: Path, files: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(files)], env=env, capture_output=True, text=True,
                          timeout=900, check=True)
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, type=Path, help="checkout (or worktree) of the code to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "switch_ab.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "src"))
    from serve_bench import make_mask_files

    with tempfile.TemporaryDirectory() as tmp:
        make_mask_files("minilm", 4, Path(tmp))
        rounds = {"this": [], "baseline": []}
        for _ in range(a.rounds):
            rounds["baseline"].append(run(a.baseline / "src", Path(tmp)))
            rounds["this"].append(run(ROOT / "src", Path(tmp)))
    result = {"command": f"python benchmarks/switch_ab.py --baseline {a.baseline} --rounds {a.rounds}",
              "when": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(), "rounds": rounds,
              "median_ms": {}}
    for who, rs in rounds.items():
        result["median_ms"][who] = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        print(f"{who:9s} {result['median_ms'][who]}")
    a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
