"""Training a task, for masking and for the finetuning baseline: :func:`fit`.

``fit`` trains on a task's train split, evaluates on its dev split after every epoch,
keeps the best epoch (mask file or weights), stops early after ``patience`` epochs
without gain, and checkpoints every completed epoch so that the same call (under the
same launcher) resumes an interrupted run. The loop itself is the engine's
(:class:`maskfit.engine.Engine`), the run directory's life is :class:`maskfit.run.RunDir`'s;
everything in maskfit that trains (the CLI, the analyses, the benchmarks) goes through here.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .engine import TRACKERS, Engine, predict_outputs
from .errors import ConfigError, DataError
from .heads import POOLINGS, build_model, check_head, load_tokenizer, set_prior_bias
from .masking import ALL_MODULES, MaskConfig, binary_masks, mask_model, mask_stats
from .run import RunDir, load_run, versions
from .runtime import PRECISIONS
from .tasktypes import task_type

log = logging.getLogger("maskfit.train")

METHODS = ("mask", "finetune", "lora")
HEAD_BIASES = ("zero", "prior")
DEFAULT_LR = {"mask": 1e-4, "finetune": 3e-5, "lora": 5e-4}
"""Defaults when neither ``--lr`` nor a task lr applies (paper Table 4 ranges:
mask 1e-3 … 1e-4, finetune 1e-5 … 5e-5). Mask 1e-4, measured on dev with the README's
MRPC command over seeds 0-2 (benchmarks/results/readme_mrpc*.md): 80.1 ± 3.1 against
74.3 ± 5.1 at 3e-4, where seed 2 stayed at the majority class; 1e-3 stays there for 4
epochs (grid_mrpc-lr.md). Adam moves each score by about lr per step, so with scores
2e-2 wide a lower lr flips fewer bits on noise (4% of bits in epoch 1 against 7.6% at
3e-4). LoRA 5e-4: the LoRA paper's RoBERTa-base GLUE rates (4e-4 to 5e-4, Hu et al.
2021, Table 9)."""

MODEL_LR = {("mpnet", "mask"): 3e-5}
"""Per built-in model, what replaces ``DEFAULT_LR``. MPNet masks at 1e-4 collapse onto the
majority class: on MRPC (full train set, seed 0) dev 70.3 after epoch 1, then 68.4 with the
train loss at the label entropy and every input's [CLS] vector turning alike; at 3e-5 they
reach 78.9 and 85.3 after epochs 1 and 2 (finetuning: 79.9, 84.6). See RESULTS.md (MPNet
bullet of the fidelity notes) and benchmarks/results/collapse_probe_mpnet_mrpc.md."""


def dev_gain(score: float, loss: float, best: float, best_loss: float) -> bool:
    """Whether an epoch beats the best so far: a higher dev metric, or the same metric with a lower dev loss.

    The tie rule matters for masks: one still predicting the majority class scores the same
    accuracy epoch after epoch while its dev loss falls, and plain "higher metric" early
    stopping ended such runs before they left the plateau (MRPC, seed 2: best 68.4 = the
    majority class at epoch 1, stopped at epoch 3).
    """
    return score > best or (score == best and loss < best_loss)


@dataclass
class EarlyStopping:
    """The kept (best) epoch of a run and its epochs without dev gain (:func:`dev_gain`);
    ``stop`` once there are ``patience`` of them (0: never).

    The lr schedule spans all ``--epochs`` whatever the patience, so a run with patience P
    trains exactly the first epochs of the same run without early stopping: :meth:`replay`
    over a patience-0 run's history says what any patience would have kept.
    """

    patience: int
    best: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = -1  # index into the history
    stale: int = 0

    @classmethod
    def resumed(cls, patience: int, history: list[dict], best: float, best_epoch: int) -> EarlyStopping:
        """The state after a checkpoint's ``history`` whose kept epoch is ``best_epoch`` (scoring ``best``)."""
        best_loss = history[best_epoch].get("dev_loss", math.inf) if best_epoch >= 0 else math.inf
        return cls(patience, best, best_loss, best_epoch, len(history) - 1 - best_epoch)

    @classmethod
    def replay(cls, history: list[dict], patience: int) -> tuple[EarlyStopping, int]:
        """What a run with ``patience`` makes of ``history``: its final state and the epochs it trains."""
        stopping = cls(patience)
        for n, record in enumerate(history, 1):
            stopping.update(record["dev_score"], record.get("dev_loss", math.inf))
            if stopping.stop:
                return stopping, n
        return stopping, len(history)

    def update(self, score: float, loss: float) -> bool:
        """Record the next epoch's dev score and loss; whether it is the new kept epoch."""
        epoch = self.best_epoch + self.stale + 1
        if dev_gain(score, loss, self.best, self.best_loss):
            self.best, self.best_loss, self.best_epoch, self.stale = score, loss, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def stop(self) -> bool:
        return bool(self.patience) and self.stale >= self.patience


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class TrainArgs:
    """Training arguments. The ``maskfit train`` flags are generated from these fields (one
    place for each default); ``metadata["help"]`` is the flag's help."""

    method: str = field(default="mask", metadata=_help(
        "mask: learn masks over the frozen weights; finetune: the paper's baseline, every weight trained; "
        "lora: low-rank adapters (peft) on --lora-targets and the head trained", choices=METHODS))
    lr: float | None = field(default=None, metadata=_help(
        f"Adam learning rate (default: {DEFAULT_LR['mask']:g} for masks "
        f"({MODEL_LR['mpnet', 'mask']:g} on mpnet), {DEFAULT_LR['finetune']:g} for finetuning, "
        f"{DEFAULT_LR['lora']:g} for lora)"))
    epochs: int = field(default=10, metadata=_help("most epochs to train"))
    patience: int = field(default=3, metadata=_help(
        "early stopping: epochs without dev gain (a higher dev metric, or the same with a lower dev loss; 0: off). "
        "3, one more than the paper's 2: a mask's dev score can dip for two epochs and climb again "
        "(MRPC seed 1: 77.0 at epoch 2, 75.7 at 4, 80.1 at 9)"))
    batch_size: int = field(default=32, metadata=_help(
        "examples per process per step (the global batch is batch size × processes × grad accum)"))
    grad_accum: int = field(default=1, metadata=_help("micro-steps per optimizer step (gradient accumulation)"))
    max_grad_norm: float | None = field(default=None, metadata=_help(
        "clip the gradient norm of the trainable tensors to this (default: off, as in the paper)"))
    max_length: int = field(default=128, metadata=_help("truncate inputs to this many tokens"))
    seed: int = field(default=0, metadata=_help("seeds the head, the initial mask, the data order and dropout"))
    device: str = field(default="auto", metadata=_help(
        "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps; under a multi-process launch each "
        "process takes its local GPU"))
    precision: str = field(default="auto", metadata=_help(
        "autocast precision: auto (bf16 on GPUs that have it, else fp16; on the CPU bf16 only with native "
        "AMX / AVX512-BF16, else fp32; fp32 for --method mask on every device), bf16, fp16 (GPU only) or fp32. "
        "Mask scores always stay fp32",
        choices=PRECISIONS))
    limit_train: int | None = field(default=None, metadata=_help("train on a seeded random subset of N examples"))
    limit_train_seed: int | None = field(default=None, metadata=_help(
        "seed of the --limit-train subset (default: --seed; fix it to train every seed on the same subset)"))
    limit_eval: int | None = field(default=None, metadata=_help("evaluate on the first N dev examples"))
    schedule: str = field(default="linear", metadata=_help(
        "learning-rate schedule: linear (decay to 0 over all epochs) or constant", choices=("linear", "constant")))
    warmup_ratio: float = field(default=0.0, metadata=_help("fraction of all steps spent warming the lr up from 0"))
    eval_batch_size: int = field(default=64, metadata=_help("examples per process per evaluation batch"))
    pooling: str = field(default="cls", metadata=_help(
        "what sentence and choice heads read: the first token (cls, the paper) or the mean of all tokens "
        "(mean: how sentence-transformer bases such as minilm and mpnet were trained)", choices=POOLINGS))
    dropout: float | None = field(default=None, metadata=_help(
        "set every dropout probability of the model (default: keep the checkpoint's)"))
    head_bias: str = field(default="zero", metadata=_help(
        "the classifier's bias before training: zero (the paper) or prior (the log of each label's share of "
        "the train set, so a frozen head need not learn the label prior through the encoder; sequence and "
        "tagging tasks)", choices=HEAD_BIASES))
    log_with: tuple[str, ...] = field(default=(), metadata=_help(
        "also log every epoch to these trackers (comma-separated: tensorboard, wandb), under --out"))
    lora_r: int = field(default=8, metadata=_help("LoRA rank (method lora)"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling alpha (method lora)"))
    lora_targets: tuple[str, ...] = field(default=("q", "v"), metadata=_help(
        "linears that get adapters in every block, from q,k,v,ao,i,o (method lora)"))
    lora_dropout: float = field(default=0.1, metadata=_help("dropout on the adapters' input (method lora)"))

    def __post_init__(self) -> None:
        for name in ("log_with", "lora_targets"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(t.strip() for t in value.split(",") if t.strip())
            setattr(self, name, tuple(value or ()))
        checks = [
            (self.method in METHODS, f"unknown method {self.method!r}; expected {' or '.join(METHODS)}"),
            (self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"--lr must be a positive number, got {self.lr}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {self.eval_batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be >= 1, got {self.grad_accum}"),
            (self.max_grad_norm is None or (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0),
             f"--max-grad-norm must be a positive number, got {self.max_grad_norm}"),
            (self.max_length >= 2, f"--max-length must be >= 2, got {self.max_length}"),
            (self.limit_train is None or self.limit_train >= 1, f"--limit-train must be >= 1, got {self.limit_train}"),
            (self.limit_train_seed is None or self.limit_train_seed >= 0,
             f"--limit-train-seed must be >= 0, got {self.limit_train_seed}"),
            (self.limit_eval is None or self.limit_eval >= 1, f"--limit-eval must be >= 1, got {self.limit_eval}"),
            (self.schedule in ("linear", "constant"), f"schedule must be linear or constant, got {self.schedule!r}"),
            (0.0 <= self.warmup_ratio < 1.0, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.pooling in POOLINGS, f"unknown pooling {self.pooling!r}; expected {' or '.join(POOLINGS)}"),
            (self.dropout is None or 0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.head_bias in HEAD_BIASES, f"--head-bias takes {' or '.join(HEAD_BIASES)}, got {self.head_bias!r}"),
            (set(self.log_with) <= set(TRACKERS), f"--log-with takes {', '.join(TRACKERS)}, got {','.join(self.log_with)}"),
            (self.lora_r >= 1, f"--lora-r must be >= 1, got {self.lora_r}"),
            (math.isfinite(self.lora_alpha) and self.lora_alpha > 0, f"--lora-alpha must be > 0, got {self.lora_alpha}"),
            (0.0 <= self.lora_dropout < 1.0, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"),
            (bool(self.lora_targets) and set(self.lora_targets) <= set(ALL_MODULES),
             f"--lora-targets takes names from {','.join(ALL_MODULES)}, got {','.join(self.lora_targets)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def resolved_lr(self, model_name: str | None = None) -> float:
        """``--lr``, else the model's (``MODEL_LR``), else the method's ``DEFAULT_LR``."""
        if self.lr is not None:
            return self.lr
        return MODEL_LR.get((model_name, self.method), DEFAULT_LR[self.method])

    @classmethod
    def defaults(cls) -> dict:
        return asdict(cls())


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


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
        rng = random.Random(args.seed if args.limit_train_seed is None else args.limit_train_seed)
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


def task_labels(task) -> list[str] | None:
    """The label names a head predicts (None for choice tasks)."""
    return list(task.labels) if task.type != "choice" else None


def evaluate(model: nn.Module, task, tokenizer, examples: list, max_length: int = 128, batch_size: int = 64,
             precision: str = "fp32") -> tuple[float, list]:
    """(metric, predictions) of ``model`` on labelled ``examples``, on the model's device, one process."""
    kind, labels = task_type(task.type), task_labels(task)
    feats = kind.encode(examples, tokenizer, labels, max_length)
    pairs = predict_outputs(model, kind, feats, tokenizer.pad_token_id, labels, batch_size, precision=precision)
    outputs = [o for _, o in sorted(pairs, key=lambda p: p[0])]
    return kind.score(task.metric, outputs, examples, labels)


# --------------------------------------------------------------------------- training


@dataclass
class FitResult:
    model: nn.Module
    metrics: dict
    run_dir: Path | None


def make_model(model_name: str, task, args: TrainArgs, mask_config: MaskConfig | None,
               model_config=None, train: list | None = None) -> nn.Module:
    """The task model for ``args.method``: masked (only scores train), LoRA (adapters and head) or fully trainable.

    ``train`` (the training examples) is read for ``--head-bias prior``."""
    labels = task_labels(task)
    model = build_model(model_name, task.type, labels, seed=args.seed, config=model_config,
                        pooling=args.pooling, dropout=args.dropout)
    if args.head_bias == "prior":
        if task.type == "choice" or not train:
            raise ConfigError("--head-bias prior needs the train labels of a sequence or tagging task")
        kind, counts = task_type(task.type), [0] * len(labels)
        for ex in train:
            for i in kind.gold_ids(ex, labels):
                counts[i] += 1
        set_prior_bias(model, counts)
    if args.method == "mask":
        mask_model(model, mask_config or MaskConfig(seed=args.seed))
    elif args.method == "lora":
        from .lora import add_lora, lora_config

        add_lora(model, lora_config(model, args.lora_r, args.lora_alpha, args.lora_targets, args.lora_dropout))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _scheduler(optimizer, args: TrainArgs, total_steps: int):
    warm = int(args.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if args.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(task, model_name: str, out_dir: str | os.PathLike | None, args: TrainArgs | None = None,
        mask_config: MaskConfig | None = None, model_config=None, overwrite: bool = False,
        callbacks: list[Callable[[int, dict], None]] | None = None, progress: bool = True,
        task_info: dict | None = None) -> FitResult:
    """Train ``model_name`` on ``task`` with ``args.method``; see the module docstring.

    ``out_dir`` gets ``run.json``, ``metrics.json``, ``train.log`` and the best
    ``task.masks`` / ``model.safetensors``; ``None`` trains in memory only (no resume).
    ``callbacks`` are called as ``cb(epoch, record)`` after each completed epoch, on
    every process. ``task_info`` is what ``run.json`` records to rebuild the task (name
    and custom-task arguments); defaults to the task's name. ``model_config`` trains a
    random model of that transformers config on ``model_name``'s tokenizer (tests).
    """
    args = args or TrainArgs()
    check_head(task.type, args.pooling)  # before the run directory is written
    if args.head_bias == "prior" and task.type == "choice":
        raise ConfigError("--head-bias prior needs the train labels of a sequence or tagging task; "
                          "a choice head scores each choice, it has no label prior")
    if args.method == "mask":
        mask_config = mask_config or MaskConfig(seed=args.seed)
    engine = Engine(args.device, args.precision, grad_accum=args.grad_accum, max_grad_norm=args.max_grad_norm,
                    log_with=args.log_with, project_dir=out_dir if args.log_with else None,
                    mask_training=args.method == "mask")
    try:
        return _fit(engine, task, model_name, Path(out_dir) if out_dir is not None else None, args, mask_config,
                    model_config, overwrite, callbacks or [], progress, task_info)
    finally:
        engine.end()


def run_info(task, model_name: str, args: TrainArgs, mask_config: MaskConfig | None = None,
             task_info: dict | None = None, engine: Engine | None = None, data: bool = True) -> dict:
    """What ``run.json`` records for this run (``fit`` writes it; ``maskfit sweep`` compares it with a
    finished run's before reusing it). Without ``engine``, ``precision`` and ``engine`` are None: they
    describe the machine, and a resume does not compare them."""
    if args.method == "mask":
        mask_config = mask_config or MaskConfig(seed=args.seed)
    info = {
        "task": task_info or {"name": task.name},
        "model": model_name,
        "method": args.method,
        "task_type": task.type,
        "labels": task_labels(task),
        "metric": task.metric,
        "max_length": args.max_length,
        "precision": engine.precision if engine is not None else None,
        "lr": args.resolved_lr(model_name),
        "args": asdict(args),
        "mask_config": mask_config.to_dict() if mask_config else None,
        "engine": engine.describe() if engine is not None else None,
        "inputs": task.input_kind(),  # single texts or pairs: what the server will accept for this task
    }
    if data:
        info["data"] = task.data_fingerprint()  # a resume refuses data that changed
    return info


def _fit(engine: Engine, task, model_name, out_dir, args, mask_config, model_config, overwrite, callbacks, progress,
         task_info) -> FitResult:
    t_start = time.perf_counter()
    lr = args.resolved_lr(model_name)
    kind, labels = task_type(task.type), task_labels(task)
    info = run_info(task, model_name, args, mask_config, task_info, engine, data=out_dir is not None)
    run = RunDir(out_dir, engine.is_main, engine.broadcast) if out_dir is not None else None
    resume = run.prepare(info, overwrite, TrainArgs.defaults()) if run else None
    handler = run.attach_log() if run else None
    try:
        set_seed(args.seed)
        train, dev, dev_name, test = split_data(task, args)
        tokenizer = load_tokenizer(model_name)  # tiny test configs (model_config) reuse the named model's vocabulary
        pad = tokenizer.pad_token_id
        train_feats = kind.encode(train, tokenizer, labels, args.max_length)
        dev_feats = kind.encode(dev, tokenizer, labels, args.max_length)
        model = make_model(model_name, task, args, mask_config, model_config, train)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        global_batch = args.batch_size * engine.num_processes * args.grad_accum
        scheduler = _scheduler(optimizer, args, math.ceil(len(train_feats) / global_batch) * args.epochs)
        model, optimizer, scheduler = engine.prepare(model, optimizer, scheduler)

        history, stopping, start_epoch = [], EarlyStopping(args.patience), 0
        if resume is not None:
            engine.load_state(resume["state_dir"])
            history = resume["history"]
            stopping = EarlyStopping.resumed(args.patience, history, resume["best"], resume["best_epoch"])
            start_epoch = resume["epoch"] + 1
            log.info("resuming %s: epochs 1-%d done (best %.4f at epoch %d), epoch %d runs next", out_dir,
                     start_epoch, stopping.best, stopping.best_epoch + 1, start_epoch + 1)
        log.info("task %s (%s, %d train, dev: %s, %d) model %s method %s lr %g on %s, %s, %d process(es)",
                 task.name, task.type, len(train), dev_name, len(dev), model_name, args.method, lr, engine.device,
                 engine.precision, engine.num_processes)
        engine.init_trackers("maskfit", {**{k: v for k, v in info["args"].items()}, "lr": lr, "task": task.name,
                                         "model": model_name})

        best_state = None
        previous = binary_masks(engine.unwrap(model)) if args.method == "mask" else None
        for epoch in range(start_epoch, args.epochs):
            if stopping.stop:
                break  # a resumed run that had already stopped early
            stats = engine.train_epoch(model, optimizer, scheduler, kind, train_feats, pad, batch_size=args.batch_size,
                                       seed=args.seed * 1000 + epoch, progress=progress,
                                       desc=f"epoch {epoch + 1}/{args.epochs}")
            t_eval = time.perf_counter()
            outputs = engine.predict(model, kind, dev_feats, pad, labels, batch_size=args.eval_batch_size)
            score, preds = kind.score(task.metric, outputs, dev, labels)
            dev_loss = kind.mean_loss(outputs, dev, labels)
            record = {"epoch": epoch + 1, "train_loss": stats["loss"], "dev_score": score, "dev_loss": dev_loss,
                      "dev_top_share": top_prediction_share(preds),
                      "train_time_s": stats["time_s"], "train_examples_per_s": stats["examples"] / stats["time_s"],
                      "eval_time_s": time.perf_counter() - t_eval, "grad_norm": stats["grad_norm"],
                      "lr": scheduler.get_last_lr()[0]}
            if args.method == "mask":
                record.update(mask_diagnostics(engine.unwrap(model), previous))
                previous = binary_masks(engine.unwrap(model))
            history.append(record)
            improved = stopping.update(score, dev_loss)
            if improved:
                if run:
                    run.save_best(engine.unwrap(model), args.method, {"task": info["task"], "inputs": info["inputs"]})
                else:
                    best_state = trainable_state(engine.unwrap(model))
            log.info("epoch %d: loss %.4f dev %s %.4f (loss %.4f)%s (%.0f ex/s, top prediction %.3f, grad norm %s%s)",
                     epoch + 1, record["train_loss"], task.metric, score, dev_loss, " *best*" if improved else "",
                     record["train_examples_per_s"], record["dev_top_share"],
                     f"{record['grad_norm']:.3g}" if record["grad_norm"] is not None else "-",
                     f", mask sparsity {record['sparsity']:.4f}, flipped {record['flipped']:.5f}"
                     if "flipped" in record else "")
            engine.log({f"train/{k}" if k != "dev_score" else "dev/score": v for k, v in record.items()
                        if k != "epoch"}, step=epoch + 1)
            if run:
                run.save_checkpoint(engine, {"epoch": epoch, "history": history, "best": stopping.best,
                                              "best_epoch": stopping.best_epoch})
            for cb in callbacks:
                cb(epoch + 1, record)
            if engine.broadcast(stopping.stop):
                log.info("early stop: %d epochs without gain", stopping.stale)
                break

        # Reload the best epoch so the returned model (and the test score) are the kept ones.
        if run:
            engine.wait()
            model = load_run(out_dir).model(device=engine.device, model_config=model_config)
        else:
            model = engine.unwrap(model)
            if best_state is not None:
                with torch.no_grad():
                    named = dict(model.named_parameters())
                    for n, t in best_state.items():
                        named[n].copy_(t)
        metrics = {
            "task": task.name, "model": model_name, "method": args.method, "metric": task.metric,
            "dev_split": dev_name, "n_train": len(train), "n_dev": len(dev),
            "epochs": history, "best_score": stopping.best, "best_epoch": stopping.best_epoch + 1,
            "wall_time_s": None, "train_examples_per_s": _mean_rate(history),
            "lr": lr, "precision": engine.precision, "engine": engine.describe(), "args": info["args"],
            "mask_config": info["mask_config"], "versions": versions(), "completed": True,
        }
        if test is not None:
            test_feats = kind.encode(test, tokenizer, labels, args.max_length)
            outputs = engine.predict(model, kind, test_feats, pad, labels, batch_size=args.eval_batch_size)
            metrics["test_score"], _ = kind.score(task.metric, outputs, test, labels)
            metrics["n_test"] = len(test)
            log.info("test %s %.4f (best epoch %d)", task.metric, metrics["test_score"], stopping.best_epoch + 1)
        if args.method == "mask":
            metrics["sparsity"] = mask_stats(model)["sparsity"]
        prior = sum(r.get("train_time_s", 0) + r.get("eval_time_s", 0) for r in history[:start_epoch])
        metrics["wall_time_s"] = time.perf_counter() - t_start + prior
        if run:
            run.finish(metrics)
        return FitResult(model.eval(), metrics, out_dir)
    finally:
        RunDir.detach_log(handler)
        if run:
            run.close()


def mask_diagnostics(model: nn.Module, previous: dict[str, torch.Tensor] | None) -> dict:
    """Sparsity of the active mask and the fraction of its bits flipped since ``previous`` (layer → bool mask).

    A mask that stalls shows here first: almost no bits flip from one epoch to the next.
    """
    now = binary_masks(model)
    total = sum(m.numel() for m in now.values())
    zeros = sum(int((~m).sum()) for m in now.values())
    out = {"sparsity": zeros / total if total else 0.0}
    if previous is not None:
        flipped = sum(int((now[n] != previous[n]).sum()) for n in now)
        out["flipped"] = flipped / total if total else 0.0
    return out


def top_prediction_share(predictions) -> float:
    """Share of the dev predictions (every word's tag, for tagging) that are the most frequent one.

    1.0 is a constant predictor: a model collapsed onto the majority class keeps that
    class's accuracy while it has learned nothing, which the metric alone hides.
    """
    flat = [p for pred in predictions for p in (pred if isinstance(pred, list) else [pred])]
    return max(Counter(flat).values()) / len(flat) if flat else 0.0


def _mean_rate(history: list[dict]) -> float | None:
    t = sum(r["train_time_s"] for r in history)
    n = sum(r["train_examples_per_s"] * r["train_time_s"] for r in history)
    return n / t if t else None


def dataclass_kwargs(cls, namespace) -> dict:
    """The fields of dataclass ``cls`` that ``namespace`` (parsed flags) holds."""
    return {f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)}
