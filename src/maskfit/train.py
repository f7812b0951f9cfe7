"""The one training and evaluation loop, for masking and for the finetuning baseline.

``fit`` trains on a task's train split, evaluates on its dev split after every epoch,
keeps the best epoch (mask file or weights, written atomically), stops early after
``patience`` epochs without gain, and checkpoints every completed epoch so that the
same call resumes an interrupted run. Everything else in maskfit that trains (the CLI,
the analyses, the benchmarks) goes through here.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data.encode import IGNORE_INDEX, bucket_batches, collate, encode, feature_length, split_batch, word_predictions
from .errors import DataError, RunError
from .heads import build_model, check_head, load_tokenizer
from .masking import MaskConfig, mask_model, mask_stats
from .run import RUN_FILE, atomic_write_json, save_weights, versions

log = logging.getLogger("maskfit.train")

METHODS = ("mask", "finetune")
DEFAULT_LR = {"mask": 3e-4, "finetune": 3e-5}
"""Defaults when neither ``--lr`` nor a task lr applies (paper Table 4 ranges:
mask 1e-3 … 1e-4, finetune 1e-5 … 5e-5). Mask 3e-4, measured on dev
(benchmarks/results/grid_mrpc-lr.md): on full MRPC, 1e-3 stayed at the majority class
while 3e-4 reached 77.9 in 4 epochs; 5e-3 and above give a constant prediction even on
SST-2. 1e-3 learns faster only on very short runs (a few hundred steps)."""


@dataclass
class TrainArgs:
    """Training arguments; the CLI's ``maskfit train`` flags map onto these one to one."""

    method: str = "mask"
    """``mask``: learn masks, every pretrained weight frozen. ``finetune``: the paper's
    baseline, every weight trained (embeddings, all blocks, pooler and classifier)."""
    lr: float | None = None
    """Adam learning rate; ``None`` takes the task's paper lr for the method."""
    epochs: int = 10
    patience: int = 2
    """Stop after this many epochs without a better dev score (0 = never stop early)."""
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0
    precision: str = "auto"
    """``auto`` (bf16 autocast where the CPU has native bf16, else fp32), ``bf16`` or ``fp32``."""
    limit_train: int | None = None
    """Use a seeded random subset of this many training examples."""
    limit_eval: int | None = None
    """Evaluate on the first N dev examples only (for quick runs and analyses)."""
    schedule: str = "linear"
    """``linear`` (decay to 0 over all epochs) or ``constant``."""
    warmup_ratio: float = 0.0
    eval_batch_size: int = 64
    pooling: str = "cls"
    """What sequence and choice heads read: ``cls`` (the paper: the first token) or ``mean``
    (the attention-masked mean of all tokens, how sentence-transformer bases were trained).
    Tagging tasks always read every token."""

    def resolved_lr(self, task) -> float:
        if self.lr is not None:
            return self.lr
        paper = getattr(task.spec if hasattr(task, "spec") else task, f"paper_lr_{self.method}", None)
        return paper or DEFAULT_LR[self.method]


def bf16_supported() -> bool:
    """True when this CPU does bf16 matmuls natively (AMX or AVX512-BF16).

    Without them oneDNN emulates bf16 and autocast is several times *slower* than fp32
    (measured: 7x on an AVX-512 CPU without AMX), so ``auto`` only picks bf16 here.
    """
    probes = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(p is not None for p in probes):
        return any(p() for p in probes if p is not None)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(precision: str) -> bool:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and bf16_supported())


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- forward


def task_logits(model: nn.Module, task_type: str, inputs: dict, meta: dict) -> torch.Tensor:
    """Logits for a collated batch: (B, C) sequence, (B, T, C) tagging, (B, n_choices) choice."""
    logits = model(**model_inputs(model, inputs)).logits
    if task_type == "choice" and "choice_mask" in meta:
        logits = logits.masked_fill(~meta["choice_mask"], float("-inf"))
    return logits.float()


