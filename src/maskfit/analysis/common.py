"""What every analysis shares: settings, the CLI flags, training through ``train.fit`` with
run reuse, parameter points of a model, and plotting/writing helpers.

Nothing here trains on its own: :func:`train_run` calls :func:`maskfit.train.fit` (the
engine's loop) and, when the run directory already holds a completed run, reads its
``metrics.json`` instead of training again. Scores come from
:func:`maskfit.engine.predict_outputs` and the task type's scoring.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RunError
from ..masking import MaskConfig, masked_layers, merged

log = logging.getLogger("maskfit.analysis")


def _limit(s: str) -> int | None:
    n = int(s)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n or None


def _f(default, help: str, **more):
    return field(default=default, metadata={"help": help, **more})


@dataclass
class Settings:
    """How an analysis trains and evaluates; the common ``maskfit analyze`` flags are generated
    from these fields (:func:`add_common_args`), so each default is stated here only.

    The defaults are the *small* scale the analyses were written for (minutes of 2-core
    CPU with the real ``minilm``); pass ``limit_train=None`` / ``limit_eval=None`` and
    the paper's epochs and learning rates for full-scale runs.
    """

    model: str = _f("minilm", "base model")
    limit_train: int | None = _f(500, "train on a seeded random subset of N examples; 0 = all", type=_limit)
    limit_eval: int | None = _f(300, "evaluate on the first N dev examples; 0 = all", type=_limit)
    epochs: int = _f(2, "training epochs per run")
    lr: float | None = _f(2e-3, "mask-score learning rate (high because small runs take few steps; the paper "
                                "uses 1e-4 … 1e-3 over full train sets; None: maskfit train's default)")
    finetune_lr: float | None = _f(1e-4, "finetuning learning rate (None: maskfit train's default)")
    batch_size: int = _f(16, "training batch size")
    max_length: int = _f(64, "truncate inputs to N tokens")
    patience: int = 0
    precision: str = _f("auto", "autocast precision", choices=("auto", "bf16", "fp16", "fp32"))
    device: str = _f("auto", "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    seed: int = 0
    progress: bool = False
    overwrite: bool = _f(False, "retrain runs already in --out")
    data_dir: str | None = _f(None, "folder with the built-in tasks' data (default: ../shared/data)")
    runs_dir: str | None = _f(None, "folder of the training runs, shared between analyses (default: OUT/runs)",
                              flag="runs")
    """Where the training runs live (``None``: ``<out>/runs``). Analyses that need the
    same run (e.g. the SST-2 mask and finetune runs of tsne, connectivity, bezier,
    transfer) share it when given the same folder."""
    model_config: Any = None
    """A transformers config: train a *random* model of that config on ``model``'s
    tokenizer instead of the pretrained weights (tests)."""

    def train_args(self, method: str, seed: int | None = None):
        from ..train import TrainArgs

        return TrainArgs(method=method, lr=self.lr if method == "mask" else self.finetune_lr, epochs=self.epochs,
                         patience=self.patience, batch_size=self.batch_size, max_length=self.max_length,
                         seed=self.seed if seed is None else seed, precision=self.precision, device=self.device,
                         limit_train=self.limit_train, limit_eval=self.limit_eval)

    def describe(self) -> dict:
        d = {k: getattr(self, k) for k in ("model", "limit_train", "limit_eval", "epochs", "lr", "finetune_lr",
                                           "batch_size", "max_length", "patience", "precision")}
        if self.model_config is not None:
            d["model_config"] = {k: getattr(self.model_config, k, None) for k in
                                 ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
        return d


# --------------------------------------------------------------------------- CLI


RAW = argparse.RawDescriptionHelpFormatter
"""Sub-commands print their module docstring as written (formulas keep their layout)."""


def add_common_args(p: argparse.ArgumentParser, name: str, tasks: str, seeds: str = "0") -> None:
    """The flags every ``maskfit analyze`` sub-command takes: ``--tasks``, ``--seeds``, ``--out``,
    ``--quiet`` and one flag per documented :class:`Settings` field."""
    from ..flags import add_dataclass_flags

    g = p.add_argument_group("scale and training (every run goes through maskfit.train.fit)")
    g.add_argument("--tasks", default=tasks, help=f"comma-separated task names (default: {tasks})")
    g.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default: {seeds})")
    g.add_argument("--out", default=f"analysis/{name}",
                   help=f"output folder: runs, {name}.png and the numbers (default: analysis/{name}); "
                        "runs already completed there are reused, not retrained")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_flags(p, Settings, title="settings")


def settings_from_args(a) -> Settings:
    from ..flags import dataclass_from_flags

    return dataclass_from_flags(Settings, a, progress=not a.quiet)


def csv_list(s: str) -> list[str]:
    return [x.strip() for x in str(s).split(",") if x.strip()]


def int_list(s: str) -> list[int]:
    return [int(x) for x in csv_list(s)]


def float_list(s: str) -> list[float]:
    return [float(x) for x in csv_list(s)]


# --------------------------------------------------------------------------- runs


def get_task(name: str, settings: Settings):
    from ..tasks import get_task as _get

    return _get(name, data_dir=settings.data_dir) if settings.data_dir else _get(name)


@dataclass
class TrainedRun:
    """A completed run: its metrics and directory; the model is loaded on demand."""

    run_dir: Path
    metrics: dict
    reused: bool
    settings: Settings
    _model: nn.Module | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        return float(self.metrics["best_score"])

    def model(self) -> nn.Module:
        """The best epoch's model (eval mode; masked runs carry fixed masks)."""
        if self._model is None:
            from ..run import load_run
            from ..runtime import resolve_device

            self._model = load_run(self.run_dir).model(device=resolve_device(self.settings.device),
                                                       model_config=self.settings.model_config)
        return self._model.eval()


