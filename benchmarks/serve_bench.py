"""Serving benchmark: task-switch latency, mixed-task throughput, resident memory per task.

    .venv/bin/python benchmarks/serve_bench.py --model minilm
    .venv/bin/python benchmarks/serve_bench.py --model mpnet --iters 3 --batches 8

(1) switch latency of each strategy (``masked``: unpack bits; ``merge``: unpack + write
    W ⊙ M; ``cache``: a miss = merge into an LRU slot, a hit = re-point the layers);
(2) throughput of the multi-task model on a mixed-task stream (every request another
    task: the worst case for switching) against a plain transformers
    ``AutoModelForSequenceClassification`` of the same base serving one task on the same
    batches: model side only (the batches are tokenised and collated once, up front,
    identically for both), median over alternating repetitions of one run;
(3) RSS of a fresh process holding the base + N = 1, 2, 4, 8, 16 registered tasks
    against N finetuned fp32 copies (computed), and RSS growth per task vs mask-file size.

Mask files are random fixed masks (5 % pruned, as at the start of training) on the real
base, written in the real format: switch and memory costs do not depend on what the
bits are. Writes ``benchmarks/results/serve_<model>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))

from maskfit import MaskConfig, build_model, mask_model, save_masks  # noqa: E402
from maskfit.data import collate, encode, read_sst2  # noqa: E402
from maskfit.data.examples import SequenceExample  # noqa: E402
from maskfit.masking import target_names  # noqa: E402
from maskfit.memory import count_params, measure_resident  # noqa: E402
from maskfit.serve import MultiTaskModel  # noqa: E402
from maskfit.serve.multitask import DEFAULT_CACHE_BUDGET  # noqa: E402
from maskfit.tasktypes import task_type  # noqa: E402

MB = 1e6


def make_mask_files(model_name: str, n: int, out: Path, p: float = 0.05) -> list[Path]:
    """``n`` sequence-task mask files on ``model_name`` with different random masks and heads.

    The first is written by ``save_masks``; the others reuse its metadata (same base
    fingerprint) with new packed masks and heads, which skips re-hashing the base.
    """
    from maskfit.maskfile import read_maskfile, write_maskfile

    model = build_model(model_name, "sequence", ["0", "1"], seed=0)
    cfg = MaskConfig()
    g = torch.Generator().manual_seed(0)
    names = target_names(model, cfg)
    mask_model(model, cfg, masks={nm: torch.rand(model.get_submodule(nm).weight.shape, generator=g) >= p
                                  for nm in names})
    first = save_masks(model, out / "task00.masks")
    mf = read_maskfile(first)
    meta = {k: v for k, v in mf.meta.items() if k not in ("codecs", "checksum")}
    files = [first]
    for i in range(1, n):
        g = torch.Generator().manual_seed(i)
        masks = {name: torch.rand(shape, generator=g) >= p for name, shape in mf.shapes.items()}
        head = {name: torch.randn(t.shape, generator=g) * 0.02 for name, t in mf.head.items()}
        path = write_maskfile(out / f"task{i:02d}.masks", meta, masks, head)  # coded and checksummed like any mask file
        files.append(path)
    return files


def _ms(xs):
    xs = sorted(xs)
    return {"median_ms": 1e3 * statistics.median(xs), "p90_ms": 1e3 * xs[int(0.9 * (len(xs) - 1))],
            "n": len(xs)}


def _sync(device) -> None:
    """Wait for the GPU before reading the clock (kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def switch_latency(mt: MultiTaskModel, tasks: list[str], iters: int) -> dict:
    out = {}
    big = 1 << 40
    for label, strategy, budget in [("masked", "masked", None), ("merge", "merge", None),
                                    ("cache miss", "cache", 1), ("cache hit", "cache", big)]:
        mt.set_strategy(strategy, budget)
        for t in tasks:  # warm-up: allocate buffers, fill the cache
            mt.switch(t)
        times = []
        for _ in range(iters):
            for t in tasks:
                _sync(mt.device)
                t0 = time.perf_counter()
                mt.switch(t)
                _sync(mt.device)
                times.append(time.perf_counter() - t0)
        out[label] = _ms(times)
        print(f"  switch {label:10s}: median {out[label]['median_ms']:8.2f} ms  p90 {out[label]['p90_ms']:8.2f} ms")
    return out


def throughput(model_name: str, mt: MultiTaskModel, tasks: list[str], n_batches: int, batch_size: int,
               reps: int) -> dict:
    from transformers import AutoModelForSequenceClassification

    from maskfit.models import resolve_model

    examples = read_sst2(DATA / "sst2" / "dev.tsv")[: n_batches * batch_size]
    examples = [SequenceExample(ex.text) for ex in examples]
    feats = encode("sequence", examples, mt.tokenizer, ["0", "1"], 128)
    batches = [{k: v.to(mt.device) for k, v in collate(feats[i:i + batch_size], mt.tokenizer.pad_token_id).items()}
               for i in range(0, len(feats), batch_size)]
    n_inputs = len(examples)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    plain = AutoModelForSequenceClassification.from_pretrained(resolve_model(model_name), num_labels=2)
    plain = plain.to(mt.device).eval()
    stream = [tasks[i % len(tasks)] for i in range(len(batches))]  # every batch another task
    sequence = task_type("sequence")

    def plain_forward(b):
        with torch.no_grad():
            sequence.logits(plain, b)

    configs = [("masked", "masked", None, stream), ("merge", "merge", None, stream),
               ("cache (default budget)", "cache", DEFAULT_CACHE_BUDGET, stream),
               ("cache (all tasks fit)", "cache", 1 << 40, stream),
               ("cache (budget < 1 task: always a miss)", "cache", 1, stream),
               ("merge, one task (no switches)", "merge", None, [tasks[0]] * len(batches))]
    results = {"n_inputs": n_inputs, "batch_size": batch_size, "tokens": tokens, "tasks_in_stream": len(tasks),
               "reps": reps, "strategies": {}}
    for b in batches[:2]:
        plain_forward(b)  # warm-up
    for label, strategy, budget, order in configs:
        mt.set_strategy(strategy, budget)
        for t, b in zip(order, batches):  # warm-up (fills the cache where it fits)
            mt.logits(t, b)
        plain_t, multi_t = [], []
        for _ in range(reps):
            p = m = 0.0
            for t, b in zip(order, batches):  # interleave per batch: both see the same machine load
                _sync(mt.device)
                t0 = time.perf_counter()
                plain_forward(b)
                _sync(mt.device)
                t1 = time.perf_counter()
                mt.logits(t, b)
                _sync(mt.device)
                t2 = time.perf_counter()
                p, m = p + (t1 - t0), m + (t2 - t1)
            plain_t.append(p)
            multi_t.append(m)
        ratios = [a / b for a, b in zip(plain_t, multi_t)]
        p, m = statistics.median(plain_t), statistics.median(multi_t)
        results["strategies"][label] = {
            "plain_inputs_per_s": n_inputs / p, "multi_inputs_per_s": n_inputs / m,
            "ratio": statistics.median(ratios), "ratios": ratios, "plain_s": plain_t, "multi_s": multi_t,
            "cache": dict(mt.stats),
        }
        print(f"  throughput {label:40s}: plain {n_inputs / p:7.1f}/s  multi-task {n_inputs / m:7.1f}/s  "
              f"ratio {statistics.median(ratios):.3f}  {[round(r, 3) for r in ratios]}")
    return results


def memory(model_name: str, files: list[Path], ns=(1, 2, 4, 8, 16)) -> dict:
    c = count_params(model_name)
    rows = measure_resident(model_name, files[: max(ns)], fresh_process=True)
    by_n = {r["n_tasks"]: r for r in rows}
    file_bytes = statistics.mean(f.stat().st_size for f in files)
    per_copy = 4 * (c["pretrained_params"] + c["head_params"])
    table = []
    for n in ns:
        if n not in by_n:
            continue
        table.append({"n_tasks": n, "rss_bytes": by_n[n]["rss_bytes"], "rss_over_base_bytes": by_n[n]["rss_bytes"] - by_n[0]["rss_bytes"],
                      "finetune_bytes": n * per_copy, "mask_files_bytes": n * file_bytes})
    top = max(n for n in ns if n in by_n)
    per_task = (by_n[top]["rss_bytes"] - by_n[1]["rss_bytes"]) / (top - 1)
    print(f"  RSS: base {by_n[0]['rss_bytes'] / MB:.1f} MB, +{per_task / MB:.3f} MB per added task; "
          f"mask file {file_bytes / MB:.3f} MB → {per_task / file_bytes:.2f}×")
    for r in table:
        print(f"    N={r['n_tasks']:2d}: RSS {r['rss_bytes'] / MB:8.1f} MB (+{r['rss_over_base_bytes'] / MB:6.2f})   "
              f"N finetuned copies {r['finetune_bytes'] / MB:9.1f} MB")
    return {"rows": table, "all": rows, "base_rss_bytes": by_n[0]["rss_bytes"], "per_task_bytes": per_task,
            "mask_file_bytes": file_bytes, "per_task_over_file": per_task / file_bytes,
            "finetune_copy_bytes": per_copy, "counts": c}


def to_markdown(res: dict) -> str:
    m = res["model"]
    lines = [f"# Serving benchmark: {m}", "",
             f"{res['when']} · {res['platform']} · torch {res['torch']} · {res.get('device', 'cpu')} · "
             f"{res['threads']} threads · "
             f"command: `{res['command']}`", "",
             f"## Task switch latency ({res['n_tasks_switch']} tasks in rotation)", "",
             "| strategy | median ms | p90 ms |", "|---|---:|---:|"]
    for k, v in res["switch"].items():
        lines.append(f"| {k} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} |")
    t = res["throughput"]
    lines += ["", f"## Throughput, mixed-task stream ({t['n_inputs']} SST-2 dev inputs, batches of "
                  f"{t['batch_size']}, every batch another of {t['tasks_in_stream']} tasks unless noted; plain and "
                  f"multi-task forwards interleaved batch by batch; ratio = median over {t['reps']} passes)", "",
              "| strategy | plain model inputs/s | multi-task inputs/s | ratio |", "|---|---:|---:|---:|"]
    for k, v in t["strategies"].items():
        lines.append(f"| {k} | {v['plain_inputs_per_s']:.1f} | {v['multi_inputs_per_s']:.1f} | {v['ratio']:.3f} |")
    mem = res["memory"]
    lines += ["", "## Resident memory (fresh process; no request run, so no merged weights)", "",
              "| tasks N | RSS MB | over base MB | N mask files MB | N finetuned copies MB |", "|---:|---:|---:|---:|---:|"]
    for r in mem["rows"]:
        lines.append(f"| {r['n_tasks']} | {r['rss_bytes'] / MB:.1f} | {r['rss_over_base_bytes'] / MB:.2f} | "
                     f"{r['mask_files_bytes'] / MB:.2f} | {r['finetune_bytes'] / MB:.1f} |")
    lines += ["", f"Base process RSS {mem['base_rss_bytes'] / MB:.1f} MB; each added task "
                  f"+{mem['per_task_bytes'] / MB:.3f} MB for a {mem['mask_file_bytes'] / MB:.3f} MB mask file "
                  f"= **{mem['per_task_over_file']:.2f}×** (goal ≤ 1.2×). A cached task (strategy cache) "
                  f"adds {res['merged_bytes_per_task'] / MB:.1f} MB of merged fp32 weights, bounded by the budget.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", type=int, default=4, help="tasks in the switch / throughput rotation")
    ap.add_argument("--iters", type=int, default=5, help="switch rounds over the tasks")
    ap.add_argument("--batches", type=int, default=12, help="batches in the throughput stream")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions for the throughput ratio")
    ap.add_argument("--memory-tasks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine a 2-thread OpenMP region "
                         "stalls whenever another process holds a core, e.g. 1.4 s instead of 50 ms per MiniLM "
                         "batch; 0 keeps torch's default)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--device", default="cpu", help="where the served model lives (cpu, cuda, ...)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    res = {"model": args.model, "when": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
           "command": "python benchmarks/serve_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="maskfit-bench-") as tmp:
        n_files = max(args.tasks, 0 if args.skip_memory else args.memory_tasks)
        print(f"[{args.model}] writing {n_files} mask files ...")
        files = make_mask_files(args.model, n_files, Path(tmp))
        mt = MultiTaskModel(args.model, device=args.device)
        names = []
        for i, f in enumerate(files[: args.tasks]):
            mt.register(f"t{i}", f)
            names.append(f"t{i}")
        res["n_tasks_switch"] = len(names)
        res["merged_bytes_per_task"] = mt._tasks[names[0]].merged_bytes
        print(f"[{args.model}] switch latency")
        res["switch"] = switch_latency(mt, names, args.iters)
        print(f"[{args.model}] throughput")
        res["throughput"] = throughput(args.model, mt, names, args.batches, args.batch_size, args.reps)
        on_cpu = mt.device.type == "cpu"
        del mt
        if not args.skip_memory and on_cpu:  # RSS says nothing about GPU memory
            print(f"[{args.model}] memory")
            res["memory"] = memory(args.model, files[: args.memory_tasks])
    res["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"serve_{args.model}.json").write_text(json.dumps(res, indent=2))
    if "memory" in res:
        (args.out / f"serve_{args.model}.md").write_text(to_markdown(res))
    print(f"wrote {args.out / f'serve_{args.model}.json'} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