def model_inputs(model: nn.Module, inputs: dict) -> dict:
    """The keyword arguments ``model`` takes from a collated batch (no labels; token types
    only for models that embed them)."""
    uses_types = getattr(model.config, "type_vocab_size", 0) > 1 or model.config.model_type == "bert"
    return {k: v for k, v in inputs.items() if k != "labels" and (k != "token_type_ids" or uses_types)}


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_features(model: nn.Module, task_type: str, features: list[dict], pad_token_id: int,
                     batch_size: int = 64, bf16: bool = False) -> list:
    """Raw predictions for encoded features, in input order.

    sequence / choice: one probability vector per example (numpy); tagging: per-word
    label ids (list) for each example.
    """
    model.eval()
    out: list = [None] * len(features)
    order = bucket_batches([feature_length(f) for f in features], batch_size, shuffle=False)
    for idx in order:
        inputs, meta = split_batch(collate([features[i] for i in idx], pad_token_id))
        with autocast(bf16):
            logits = task_logits(model, task_type, inputs, meta)
        if task_type == "tagging":
            token_preds = logits.argmax(-1)
            for j, i in enumerate(idx):
                out[i] = word_predictions(token_preds[j].tolist(), meta["word_index"][j].tolist(),
                                          int(meta["n_words"][j]), fill=0)
        else:
            probs = logits.softmax(-1).numpy()
            for j, i in enumerate(idx):
                out[i] = probs[j]
    return out


def score_predictions(task, raw: list, examples: list) -> tuple[float, list]:
    """(metric value, readable predictions) for ``raw`` from :func:`predict_features`."""
    from .metrics import compute_metric

    labels = list(task.labels) if task.type != "choice" else None
    if task.type == "tagging":
        fill = labels.index("O") if "O" in labels else 0
        preds = [[labels[p] if p is not None else labels[fill] for p in row] for row in raw]
        golds = [ex.tags for ex in examples]
    elif task.type == "choice":
        preds = [int(np.argmax(p)) for p in raw]
        golds = [ex.label for ex in examples]
    else:
        preds = [labels[int(np.argmax(p))] for p in raw]
        golds = [ex.label for ex in examples]
    return compute_metric(task.metric, preds, golds), preds


def evaluate(model: nn.Module, task, tokenizer, examples: list, max_length: int = 128, batch_size: int = 64,
             bf16: bool = False) -> tuple[float, list]:
    """Score ``model`` on labelled ``examples`` with the task's metric."""
    labels = list(task.labels) if task.type != "choice" else None
    feats = encode(task.type, examples, tokenizer, labels, max_length)
    raw = predict_features(model, task.type, feats, tokenizer.pad_token_id, batch_size, bf16)
    return score_predictions(task, raw, examples)


# --------------------------------------------------------------------------- data