def run_name(method: str, seed: int, mask_config: MaskConfig | None = None) -> str:
    """``<method>[-<variant>]/seed-<seed>``: one name per distinct run, so analyses share runs.

    The variant lists what differs from the paper preset: ``sparsity-0.5``, ``blocks-0-2``,
    ``blocks-none``; any other change adds a short hash of the whole config.
    """
    parts = []
    if method == "mask" and mask_config is not None:
        default = MaskConfig(seed=mask_config.seed).to_dict()
        cfg = mask_config.to_dict()
        if cfg["init_sparsity"] != default["init_sparsity"]:
            parts.append(f"sparsity-{cfg['init_sparsity']:g}")
        if cfg["blocks"] is not None:
            b = cfg["blocks"]
            if b == [] or b == "":
                parts.append("blocks-none")
            elif isinstance(b, list) and b == list(range(b[0], b[-1] + 1)):
                parts.append(f"blocks-{b[0]}-{b[-1]}")
            else:
                parts.append("blocks-" + (",".join(map(str, b)) if isinstance(b, list) else str(b)))
        rest = {k: v for k, v in cfg.items() if k not in ("init_sparsity", "blocks", "seed") and v != default[k]}
        if rest:
            import hashlib

            parts.append("cfg-" + hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8])
    return "-".join([method] + parts) + f"/seed-{seed}"


def train_run(task, method: str, out: str | Path, settings: Settings, seed: int | None = None,
              mask_config: MaskConfig | None = None) -> TrainedRun:
    """Train one run through :func:`maskfit.train.fit`, or reuse the completed one.

    The run lives in ``<settings.runs_dir or out/runs>/<task>/<run_name(...)>``. A run
    directory with a ``metrics.json`` marked complete is read, not retrained (fit itself
    refuses to retrain a completed run), after checking it was trained with the same
    settings; an interrupted one is resumed by fit. ``overwrite`` in ``settings`` retrains.
    """
    from ..train import fit

    seed = settings.seed if seed is None else seed
    args = settings.train_args(method, seed)
    if method == "mask":
        mask_config = mask_config or MaskConfig(seed=seed)
    root = Path(settings.runs_dir) if settings.runs_dir else Path(out) / "runs"
    run_dir = root / task.name / run_name(method, seed, mask_config)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists() and not settings.overwrite:
        metrics = json.loads(metrics_file.read_text())
        if metrics.get("completed"):
            _check_same(run_dir, settings.model, method, args, mask_config)
            log.info("reusing %s (%s %.4f)", run_dir, metrics.get("metric"), metrics["best_score"])
            return TrainedRun(run_dir, metrics, True, settings)
    t0 = time.perf_counter()
    result = fit(task, settings.model, run_dir, args, mask_config=mask_config, model_config=settings.model_config,
                 overwrite=settings.overwrite, progress=settings.progress)
    log.info("trained %s in %.0f s: %s %.4f", run_dir, time.perf_counter() - t0, result.metrics["metric"],
             result.metrics["best_score"])
    return TrainedRun(run_dir, result.metrics, False, settings, result.model)


def _check_same(run_dir: Path, model: str, method: str, args, mask_config: MaskConfig | None) -> None:
    """Refuse to reuse a completed run trained with other settings (one line, like fit)."""
    info = json.loads((run_dir / "run.json").read_text())
    want = {"model": model, "method": method,
            "mask_config": mask_config.to_dict() if mask_config else None}
    have = {"model": info.get("model"), "method": info.get("method"), "mask_config": info.get("mask_config")}
    keys = ("lr", "batch_size", "max_length", "seed", "limit_train", "limit_eval")
    want_args = {k: getattr(args, k) for k in keys}
    have_args = {k: info.get("args", {}).get(k) for k in keys}
    if args.lr is None:
        want_args.pop("lr"), have_args.pop("lr")
    if want != have or want_args != have_args:
        diff = sorted(k for k in want_args if want_args[k] != have_args[k])
        diff += [k for k in want if want[k] != have[k]]
        raise RunError(f"{run_dir} holds a completed run with other settings ({', '.join(diff)}); "
                       "use another --out or pass --overwrite")


def eval_examples(task, settings: Settings) -> list:
    """The dev examples the runs were scored on (``split_data``'s choice, same limit)."""
    from ..train import split_data

    return split_data(task, settings.train_args("mask"))[1]


