"""``maskfit train | eval | predict | serve | ensemble | memory | analyze``.

Errors a user can cause (bad file, unknown task, wrong base for a mask file) are
printed as one line, ``maskfit: error: ...``, with exit status 2; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import MaskfitError

TASK_HELP = ("built-in task (sst2, cola, mrpc, rte, qnli, agnews, imdb, ner, pos, arc-easy, arc-challenge, swag), "
             "your own file as csv:PATH / tsv:PATH / jsonl:PATH, or a hub dataset like glue/sst2")


def _add_task_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", required=True, help=TASK_HELP)
    g.add_argument("--data-dir", help="folder with the built-in tasks' data (default: ../shared/data)")
    g.add_argument("--dev", help="dev file for a csv:/tsv:/jsonl: task")
    g.add_argument("--test", help="test file for a csv:/tsv:/jsonl: task")
    g.add_argument("--text-column", help="text column of your own file")
    g.add_argument("--text-pair-column", help="second text column (sentence-pair tasks)")
    g.add_argument("--label-column", help="label column of your own file")


def _task_info(a) -> dict:
    info = {"name": a.task}
    for k in ("data_dir", "dev", "test", "text_column", "text_pair_column", "label_column"):
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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="maskfit", description="Adapt frozen pretrained encoders by learning "
                                     "1-bit masks over their weights (Zhao et al., EMNLP 2020).")
    parser.add_argument("--version", action="version", version=f"maskfit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # train
    p = sub.add_parser("train", help="train masks (or finetune) on a task, keep the best dev epoch",
                       description="Train on a task's train split, evaluate on dev after every epoch, keep the best "
                       "epoch, stop early, and resume an interrupted run when the same command is run again.")
    _add_task_args(p)
    p.add_argument("--model", default="minilm", help="minilm, mpnet, a local model folder or a hub id (default: minilm)")
    p.add_argument("--method", choices=("mask", "finetune"), default="mask")
    p.add_argument("--out", required=True, help="run directory to write (and resume from)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the task's paper lr for the method)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=2, help="early stopping: epochs without dev gain (0: off)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast where the CPU has native bf16 (AMX / AVX512-BF16), else fp32")
    p.add_argument("--schedule", choices=("linear", "constant"), default="linear")
    p.add_argument("--warmup-ratio", type=float, default=0.0)
    p.add_argument("--limit-train", type=int, help="train on a seeded random subset of N examples")
    p.add_argument("--limit-eval", type=int, help="evaluate on the first N dev examples")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="what sentence and choice heads read: the first token (cls, the paper) or the mean of "
                        "all tokens (mean: how sentence-transformer bases such as minilm and mpnet were trained)")
    m = p.add_argument_group("masking (method mask)")
    m.add_argument("--init-sparsity", type=float, default=0.05, help="fraction of zeros at start (default 0.05)")
    m.add_argument("--threshold", type=float, default=5e-3, help="τ (default 5e-3)")
    m.add_argument("--init-scale", type=float, default=2e-2, help="width of the initial score range (default 2e-2)")
    m.add_argument("--blocks", help="blocks to mask: '2-11', '0,3,5-7', 'all' (default: all but the two lowest)")
    m.add_argument("--modules", default="q,k,v,ao,i,o", help="linears to mask in each block (default: all six)")
    m.add_argument("--no-mask-pooler", action="store_true", help="leave the pooler unmasked (frozen)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice; on a shared "
                   "machine 1 thread per process avoids OpenMP stalls)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    # eval
    p = sub.add_parser("eval", help="score a run's best model on a split")
    p.add_argument("--run", required=True, help="run directory written by maskfit train")
    p.add_argument("--split", choices=("dev", "test", "train"), default="dev")
    p.add_argument("--limit", type=int, help="first N examples only")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_eval)

    # predict
    p = sub.add_parser("predict", help="predict with a run's best model",
                       description="Input: --text (repeatable), or --input FILE: .jsonl with objects "
                       "{text[, text_pair]} / {words} / {context, choices}, or plain text, one input per line "
                       "(tab between a pair; words split on spaces for tagging). Output: JSON lines.")
    p.add_argument("--run", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="input file (.jsonl or text lines)")
    src.add_argument("--text", action="append", help="an input text (repeatable)")
    p.add_argument("--text-pair", action="append", help="second text for each --text (pair tasks)")
    p.add_argument("--choice", action="append", help="an option for a multiple-choice --text (repeatable)")
    p.add_argument("--output", help="write JSON lines here instead of stdout")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_predict)

    # serve
    p = sub.add_parser("serve", help="serve many tasks from one base model over HTTP")
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", action="append", required=True, metavar="NAME=RUN",
                   help="a task to serve: name=run directory or mask file (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--strategy", choices=("cache", "merge", "masked"), default="cache",
                   help="how a request's task gets its weights (see docs/serving.md; default cache)")
    p.add_argument("--cache-budget-mb", type=float, help="memory for cached merged weights (default 1024)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--max-inputs", type=int, default=64, help="most inputs in one request (more: 413)")
    p.add_argument("--max-length", type=int, default=512, help="longest input in tokens (longer: 413)")
    p.set_defaults(func=cmd_serve)

    # ensemble
    p = sub.add_parser("ensemble", help="score an ensemble of runs (e.g. masks trained with different seeds)")
    p.add_argument("--run", action="append", required=True, help="a run directory (repeatable)")
    p.add_argument("--method", choices=("labels", "logits", "probs"), default="probs")
    p.add_argument("--split", choices=("dev", "test"), default=None, help="default: the task's eval split")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_ensemble)

    # memory
    p = sub.add_parser("memory", help="memory of N finetuned models against one base + N masks")
    p.add_argument("--model", default="minilm")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--plot", help="write a PNG plot here")
    p.add_argument("--measure", nargs="*", metavar="MASKFILE", help="mask files to register in a live model, "
                   "measuring its resident memory")
    p.set_defaults(func=cmd_memory)

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


def _mask_config(a):
    from .masking import MaskConfig

    return MaskConfig(init_sparsity=a.init_sparsity, threshold=a.threshold, init_scale=a.init_scale,
                      blocks=a.blocks, modules=tuple(x.strip() for x in a.modules.split(",") if x.strip()),
                      mask_pooler=not a.no_mask_pooler, seed=a.seed)


def cmd_train(a) -> int:
    import torch

    from .train import TrainArgs, fit

    if a.threads:
        torch.set_num_threads(a.threads)
    info = _task_info(a)
    task = _get_task(info)
    args = TrainArgs(method=a.method, lr=a.lr, epochs=a.epochs, patience=a.patience, batch_size=a.batch_size,
                     max_length=a.max_length, seed=a.seed, precision=a.precision, limit_train=a.limit_train,
                     limit_eval=a.limit_eval, schedule=a.schedule, warmup_ratio=a.warmup_ratio,
                     pooling=a.pooling)
    cfg = _mask_config(a) if a.method == "mask" else None
    try:
        result = fit(task, a.model, a.out, args, mask_config=cfg, overwrite=a.overwrite, progress=not a.quiet,
                     task_info=info)
    except KeyboardInterrupt:
        print(f"\nmaskfit: interrupted; run the same command again to resume {a.out} from its last completed epoch",
              file=sys.stderr)
        return 130
    m = result.metrics
    line = f"{m['task']}: best dev {m['metric']} {m['best_score']:.4f} at epoch {m['best_epoch']}"
    if "test_score" in m:
        line += f", test {m['test_score']:.4f}"
    print(line + f" ({m['wall_time_s']:.0f} s, {m['train_examples_per_s']:.1f} train ex/s) -> {a.out}")
    return 0


def cmd_eval(a) -> int:
    from .run import load_run
    from .train import evaluate, use_bf16

    run = load_run(a.run)
    task = run.task
    split = a.split
    if split == "dev" and not task.has_split("dev"):
        split = task.eval_split
    examples = task.load(split)[: a.limit] if a.limit else task.load(split)
    bf16 = run.info.get("precision") == "bf16" and use_bf16("auto")
    score, _ = evaluate(run.model(), task, run.tokenizer, examples, run.info["max_length"], a.batch_size, bf16)
    out = {"run": str(a.run), "task": task.name, "split": split, "metric": task.metric, "score": score,
           "n": len(examples)}
    print(json.dumps(out))
    return 0


def _read_inputs(a, task_type: str) -> list:
    from .errors import DataError

    if a.text:
        pairs = a.text_pair or []
        if pairs and len(pairs) != len(a.text):
            raise DataError("give one --text-pair for each --text")
        if task_type == "choice":
            if not a.choice:
                raise DataError("a multiple-choice run needs --choice options")
            return [{"context": t, "choices": a.choice} for t in a.text]
        if task_type == "tagging":
            return [{"words": t.split()} for t in a.text]
        return [{"text": t, "text_pair": pairs[i] if pairs else None} for i, t in enumerate(a.text)]
    from .data.readers import iter_records

    path = Path(a.input)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    need = {"sequence": "text", "tagging": "words", "choice": "choices"}[task_type]
    if path.suffix == ".jsonl":
        return [row for _, row in iter_records(path, "jsonl", required=(need,))]
    if task_type == "choice":
        raise DataError(f"{path}: multiple-choice input must be .jsonl with context and choices")
    items = []
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if not line.strip():
                continue
            if task_type == "tagging":
                items.append({"words": line.split()})
            else:
                parts = line.rstrip("\n").split("\t")
                items.append({"text": parts[0], "text_pair": parts[1] if len(parts) > 1 else None})
    return items


def cmd_predict(a) -> int:
    import numpy as np

    from .data import ChoiceExample, SequenceExample, TaggingExample
    from .data.encode import encode
    from .run import load_run
    from .train import predict_features

    run = load_run(a.run)
    ttype, labels = run.info["task_type"], run.info["labels"]
    inputs = _read_inputs(a, ttype)
    if ttype == "sequence":
        exs = [SequenceExample(o["text"], o.get("text_pair")) for o in inputs]
    elif ttype == "tagging":
        exs = [TaggingExample(list(o["words"])) for o in inputs]
    else:
        exs = [ChoiceExample(o.get("context", ""), list(o["choices"])) for o in inputs]
    tok = run.tokenizer
    feats = encode(ttype, exs, tok, labels if ttype != "choice" else None, run.info["max_length"])
    raw = predict_features(run.model(), ttype, feats, tok.pad_token_id, a.batch_size)
    out = open(a.output, "w") if a.output else sys.stdout
    try:
        for obj, r in zip(inputs, raw):
            if ttype == "sequence":
                rec = {**obj, "label": labels[int(np.argmax(r))], "probs": dict(zip(labels, map(float, r)))}
            elif ttype == "tagging":
                rec = {"words": obj["words"], "tags": [labels[i] for i in r]}
            else:
                rec = {**obj, "choice": int(np.argmax(r)), "probs": [float(x) for x in r]}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if a.output:
            out.close()
    return 0


def cmd_serve(a) -> int:
    from .errors import DataError
    from .serve.app import serve

    tasks = {}
    for spec in a.task:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise DataError(f"--task takes NAME=RUN_DIR, got {spec!r}")
        tasks[name] = path
    budget = int(a.cache_budget_mb * 2**20) if a.cache_budget_mb is not None else None
    serve(a.model, tasks, host=a.host, port=a.port, strategy=a.strategy, cache_budget_bytes=budget,
          max_inputs=a.max_inputs, max_length=a.max_length, threads=a.threads)
    return 0


def cmd_ensemble(a) -> int:
    from .ensemble import ensemble_runs

    result = ensemble_runs(a.run, a.method, a.split, limit=a.limit)
    print(json.dumps(result, indent=2))
    return 0


def cmd_memory(a) -> int:
    from .memory import memory_command

    memory_command(a.model, a.tasks, a.plot, mask_files=a.measure)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return a.func(a)
    except MaskfitError as e:
        print(f"maskfit: error: {e}", file=sys.stderr)
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
