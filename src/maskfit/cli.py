"""``maskfit train | sweep | eval | predict | serve | ensemble | memory | analyze``.

Errors a user can cause (bad file, unknown task, wrong base for a mask file) are
printed as one line, ``maskfit: error: ...``, with exit status 2; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from .errors import ConfigError, MaskfitError

TASK_HELP = ("built-in task (sst2, cola, mrpc, rte, qnli, agnews, imdb, ner, pos, arc-easy, arc-challenge, swag), "
             "your own file as csv:PATH / tsv:PATH / jsonl:PATH, or a hub dataset like glue/sst2")


def _at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def nonnegative_number(text: str) -> float:
    """argparse type: a finite number >= 0 (MiB budgets, GPU fractions)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = _at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value}")
    return value


POSITIVE = _at_least(1)
ENCODING_HELP = "text encoding of the data files (default utf-8; e.g. latin-1, cp1252, utf-16)"


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=POSITIVE, help="torch intra-op CPU threads (default: torch's choice; on a shared "
                   "machine 1 thread per process avoids OpenMP stalls)")


def _add_task_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", required=True, help=TASK_HELP)
    g.add_argument("--data-dir", help="folder with the built-in tasks' data (default: ../shared/data)")
    g.add_argument("--dev", help="dev file for a csv:/tsv:/jsonl: task")
    g.add_argument("--test", help="test file for a csv:/tsv:/jsonl: task")
    g.add_argument("--text-column", help="text column of your own file")
    g.add_argument("--text-pair-column", help="second text column (sentence-pair tasks)")
    g.add_argument("--label-column", help="label column of your own file")
    g.add_argument("--encoding", help=ENCODING_HELP)


def _task_info(a) -> dict:
    info = {"name": a.task}
    for k in ("data_dir", "dev", "test", "text_column", "text_pair_column", "label_column", "encoding"):
        v = getattr(a, k, None)
        if v is not None:
            info[k] = str(Path(v).resolve()) if k in ("data_dir", "dev", "test") else v
    if ":" in a.task and a.task.split(":", 1)[0] in ("csv", "tsv", "jsonl"):
        fmt, path = a.task.split(":", 1)
        info["name"] = f"{fmt}:{Path(path).resolve()}"
    return info


def _get_task(info: dict):
    from .tasks import get_task

    info = dict(info)
    return get_task(info.pop("name"), **info)