def majority_score(task, settings: Settings) -> float | None:
    """The dev score of always predicting the train subset's most frequent label (tag, for
    tagging tasks): the chance-level reference line of the plots. ``None`` for choice tasks."""
    from collections import Counter

    from ..metrics import compute_metric
    from ..train import split_data

    if task.type not in ("sequence", "tagging"):
        return None
    train, dev, _, _ = split_data(task, settings.train_args("mask"))
    if task.type == "tagging":
        tag = Counter(t for ex in train for t in ex.tags).most_common(1)[0][0]
        return float(compute_metric(task.metric, [[tag] * len(ex.tags) for ex in dev], [ex.tags for ex in dev]))
    label = Counter(ex.label for ex in train).most_common(1)[0][0]
    return float(compute_metric(task.metric, [label] * len(dev), [ex.label for ex in dev]))


def tokenizer_for(settings: Settings):
    from ..heads import load_tokenizer

    return load_tokenizer(settings.model)


def plain_model(task, settings: Settings, seed: int | None = None) -> nn.Module:
    """The un-trained task model: pretrained encoder (or the random test model) plus the
    head :func:`maskfit.heads.build_model` draws from ``seed``; the head a mask run of
    that seed starts from (and keeps)."""
    from ..heads import build_model

    from ..runtime import resolve_device
    from ..train import task_labels

    cfg = copy.deepcopy(settings.model_config) if settings.model_config is not None else None
    seed = settings.seed if seed is None else seed
    return build_model(settings.model, task.type, task_labels(task), seed=seed, config=cfg,
                       device=resolve_device(settings.device)).eval()


def num_blocks(settings: Settings) -> int:
    if settings.model_config is not None:
        return int(settings.model_config.num_hidden_layers)
    from transformers import AutoConfig

    from ..models import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(settings.model))
    return int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layers", 0)))


# --------------------------------------------------------------------------- parameter points


def param_point(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model as a point in weight space: every parameter and buffer, detached copies.

    A masked model is materialised first (each masked linear becomes a plain linear with
    ``W ⊙ M``, via :func:`maskfit.masking.merged`), so masked and finetuned models of the
    same architecture give dicts with the same keys.
    """
    if masked_layers(model):
        with merged(model):
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def lerp(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], gamma: float) -> dict[str, torch.Tensor]:
    """``W(γ) = W_a + γ (W_b − W_a)`` over every floating tensor; integer buffers from ``a``.

    ``torch.lerp`` is exact at both ends: γ = 0 gives ``a`` and γ = 1 gives ``b`` bit for bit.
    """
    if set(a) != set(b):
        raise ValueError(f"parameter sets differ: {sorted(set(a) ^ set(b))[:4]}")
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.shape != tb.shape:
            raise ValueError(f"{k}: shapes differ {tuple(ta.shape)} vs {tuple(tb.shape)}")
        out[k] = torch.lerp(ta, tb, float(gamma)) if ta.is_floating_point() else ta
    return out


class AtPoint(nn.Module):
    """``model`` evaluated at the parameter point ``params`` via ``torch.func.functional_call``.

    Behaves like a task model for a :class:`~maskfit.tasktypes.TaskType` and
    :func:`maskfit.engine.predict_outputs` (it has ``config`` and returns the model's output);
    ``model``'s own tensors are untouched.
    """

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.params = params
        self.config = model.config

    def forward(self, **inputs):
        return torch.func.functional_call(self.model, self.params, args=(), kwargs=inputs, strict=False)


def score_point(model: nn.Module, params: dict[str, torch.Tensor], task, feats: list, examples: list,
                pad_token_id: int, batch_size: int = 64) -> dict:
    """Dev metric and mean cross-entropy of ``model`` at ``params`` (fp32)."""
    from ..engine import predict_outputs
    from ..tasktypes import task_type
    from ..train import task_labels

    kind, labels = task_type(task.type), task_labels(task)
    pairs = predict_outputs(AtPoint(model, params), kind, feats, pad_token_id, labels, batch_size)
    outputs = [o for _, o in sorted(pairs, key=lambda p: p[0])]
    score, _ = kind.score(task.metric, outputs, examples, labels)
    return {"score": float(score), "loss": kind.mean_loss(outputs, examples, labels)}


# --------------------------------------------------------------------------- output


def out_dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_csv(path: Path, rows: list[dict]) -> Path:
    import io

    from ..run import atomic_write

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) for k, v in r.items()})
    return atomic_write(path, buf.getvalue())


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return v


def write_json(path: Path, data) -> Path:
    from ..run import atomic_write

    return atomic_write(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG, atomically (as every file maskfit writes)."""
    from ..run import atomic_write

    return atomic_write(path, writer=lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scale_note(settings: Settings) -> str:
    """A one-line description of the run scale for plot subtitles."""
    model = settings.model if settings.model_config is None else f"random tiny {settings.model_config.model_type}"
    tr = settings.limit_train or "all"
    ev = settings.limit_eval or "all"
    return f"{model}, {tr} train / {ev} dev examples, {settings.epochs} epoch(s)"


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