def split_data(task, args: TrainArgs) -> tuple[list, list, str, list | None]:
    """(train, dev, dev description, test or None).

    Tasks without a dev split (AG News, IMDB) get a seeded held-out slice of train
    (10%, at most 2,000 examples) for model selection; their test split is scored once
    with the best epoch. The test split is never used to choose anything.
    """
    from .tasks import check_labels

    train = task.load("train")
    check_labels(task)
    test = task.load("test") if task.has_split("test") and _labelled(task, "test") else None
    if task.has_split("dev"):
        dev, dev_name = task.load("dev"), "dev"
    else:
        rng = random.Random(1234)
        order = list(range(len(train)))
        rng.shuffle(order)
        n_dev = min(2000, max(1, len(train) // 10))
        held = set(order[:n_dev])
        dev = [train[i] for i in order[:n_dev]]
        train = [ex for i, ex in enumerate(train) if i not in held]
        dev_name = f"held-out {n_dev} of train"
    if args.limit_train is not None and args.limit_train < len(train):
        rng = random.Random(args.seed)
        train = rng.sample(train, args.limit_train)
    if args.limit_eval is not None:
        dev = dev[: args.limit_eval]
        test = test[: args.limit_eval] if test is not None else None
    if not train:
        raise DataError(f"task {task.name}: the train split is empty")
    return train, dev, dev_name, test


def _labelled(task, split: str) -> bool:
    try:
        exs = task.load(split)
    except DataError:
        return False
    first = exs[0] if exs else None
    return first is not None and (getattr(first, "label", None) is not None or getattr(first, "tags", None) is not None)


# --------------------------------------------------------------------------- training


@dataclass
class FitResult:
    model: nn.Module
    metrics: dict
    run_dir: Path | None


def make_model(model_name: str, task, args: TrainArgs, mask_config: MaskConfig | None,
               model_config=None) -> nn.Module:
    """The task model for ``args.method``: masked (only scores train) or fully trainable."""
    labels = list(task.labels) if task.type != "choice" else ["choice"]
    model = build_model(model_name, task.type, labels, seed=args.seed, config=model_config, pooling=args.pooling)
    if args.method == "mask":
        cfg = mask_config or MaskConfig(seed=args.seed)
        mask_model(model, cfg)
    elif args.method == "finetune":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        raise ValueError(f"unknown method {args.method!r}; expected mask or finetune")
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def fit(task, model_name: str, out_dir: str | os.PathLike | None, args: TrainArgs | None = None,
        mask_config: MaskConfig | None = None, model_config=None, overwrite: bool = False,
        callbacks: list[Callable[[int, dict], None]] | None = None, progress: bool = True,
        task_info: dict | None = None) -> FitResult:
    """Train ``model_name`` on ``task`` with ``args.method``; see the module docstring.

    ``out_dir`` gets ``run.json``, ``metrics.json``, ``train.log`` and the best
    ``task.masks`` / ``model.safetensors``; ``None`` trains in memory only (no resume).
    ``callbacks`` are called as ``cb(epoch, record)`` after each completed epoch.
    ``task_info`` is what ``run.json`` records to rebuild the task (name and custom-task
    arguments); defaults to the task's name.
    """
    args = args or TrainArgs()
    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; expected mask or finetune")
    check_head(task.type, args.pooling)  # before the run directory is written
    if args.method == "mask":
        mask_config = mask_config or MaskConfig(seed=args.seed)
    bf16 = use_bf16(args.precision)
    lr = args.resolved_lr(task)
    set_seed(args.seed)

    run_dir = Path(out_dir) if out_dir is not None else None
    info = {
        "task": task_info or {"name": task.name},
        "model": model_name,
        "method": args.method,
        "task_type": task.type,
        "labels": list(task.labels) if task.type != "choice" else None,
        "metric": task.metric,
        "max_length": args.max_length,
        "precision": "bf16" if bf16 else "fp32",
        "lr": lr,
        "args": asdict(args),
        "mask_config": mask_config.to_dict() if mask_config else None,
    }
    resume = _prepare_run_dir(run_dir, info, overwrite) if run_dir else None
    handler = _attach_log(run_dir) if run_dir else None
    try:
        return _fit(task, model_name, run_dir, args, mask_config, model_config, info, resume, lr, bf16,
                    callbacks or [], progress)
    finally:
        if handler:
            logging.getLogger("maskfit").removeHandler(handler)
            handler.close()


def _fit(task, model_name, run_dir, args, mask_config, model_config, info, resume, lr, bf16, callbacks, progress):
    t_start = time.perf_counter()
    train, dev, dev_name, test = split_data(task, args)
    tokenizer = load_tokenizer(model_name)  # tiny test configs (model_config) reuse the named model's vocabulary
    labels = list(task.labels) if task.type != "choice" else None
    train_feats = encode(task.type, train, tokenizer, labels, args.max_length)
    dev_feats = encode(task.type, dev, tokenizer, labels, args.max_length)
    model = make_model(model_name, task, args, mask_config, model_config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = math.ceil(len(train_feats) / args.batch_size)
    scheduler = _scheduler(optimizer, args, steps_per_epoch * args.epochs)
    pad = tokenizer.pad_token_id

    history, best, best_epoch, start_epoch = [], -math.inf, -1, 0
    if resume is not None:
        state = resume
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, t in state["trainable"].items():
                named[n].copy_(t)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, best_epoch = state["history"], state["best"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng"])
        log.info("resuming %s from epoch %d (best %.4f at epoch %d)", run_dir, start_epoch, best, best_epoch + 1)
    log.info("task %s (%s, %d train, dev: %s, %d) model %s method %s lr %g precision %s",
             task.name, task.type, len(train), dev_name, len(dev), model_name, args.method, lr, info["precision"])

    best_state = None
    stale = len(history) - 1 - best_epoch if history else 0
    for epoch in range(start_epoch, args.epochs):
        if args.patience and stale >= args.patience:
            break  # a resumed run that had already stopped early
        model.train()
        batches = bucket_batches([feature_length(f) for f in train_feats], args.batch_size, shuffle=True,
                                 seed=args.seed * 1000 + epoch)
        t0, seen, total_loss = time.perf_counter(), 0, 0.0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not progress, leave=False,
                   unit="batch", dynamic_ncols=True)
        for idx in bar:
            inputs, meta = split_batch(collate([train_feats[i] for i in idx], pad))
            with autocast(bf16):
                logits = task_logits(model, task.type, inputs, meta)
            loss = task_loss(logits, inputs["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(idx)
            total_loss += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", ex_s=f"{seen / (time.perf_counter() - t0):.1f}")
        train_time = time.perf_counter() - t0
        raw = predict_features(model, task.type, dev_feats, pad, args.eval_batch_size, bf16)
        score, _ = score_predictions(task, raw, dev)
        record = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "dev_score": score,
                  "train_time_s": train_time, "train_examples_per_s": seen / train_time,
                  "eval_time_s": time.perf_counter() - t0 - train_time}
        if args.method == "mask":
            record["sparsity"] = mask_stats(model)["sparsity"]
        history.append(record)
        improved = score > best
        if improved:
            best, best_epoch = score, len(history) - 1
            stale = 0
            if run_dir:
                _save_best(model, run_dir, args.method, info)
            else:
                best_state = trainable_state(model)
        else:
            stale += 1
        log.info("epoch %d: loss %.4f dev %s %.4f%s (%.0f ex/s)", epoch + 1, record["train_loss"], task.metric,
                 score, " *best*" if improved else "", record["train_examples_per_s"])
        if run_dir:
            _save_checkpoint(run_dir, model, optimizer, scheduler, epoch, history, best, best_epoch)
        for cb in callbacks:
            cb(epoch + 1, record)
        if args.patience and stale >= args.patience:
            log.info("early stop: %d epochs without gain", stale)
            break

    # Reload the best epoch so the returned model (and the test score) are the kept ones.
    if run_dir:
        model = load_best(run_dir, model_config)
    elif best_state is not None:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, t in best_state.items():
                named[n].copy_(t)
    metrics = {
        "task": task.name, "model": model_name, "method": args.method, "metric": task.metric,
        "dev_split": dev_name, "n_train": len(train), "n_dev": len(dev),
        "epochs": history, "best_score": best, "best_epoch": best_epoch + 1,
        "wall_time_s": None, "train_examples_per_s": _mean_rate(history),
        "lr": lr, "precision": info["precision"], "args": info["args"], "mask_config": info["mask_config"],
        "versions": versions(), "completed": True,
    }
    if test is not None:
        metrics["test_score"], _ = evaluate(model, task, tokenizer, test, args.max_length, args.eval_batch_size, bf16)
        metrics["n_test"] = len(test)
        log.info("test %s %.4f (best epoch %d)", task.metric, metrics["test_score"], best_epoch + 1)
    if args.method == "mask":
        metrics["sparsity"] = mask_stats(model)["sparsity"]
    prior = sum(r.get("train_time_s", 0) + r.get("eval_time_s", 0) for r in history[:start_epoch])
    metrics["wall_time_s"] = time.perf_counter() - t_start + prior
    if run_dir:
        atomic_write_json(run_dir / "metrics.json", metrics)
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return FitResult(model, metrics, run_dir)


def load_best(run_dir: str | os.PathLike, model_config=None) -> nn.Module:
    """The best epoch's model of a run directory, in eval mode.

    Without ``model_config`` this is ``load_run(run_dir).model()``. With it (a run that
    ``fit(model_config=...)`` trained on a random model of that config, as tests do) the
    random base is rebuilt from the run's seed exactly as :func:`make_model` built it, and
    the mask file (fingerprint-checked) or the finetuned weights are loaded onto it.
    """
    import copy

    from .run import load_run

    run = load_run(run_dir)
    if model_config is None:
        return run.model()
    info = run.info
    model = build_model(info["model"], info["task_type"], info["labels"] or ["choice"],
                        seed=info["args"]["seed"], config=copy.deepcopy(model_config),
                        pooling=info["args"].get("pooling", "cls"))
    if run.method == "mask":
        from .maskfile import load_masks

        return load_masks(model, run.path / "task.masks")
    from safetensors.torch import load_model

    load_model(model, str(run.path / "model.safetensors"))
    return model.eval()


def _mean_rate(history: list[dict]) -> float | None:
    t = sum(r["train_time_s"] for r in history)
    n = sum(r["train_examples_per_s"] * r["train_time_s"] for r in history)
    return n / t if t else None


def _scheduler(optimizer, args: TrainArgs, total_steps: int):
    warm = int(args.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if args.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    if args.schedule not in ("linear", "constant"):
        raise ValueError(f"schedule must be linear or constant, got {args.schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------- run directory


def _comparable(info: dict) -> dict:
    keep = dict(info)
    args = {**asdict(TrainArgs()), **info["args"]}  # a run from before a new flag existed had its default
    keep["args"] = {k: v for k, v in args.items() if k not in ("epochs", "patience", "eval_batch_size")}
    return keep


def _prepare_run_dir(run_dir: Path, info: dict, overwrite: bool):
    """Create ``run_dir`` or find a resumable checkpoint in it."""
    existing = run_dir / RUN_FILE
    if existing.exists() and overwrite:
        for name in ("checkpoint", "metrics.json", "task.masks", "model.safetensors", RUN_FILE, "train.log"):
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if existing.exists():
        try:
            old = json.loads(existing.read_text())
        except json.JSONDecodeError:
            raise RunError(f"{existing} is corrupt; pass --overwrite to start over") from None
        if _comparable(old) != _comparable(info):
            raise RunError(f"{run_dir} holds a different run ({old.get('task', {}).get('name')}, {old.get('method')}, "
                           f"{old.get('model')}); use another --out or pass --overwrite")
        ckpt = run_dir / "checkpoint" / "state.pt"
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            if state["epoch"] + 1 >= info["args"]["epochs"] and (run_dir / "metrics.json").exists():
                raise RunError(f"{run_dir} is already complete; pass --overwrite to train again")
            atomic_write_json(existing, info)  # epochs/patience may have been raised
            return state
        if (run_dir / "metrics.json").exists():
            raise RunError(f"{run_dir} is already complete; pass --overwrite to train again")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(existing, info)
    return None


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("maskfit")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _save_best(model: nn.Module, run_dir: Path, method: str, info: dict) -> None:
    if method == "mask":
        from .maskfile import save_masks

        save_masks(model, run_dir / "task.masks", labels=info["labels"], extra={"task": info["task"]})
    else:
        save_weights(model, run_dir / "model.safetensors")


def _save_checkpoint(run_dir, model, optimizer, scheduler, epoch, history, best, best_epoch) -> None:
    state = {"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "best": best,
             "best_epoch": best_epoch, "rng": torch.get_rng_state()}
    ckpt = run_dir / "checkpoint"
    ckpt.mkdir(exist_ok=True)
    tmp = ckpt / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, ckpt / "state.pt")