def add_device_flags(p: argparse.ArgumentParser, precision: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    if precision:
        p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default=None,
                       help="autocast precision (default: the run's, where this device has it; else auto)")
    _add_threads(p)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="maskfit", description="Adapt frozen pretrained encoders by learning "
                                     "1-bit masks over their weights (Zhao et al., EMNLP 2020).")
    parser.add_argument("--version", action="version", version=f"maskfit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # train
    p = sub.add_parser("train", help="train masks (or finetune) on a task, keep the best dev epoch",
                       description="Train on a task's train split, evaluate on dev after every epoch, keep the best "
                       "epoch, stop early, and resume an interrupted run when the same command is run again. Runs on "
                       "one device, or on several processes under torchrun / accelerate launch.")
    add_train_flags(p)
    p.set_defaults(func=cmd_train)

    # sweep
    from .sweep import add_sweep_flags

    p = sub.add_parser("sweep", help="hyperparameter search over maskfit train flags, trials in parallel on Ray Tune",
                       description="Run many maskfit train trials in parallel on Ray Tune (an embedded local Ray, "
                       "or a cluster with --address): a grid (--grid FLAG=V1,V2, their product) or the paper's "
                       "protocol (--protocol paper: a learning-rate grid per method, extended while the best lr "
                       "is on its border, then --seeds seeds at the chosen lr). Any other maskfit train flag "
                       "(--task, --model, --epochs, --threads, ...) is passed to every trial, before or after "
                       "'--'. Each trial is a normal run directory, OUT/METHOD/NAME; a rerun reuses finished "
                       "trials and resumes interrupted ones. Writes OUT/sweep.json and OUT/sweep.md. Only dev "
                       "scores choose anything. Needs Ray: pip install 'maskfit[sweep]'.",
                       allow_abbrev=False)  # --seed (a train flag) must not be read as --seeds
    add_sweep_flags(p)
    p.set_defaults(func=cmd_sweep)

    # eval
    p = sub.add_parser("eval", help="score a run's best model on a split")
    p.add_argument("--run", required=True, help="run directory written by maskfit train")
    p.add_argument("--split", choices=("dev", "test", "train"), default="dev")
    p.add_argument("--limit", type=POSITIVE, help="first N examples only")
    p.add_argument("--batch-size", type=POSITIVE, default=64)
    add_device_flags(p)
    p.set_defaults(func=cmd_eval)

    # predict
    p = sub.add_parser("predict", help="predict with a run's best model",
                       description="Input: --text (repeatable), or --input FILE: .jsonl with objects "
                       "{text[, text_pair]} / {words} / {context, choices}, or plain text, one input per line "
                       "(tab between a pair; words split on spaces for tagging). Output: JSON lines, each the "
                       "input with the answer the server gives (label and probabilities, tags, or choice).")
    p.add_argument("--run", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="input file (.jsonl or text lines)")
    src.add_argument("--text", action="append", help="an input text (repeatable)")
    p.add_argument("--text-pair", action="append", help="second text for each --text (pair tasks)")
    p.add_argument("--choice", action="append", help="an option for a multiple-choice --text (repeatable)")
    p.add_argument("--output", help="write JSON lines here instead of stdout")
    p.add_argument("--encoding", help="text encoding of --input (default utf-8)")
    p.add_argument("--batch-size", type=POSITIVE, default=64)
    add_device_flags(p)
    p.set_defaults(func=cmd_predict)

    # serve
    p = sub.add_parser("serve", help="serve many tasks from one base model over HTTP")
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", action="append", required=True, metavar="NAME=RUN",
                   help="a task to serve: name=run folder, mask file, one-task save_pretrained folder or hub repo "
                        "id (owner/name) (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--strategy", choices=("cache", "merge", "masked"), default="cache",
                   help="how a request's task gets its weights (see docs/serving.md; default cache)")
    p.add_argument("--cache-budget-mb", type=nonnegative_number, help="memory for cached merged weights (default 1024)")
    p.add_argument("--max-inputs", type=POSITIVE, default=64, help="most inputs in one request (more: 413)")
    p.add_argument("--max-length", type=POSITIVE, default=512, help="longest input in tokens (longer: 413)")
    p.add_argument("--max-tokens", type=POSITIVE, default=16384,
                   help="most tokens in one request, as the model runs them: padded batches (more: 413)")
    p.add_argument("--max-body-mb", type=nonnegative_number, default=8.0, help="largest request body in MiB (more: 413)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /predict and /tasks (default: "
                   "$MASKFIT_API_KEY if set; prefer the variable: a flag shows in the process list)")
    add_device_flags(p, precision=False)
    p.set_defaults(func=cmd_serve)

    # ensemble
    p = sub.add_parser("ensemble", help="score an ensemble of runs (e.g. masks trained with different seeds)")
    p.add_argument("--run", action="append", required=True, help="a run directory (repeatable)")
    p.add_argument("--method", choices=("labels", "logits", "probs"), default="probs")
    p.add_argument("--split", choices=("dev", "test"), default=None, help="default: the task's eval split")
    p.add_argument("--limit", type=POSITIVE)
    add_device_flags(p)
    p.set_defaults(func=cmd_ensemble)

    # memory
    p = sub.add_parser("memory", help="memory of N finetuned models against one base + N masks")
    p.add_argument("--model", default="minilm")
    p.add_argument("--tasks", type=POSITIVE, default=8)
    p.add_argument("--plot", help="write a PNG plot here")
    p.add_argument("--measure", nargs="*", metavar="MASKFILE", help="mask files to register in a live model, "
                   "measuring its resident memory")
    p.set_defaults(func=cmd_memory)

    # mask files
    p = sub.add_parser("inspect", help="what a mask file holds: task, labels, base, format, per-layer sparsity "
                       "and bytes, bits per weight")
    p.add_argument("file", help="a mask file (task.masks), a run folder or a save_pretrained folder (every task)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("convert", help="rewrite a mask file in the current format (v2: entropy-coded, checksummed)")
    p.add_argument("file", help="a mask file of any readable version")
    p.add_argument("-o", "--output", help="write here (default: replace FILE, atomically)")
    p.set_defaults(func=cmd_convert)

    # analyze
    p = sub.add_parser("analyze", help="the paper's analyses (sparsity-sweep, layers, tsne, similarity, "
                       "connectivity, bezier, transfer)")
    asub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    try:
        from .analysis import add_parsers
    except ImportError:  # analyses not installed in this build
        add_parsers = None
    if add_parsers is not None:
        add_parsers(asub)
    return parser


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Every ``maskfit train`` flag (``maskfit sweep`` parses each trial's flags with these too)."""
    from .flags import add_dataclass_flags
    from .masking import MaskConfig
    from .train import TrainArgs

    _add_task_args(p)
    p.add_argument("--model", default="minilm", help="minilm, mpnet, a local model folder or a hub id (default: minilm)")
    p.add_argument("--out", required=True, help="run directory to write (and resume from)")
    add_dataclass_flags(p, TrainArgs, title="training")
    add_dataclass_flags(p, MaskConfig, skip=("seed",), title="masking (method mask)")
    _add_threads(p)
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train_parser() -> argparse.ArgumentParser:
    """A parser of ``maskfit train``'s flags alone whose errors are a :class:`ConfigError` (one line),
    never an exit: for commands that build train commands (``maskfit sweep``)."""
    p = argparse.ArgumentParser(prog="maskfit train", add_help=False, allow_abbrev=False)
    add_train_flags(p)

    def error(message: str):
        raise ConfigError(f"maskfit train flags: {message}")

    p.error = error
    return p


def train_inputs(a) -> tuple[dict, object, object, object]:
    """(task info for run.json, task, TrainArgs, MaskConfig or None) of parsed ``maskfit train`` flags."""
    from .flags import dataclass_from_flags
    from .masking import MaskConfig
    from .train import TrainArgs

    args = dataclass_from_flags(TrainArgs, a)
    try:
        cfg = dataclass_from_flags(MaskConfig, a, seed=a.seed) if args.method == "mask" else None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    info = _task_info(a)
    return info, _get_task(info), args, cfg


def cmd_train(a) -> int:
    from .runtime import set_threads
    from .train import fit

    set_threads(a.threads)
    info, task, args, cfg = train_inputs(a)
    try:
        result = fit(task, a.model, a.out, args, mask_config=cfg, overwrite=a.overwrite, progress=not a.quiet,
                     task_info=info)
    except KeyboardInterrupt:
        print(f"\nmaskfit: interrupted; run the same command again to resume {a.out} from its last completed epoch",
              file=sys.stderr)
        return 130
    m = result.metrics
    if _is_main():
        line = f"{m['task']}: best dev {m['metric']} {m['best_score']:.4f} at epoch {m['best_epoch']}"
        if "test_score" in m:
            line += f", test {m['test_score']:.4f}"
        print(line + f" ({m['wall_time_s']:.0f} s, {m['train_examples_per_s']:.1f} train ex/s) -> {a.out}")
    return 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _engine(a, run=None):
    """The engine of an inference command. Its default precision is the run's where this device
    would choose it natively (so ``eval`` reproduces the recorded score), else fp32."""
    from .engine import Engine
    from .runtime import resolve_device, resolve_precision, set_threads

    set_threads(getattr(a, "threads", None))
    precision = a.precision
    if precision is None:
        recorded = (run.info.get("precision") if run is not None else None) or "fp32"
        native = resolve_precision("auto", resolve_device(a.device))
        precision = recorded if recorded == native else "fp32"
    return Engine(a.device, precision)


def _outputs(engine, run, model, examples, batch_size: int):
    from .tasktypes import task_type

    kind, tok = task_type(run.task_type), run.tokenizer
    feats = kind.encode(examples, tok, run.labels, run.max_length)
    return engine.predict(model, kind, feats, tok.pad_token_id, run.labels, batch_size=batch_size)


def cmd_eval(a) -> int:
    from .run import load_run
    from .tasktypes import task_type

    run = load_run(a.run)
    task = run.task
    split = a.split
    if split == "dev" and not task.has_split("dev"):
        split = task.eval_split
    examples = task.load(split)[: a.limit] if a.limit else task.load(split)
    engine = _engine(a, run)
    try:
        outputs = _outputs(engine, run, run.model(device=engine.device), examples, a.batch_size)
        kind = task_type(run.task_type)
        score, _ = kind.score(task.metric, outputs, examples, run.labels)
        loss = kind.mean_loss(outputs, examples, run.labels)
    finally:
        engine.end()
    if engine.is_main:
        print(json.dumps({"run": str(a.run), "task": task.name, "split": split, "metric": task.metric,
                          "score": score, "loss": loss, "n": len(examples), "device": str(engine.device),
                          "precision": engine.precision}))
    return 0


def _read_inputs(a, task_type: str) -> list:
    from .errors import DataError

    if a.text:
        pairs = a.text_pair or []
        if pairs and len(pairs) != len(a.text):
            raise DataError("give one --text-pair for each --text")
        if pairs and task_type != "sequence" or a.choice and task_type != "choice":
            raise DataError(f"--text-pair is for sentence-pair runs and --choice for multiple-choice runs; "
                            f"this is a {task_type} run")
        if task_type == "choice":
            if not a.choice:
                raise DataError("a multiple-choice run needs --choice options")
            return [{"context": t, "choices": a.choice} for t in a.text]
        if task_type == "tagging":
            return [{"words": t.split()} for t in a.text]
        return [{"text": t, "text_pair": pairs[i] if pairs else None} for i, t in enumerate(a.text)]
    if a.text_pair or a.choice:
        raise DataError("--text-pair and --choice go with --text; in an --input file, put them in each line")
    from .data.readers import iter_lines, iter_records

    path = Path(a.input)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    need = {"sequence": "text", "tagging": "words", "choice": "choices"}[task_type]
    if path.suffix == ".jsonl":
        return [row for _, row in iter_records(path, "jsonl", required=(need,), encoding=a.encoding)]
    if task_type == "choice":
        raise DataError(f"{path}: multiple-choice input must be .jsonl with context and choices")
    items = []
    for lineno, line in iter_lines(path, a.encoding):
        if not line.strip():
            continue
        if task_type == "tagging":
            items.append({"words": line.split()})
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise DataError(f"{path}:{lineno}: {len(parts)} tab-separated fields; a line is a text, or a text, "
                            "a tab and its pair")
        items.append({"text": parts[0], "text_pair": parts[1] if len(parts) > 1 else None})
    if not items:
        raise DataError(f"{path}: no inputs")
    return items


def _check_output(path: str | None) -> None:
    """Refuse an ``--output`` that cannot be written, before any work is done."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--output {p} is a folder; give a file name")
    if not p.parent.is_dir():
        raise ConfigError(f"--output {p}: the folder {p.parent} does not exist")


def cmd_predict(a) -> int:
    from .run import load_run
    from .tasktypes import task_type

    _check_output(a.output)
    run = load_run(a.run)
    kind = task_type(run.task_type)
    inputs = _read_inputs(a, run.task_type)
    examples = kind.parse(inputs, run.info.get("inputs"))
    engine = _engine(a, run)
    try:
        outputs = _outputs(engine, run, run.model(device=engine.device), examples, a.batch_size)
    finally:
        engine.end()
    if not engine.is_main:
        return 0
    lines = "".join(json.dumps({**obj, **kind.answer(o, run.labels, ex)}, ensure_ascii=False) + "\n"
                    for obj, ex, o in zip(inputs, examples, outputs))
    if a.output:
        from .run import atomic_write

        atomic_write(a.output, lines)
    else:
        sys.stdout.write(lines)
    return 0


def cmd_serve(a) -> int:
    from .errors import DataError
    from .serve.app import serve

    from .serve.app import API_KEY_ENV

    tasks = {}
    for spec in a.task:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path:
            raise DataError(f"--task takes NAME=RUN_DIR, got {spec!r}")
        if name in tasks:
            raise ConfigError(f"--task {name}= is given twice ({tasks[name]} and {path}); give each task one name")
        tasks[name] = path
    api_key = a.api_key if a.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        raise ConfigError(f"the API key ({'--api-key' if a.api_key is not None else '$' + API_KEY_ENV}) is empty")
    if a.max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be > 0, got {a.max_body_mb}")
    budget = int(a.cache_budget_mb * 2**20) if a.cache_budget_mb is not None else None
    serve(a.model, tasks, host=a.host, port=a.port, strategy=a.strategy, cache_budget_bytes=budget,
          max_inputs=a.max_inputs, max_length=a.max_length, max_tokens=a.max_tokens,
          max_body_bytes=max(1, int(a.max_body_mb * 2**20)), api_key=api_key, threads=a.threads, device=a.device)
    return 0


def cmd_ensemble(a) -> int:
    from .ensemble import ensemble_runs
    from .runtime import set_threads

    set_threads(a.threads)
    result = ensemble_runs(a.run, a.method, a.split, limit=a.limit, device=a.device, precision=a.precision or "fp32")
    if _is_main():
        print(json.dumps(result, indent=2))
    return 0


def cmd_inspect(a) -> int:
    from pathlib import Path

    from .maskfile import describe
    from .model import task_files

    path = Path(a.file)
    files = task_files(path) if path.is_dir() else {None: path}
    found = {name: describe(f) for name, f in files.items()}
    if a.json:
        print(json.dumps(found[None] if None in found else found, indent=2))
        return 0
    for d in found.values():
        _print_description(d)
    return 0


def _print_description(d: dict) -> None:
    labels = ", ".join(map(str, d["labels"])) if d["labels"] else "(multiple choice: none)"
    over = f", {d['bytes_over_bound']:.3f}x the entropy bound" if d["bytes_over_bound"] else ""
    print(f"{d['file']}: maskfit mask file v{d['format_version']}, {d['bytes']:,} bytes, checksum {d['checksum']}")
    print(f"  task {d['task'] or '?'} ({d['task_type']}, pooling {d['pooling']}), labels: {labels}")
    print(f"  base {d['base_model']} (fingerprint {d['fingerprint']})")
    print(f"  {d['masked_weights']:,} masked weights in {len(d['layers'])} layers, sparsity {d['sparsity']:.4f}; "
          f"masks {d['mask_bytes']:,} bytes = {d['bits_per_weight']:.3f} bits per weight{over}; head "
          f"{d['head_bytes']:,} bytes")
    width = max(len(r["layer"]) for r in d["layers"])
    print(f"  {'layer':<{width}}  {'shape':>11}  sparsity  codec     bytes  bits/weight")
    for r in d["layers"]:
        shape = "x".join(map(str, r["shape"]))
        print(f"  {r['layer']:<{width}}  {shape:>11}  {r['sparsity']:8.4f}  {r['codec']:<8} {r['bytes']:>6}  "
              f"{r['bits_per_weight']:.3f}")


def cmd_convert(a) -> int:
    from .maskfile import convert, describe

    before = describe(a.file)
    out = convert(a.file, a.output)
    after = describe(out)
    print(f"{out}: v{before['format_version']} {before['bytes']:,} bytes -> v{after['format_version']} "
          f"{after['bytes']:,} bytes ({after['bits_per_weight']:.3f} bits per weight)")
    return 0


def cmd_sweep(a) -> int:
    from .sweep import sweep_command

    return sweep_command(a)


def cmd_memory(a) -> int:
    from .memory import memory_command

    memory_command(a.model, a.tasks, a.plot, mask_files=a.measure)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        # maskfit train flags go to every trial: after '--', or mixed with the sweep's own flags
        cut = argv.index("--") if "--" in argv else len(argv)
        a, extra = parser.parse_known_args(argv[:cut])
        a.train_argv = extra + argv[cut + 1:]
        a.argv = argv[1:]  # recorded in sweep.json
    else:
        a = parser.parse_args(argv)
    # Under a multi-process launch only the main process reports progress; every one reports errors.
    logging.basicConfig(level=logging.INFO if _is_main() else logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        return a.func(a)
    except MaskfitError as e:
        print(f"maskfit: error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # one line, whatever a path holds
        return 2
    except (ValueError, FileNotFoundError) as e:  # config errors from dataclasses, missing paths
        if os.environ.get("MASKFIT_DEBUG"):
            raise
        print(f"maskfit: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmaskfit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
