"""Fidelity rows (benchmarks/results/fidelity.json) from finished seed runs, when the full
paper protocol (``paper_table.py --profile fidelity``) is out of reach.

    python benchmarks/fidelity_seeds.py --task mrpc --model minilm \
        --runs benchmarks/results/readme_mrpc_lr1e-4.json benchmarks/results/readme_mrpc_lr3e-4-before.json \
        --runs runs/mrpc-ft-seeds/sweep.json

Each source is a ``readme_mrpc.py`` result (mask seeds of the README command at one lr) or a
``maskfit sweep`` folder's ``sweep.json`` (any trials). A run whose folder was lost before its
sweep finished (a machine that did not survive a session) can be given by its ``train.log`` and
seed, ``--train-log benchmarks/results/fidelity_minilm_pos_lora_s0_train.log 0``: the log's own
lines (task, method, lr, train size, dev score per epoch, test score) make the trial.

Trials are grouped by method and lr; per method the lr is chosen as the paper protocol does,
by the dev score at the first seed (on a tie, as ``maskfit sweep`` does: an lr inside the grid
before one on its border, then the lowest), and the row holds every seed at that lr. ``lr_grid`` is
what was searched, so a row whose grid has one value says that its lr was not tuned. Rows of
the same (model, task, method) in fidelity.json are replaced in place; others are kept.

A method's trials must share their epochs, patience and precision wherever their sources record
them (sweeps record the precision the machine resolved; older sweeps record only a --precision
other than auto, and a source without --patience is not checked on it).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def flag(flags: list[str], name: str) -> str | None:
    return flags[flags.index(name) + 1] if name in flags[:-1] else None


def trials_of(path: Path, task: str) -> list[dict]:
    """(method, lr, seed, dev score ×100, epochs budget, train size, wall s) of every finished run in a source.

    A row compares methods at their defaults, so a source for another task, or a trial that
    varies any flag but method, lr and seed (a --blocks or --pooling probe), is refused."""
    data = json.loads(path.read_text())
    out = []
    if "trials" in data:  # a maskfit sweep
        if flag(data["train_flags"], "--task") not in (None, task):
            sys.exit(f"fidelity_seeds: {path} is a sweep of task {flag(data['train_flags'], '--task')}, not {task}")
        sample = train_sample(data["train_flags"])
        patience, asked = flag(data["train_flags"], "--patience"), flag(data["train_flags"], "--precision")
        for t in data["trials"]:
            if t.get("status") == "error" or t.get("best") is None:
                continue
            varied = sorted(set(t.get("flags", {})) - {"method", "lr", "seed"})
            if varied:
                sys.exit(f"fidelity_seeds: {path}: trial {t['key']} sets --{varied[0]} {t['flags'][varied[0]]}; "
                         "a fidelity row holds only method, lr and seed trials")
            out.append({"method": t["method"], "lr": float(t["lr"]), "seed": int(t["seed"]),
                        "score": 100 * t["best"], "epochs": t.get("epochs"), "train_n": t.get("n_train"),
                        "wall_s": t.get("wall_time_s"), "metric": t.get("metric"), "finished": t.get("status"),
                        "test": None if t.get("test_score") is None else 100 * t["test_score"], "sample": sample,
                        # what the machine resolved, else what was asked for when not auto; None: not recorded
                        "patience": patience, "precision": t.get("precision") or (asked if asked != "auto" else None)})
    else:  # benchmarks/readme_mrpc.py
        flags = data.get("extra_flags") or []
        if task != "mrpc":
            sys.exit(f"fidelity_seeds: {path} holds README MRPC runs, not {task}")
        method = flag(flags, "--method") or "mask"
        for r in data["runs"]:
            out.append({"method": method, "lr": float(r["lr"]), "seed": int(r["seed"]),
                        "score": r["best_dev_accuracy"], "epochs": 10, "train_n": 3668,
                        "wall_s": r.get("wall_time_s"), "metric": "accuracy", "sample": None,
                        "patience": flag(flags, "--patience"), "precision": r.get("precision")})
    return out


LOG_HEAD = re.compile(r" INFO task (\S+) \(\w+, (\d+) train, .*\) model \S+ method (\S+) lr (\S+) on \S+, (\w+),")
LOG_EPOCH = re.compile(r" INFO epoch (\d+): loss \S+ dev (\S+) (\S+) ")
LOG_TEST = re.compile(r" INFO test (\S+) (\S+) \(best epoch")


def trial_of_log(path: Path, seed: int, task: str) -> dict:
    """The trial a finished ``maskfit train`` log records. Wall time is the sum of its segments
    (a resumed run's log holds one segment per start), not the time between its first and last line."""
    stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    if not path.is_file():
        sys.exit(f"fidelity_seeds: no train log at {path}")
    head, dev, test, wall, start, last = None, {}, None, 0.0, None, None
    for line in path.read_text().splitlines():
        # a resume writes "resuming ..." before its head line: either one ends the previous segment
        if (m := LOG_HEAD.search(line)) or " INFO resuming " in line:
            if start and last:
                wall += (last - start).total_seconds()
            head, start = m or head, stamp(line)
        elif m := LOG_EPOCH.search(line):
            dev[int(m[1])] = (m[2], float(m[3]))
        elif m := LOG_TEST.search(line):
            test = float(m[2])
        if line[:4].isdigit():
            last = stamp(line)
    if head is None or not dev:
        sys.exit(f"fidelity_seeds: {path} is not a maskfit train log with at least one epoch")
    if head[1] != task:
        sys.exit(f"fidelity_seeds: {path} is a log of task {head[1]}, not {task}")
    wall += (last - start).total_seconds()
    metric, best = max(dev.values(), key=lambda v: v[1])
    return {"method": head[3], "lr": float(head[4]), "seed": seed, "score": 100 * best, "epochs": None,
            "train_n": int(head[2]), "wall_s": round(wall), "metric": metric,
            "test": None if test is None else 100 * test, "sample": None, "from_log": True,
            "patience": None, "precision": head[5]}


def train_sample(train_flags: list[str]) -> str | None:
    """How a sweep's trials subsample the train split (--limit-train), in words; None for the full split."""
    n = flag(train_flags, "--limit-train")
    if n is None:
        return None
    seed = flag(train_flags, "--limit-train-seed")
    return f"seeded sample of {n} ({'the same subset for every seed, subset seed ' + seed if seed else 'drawn per seed'})"


def rows(model: str, task: str, trials: list[dict], sources: list[str]) -> list[dict]:
    from maskfit.sweep import choose_lr

    out = []
    for method in dict.fromkeys(t["method"] for t in trials):
        mine = [t for t in trials if t["method"] == method]
        grid = sorted({t["lr"] for t in mine})
        first = min(t["seed"] for t in mine)
        at_first = {t["lr"]: t["score"] for t in mine if t["seed"] == first}
        lr = choose_lr(at_first)  # the sweep's rule, ties included: inside the grid first, then the lowest
        chosen = sorted((t for t in mine if t["lr"] == lr), key=lambda t: t["seed"])
        exact = [t["score"] for t in chosen]
        out.append({"model": model, "task": task, "metric": chosen[0]["metric"], "method": method, "lr": lr,
                    "lr_grid": grid, "seeds": [t["seed"] for t in chosen], "scores": [round(x, 2) for x in exact],
                    "mean": round(statistics.mean(exact), 2),
                    "std": round(statistics.stdev(exact), 2) if len(exact) > 1 else 0.0,
                    "train_n": chosen[0]["train_n"], "epochs": next((t["epochs"] for t in chosen if t["epochs"]), None),
                    **({"train_sample": chosen[0]["sample"]} if chosen[0]["sample"] else {}),
                    "lr_scores_first_seed": {f"{k:g}": round(v, 2) for k, v in sorted(at_first.items())},
                    "wall_s_per_run": round(statistics.mean(t["wall_s"] for t in chosen if t["wall_s"])),
                    "sources": sources})
        tests = [t["test"] for t in chosen if t.get("test") is not None]
        if len(tests) == len(chosen):  # only where the task has a labelled test split
            out[-1]["test_mean"] = round(statistics.mean(tests), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--runs", nargs="+", action="extend", default=[], type=Path)
    ap.add_argument("--train-log", nargs=2, action="append", default=[], metavar=("LOG", "SEED"),
                    help="a finished maskfit train log and the seed it ran with")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "fidelity.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from maskfit.run import atomic_write_json

    for log, seed in a.train_log:
        if not seed.isdigit():
            sys.exit(f"fidelity_seeds: --train-log {log} {seed}: the seed must be a whole number")
    sources = [(p, trials_of(p, a.task)) for p in a.runs]
    sources += [(log, [trial_of_log(Path(log), int(seed), a.task)]) for log, seed in a.train_log]
    trials, seen = [], {}
    for src, found in sources:
        for t in found:
            key = (t["method"], t["lr"], t["seed"])
            if key in seen:  # the same trial twice would weigh one seed double
                sys.exit(f"fidelity_seeds: {key[0]} lr {key[1]:g} seed {key[2]} is in both {seen[key]} and {src}")
            seen[key] = src
            trials.append(t)
    if not trials:
        sys.exit("fidelity_seeds: no runs given (--runs or --train-log)")
    # A log says how many examples it trained on but not whether they were a sample: it must
    # match the sweeps' train size, and it takes their sample description.
    swept = [t for t in trials if not t.get("from_log")]
    for t in trials:
        if t.get("from_log") and swept and t["train_n"] != swept[0]["train_n"]:
            sys.exit(f"fidelity_seeds: {seen[(t['method'], t['lr'], t['seed'])]} trained on {t['train_n']} examples, "
                     f"the sweeps on {swept[0]['train_n']}; a row uses one train set")
        if t.get("from_log") and swept:
            t["sample"] = swept[0]["sample"]
    samples = {t["sample"] for t in trials}
    if len(samples) > 1:  # scores on different train sets are not seeds of one row
        a_, b_ = sorted(samples, key=str)[:2]
        sys.exit(f"fidelity_seeds: the sources train on different train sets ({a_ or 'the full split'} and "
                 f"{b_ or 'the full split'}); a row uses one")
    # a method's trials are compared with each other (the lr at the first seed, then its seeds), so
    # they must share the schedule and precision; a source that did not record one is not checked on it
    for method in dict.fromkeys(t["method"] for t in trials):
        for setting in ("epochs", "patience", "precision"):
            found = {}
            for t in trials:
                if t["method"] == method and t.get(setting) is not None:
                    found.setdefault(str(t[setting]), seen[(t["method"], t["lr"], t["seed"])])
            if len(found) > 1:
                (x, src_x), (y, src_y) = list(found.items())[:2]
                sys.exit(f"fidelity_seeds: {method} trials differ in {setting} ({x} in {src_x}, {y} in {src_y}); "
                         "a row compares runs of one schedule and precision")
    new = rows(a.model, a.task, trials, [str(p) for p in a.runs])
    for r in new:  # logs as given, so RESULTS.md can print the command that rebuilds the row
        logs = [[log, int(seed)] for log, seed in a.train_log]
        if logs:
            r["train_logs"] = logs
    old = json.loads(a.results.read_text()) if a.results.is_file() else []
    fresh = {(r["model"], r["task"], r["method"]): r for r in new}
    # a rebuilt row keeps its place, so RESULTS.md's tables keep their order; a new one goes last
    merged = [fresh.pop((r["model"], r["task"], r["method"]), r) for r in old] + list(fresh.values())
    atomic_write_json(a.results, merged)
    for r in new:
        print(f"{r['model']} {r['task']} {r['method']:9s} lr {r['lr']:g} (grid {', '.join(f'{x:g}' for x in r['lr_grid'])}): "
              f"{r['mean']:.2f} ± {r['std']:.2f} over seeds {r['seeds']} {r['scores']}")


if __name__ == "__main__":
    main()
