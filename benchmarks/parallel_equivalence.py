"""Data parallelism and gradient accumulation change only the speed: measured.

    python benchmarks/parallel_equivalence.py --task mrpc --limit-train 160 --epochs 3

Trains the same MiniLM masks three ways on the same examples, the CPU with gloo, dropout
off (each process draws its own dropout masks, as in any data-parallel run): one process
× batch 32, two processes × batch 16 (``torchrun``) and one process × batch 16 × 2
accumulation micro-steps. Reports the mask bits that differ from the first run, the
per-epoch train losses and dev scores, and wall times. Writes
``benchmarks/results/parallel_equivalence.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, common: list[str], extra: list[str], nproc: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    t0 = time.perf_counter()
    subprocess.run([*launcher, "-m", "maskfit", "train", *common, *extra, "--out", str(out)], env=env, check=True,
                   capture_output=True, text=True)
    m = json.loads((out / "metrics.json").read_text())
    return {"wall_s": time.perf_counter() - t0, "losses": [r["train_loss"] for r in m["epochs"]],
            "dev": [r["dev_score"] for r in m["epochs"]], "n_dev": m["n_dev"], "engine": m["engine"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--limit-train", type=int, default=160)
    ap.add_argument("--limit-eval", type=int, default=45)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "parallel_equivalence.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from maskfit.maskfile import read_maskfile

    common = ["--task", a.task, "--max-length", "64", "--lr", "2e-3", "--dropout", "0", "--precision", "fp32",
              "--device", "cpu", "--quiet", "--limit-eval", str(a.limit_eval), "--limit-train", str(a.limit_train),
              "--epochs", str(a.epochs), "--patience", "0"]
    runs = {"1 process × 32": (["--batch-size", "32"], 1), "2 processes × 16": (["--batch-size", "16"], 2),
            "1 process × 16 × 2 micro-steps": (["--batch-size", "16", "--grad-accum", "2"], 1)}
    result = {"command": f"python benchmarks/parallel_equivalence.py --task {a.task} --limit-train {a.limit_train} "
                         f"--epochs {a.epochs}", "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for name, (extra, nproc) in runs.items():
            out = Path(tmp) / name.replace(" ", "_")
            r = train(out, common, extra, nproc)
            masks = read_maskfile(out / "task.masks").masks
            if ref is None:
                ref = masks
            r["bits_differ"] = sum(int((masks[k] != ref[k]).sum()) for k in ref)
            r["bits_total"] = sum(m.numel() for m in ref.values())
            result["runs"][name] = r
            print(f"{name:32s} bits differ {r['bits_differ']:>7,} of {r['bits_total']:,}  losses "
                  f"{[round(x, 5) for x in r['losses']]}  dev {[round(x, 4) for x in r['dev']]}  {r['wall_s']:.0f} s")
    a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
