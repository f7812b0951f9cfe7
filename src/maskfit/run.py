"""A run directory, its whole life: what ``maskfit train`` writes and everything else reads.

::

    run.json            how to rebuild the task and the model; compared on resume
    train.log           the log of every attempt
    task.masks          the best epoch's masks (method mask), or
    model.safetensors   the best epoch's weights (method finetune), or
    lora.safetensors    the best epoch's LoRA adapter and head (method lora)
    metrics.json        written last: per-epoch scores, best, test, wall time, versions
    checkpoint/         while training: progress.json (the last complete epoch and the
                        bookkeeping) and epoch-N/ (accelerate's state: trainable tensors,
                        optimizer, scheduler, scaler, every process's RNG); deleted at the end

Every file is written through :func:`atomic_write` (temp file in the same folder, fsync,
rename, fsync of the folder). A checkpoint is complete before ``progress.json`` names it
and the previous one is deleted only after that, so a run killed at any moment resumes
from its last complete epoch. In a multi-process run only the main process writes;
every process reads.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .errors import RunError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
MASK_FILE = "task.masks"
WEIGHTS_FILE = "model.safetensors"
LORA_FILE = "lora.safetensors"
BEST_FILE = {"mask": MASK_FILE, "finetune": WEIGHTS_FILE, "lora": LORA_FILE}
"""The file that holds a run's best epoch, per method."""
CHECKPOINT_DIR = "checkpoint"
PROGRESS_FILE = "progress.json"
RESUME_FREE = ("epochs", "patience", "eval_batch_size", "device", "log_with")
"""Training arguments a resumed run may change (raise the epoch budget, evaluate on another device...)."""


def atomic_write(path: str | os.PathLike, data: bytes | str | None = None, *,
                 writer: Callable[[str], None] | None = None) -> Path:
    """Write ``data`` (or let ``writer(tmp_path)`` write) to ``path`` atomically and durably."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data.encode() if isinstance(data, str) else data)
        if writer is not None:
            writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut only once the folder is synced
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=str))


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """All of a finetuned model's tensors, as safetensors under the transformers model's names."""
    from safetensors.torch import save_model

    from .masking.apply import unwrap

    return atomic_write(path, writer=lambda tmp: save_model(unwrap(model), tmp))


def versions() -> dict:
    import accelerate
    import transformers

    from . import __version__

    return {"maskfit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "platform": platform.platform()}


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path} is corrupt ({type(e).__name__}); pass --overwrite to start over") from None


class RunDir:
    """Where one training run lives while it trains (see the module doc)."""

    def __init__(self, path: str | os.PathLike, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    # ------------------------------------------------------------------ start or resume

    def prepare(self, info: dict, overwrite: bool, defaults: dict) -> dict | None:
        """Create the run, or find its checkpoint: returns the saved progress to resume from, or None.

        Every process runs the checks (so all of them refuse alike); only the main process
        writes. ``defaults`` are the training arguments' defaults: a run written before an
        argument existed had its default.
        """
        run_file = self.path / RUN_FILE
        if overwrite and run_file.exists() and self.is_main:
            for name in (CHECKPOINT_DIR, METRICS_FILE, *BEST_FILE.values(), RUN_FILE, LOG_FILE):
                p = self.path / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        if not overwrite and run_file.exists():
            old = _read_json(run_file, "run")
            if not isinstance(old, dict) or not isinstance(old.get("args"), dict):
                raise RunError(f"{run_file} is corrupt; pass --overwrite to start over")
            if _comparable(old, defaults) != _comparable(info, defaults):
                raise RunError(f"{self.path} holds a different run ({(old.get('task') or {}).get('name')}, "
                               f"{old.get('method')}, {old.get('model')}); use another --out or pass --overwrite")
            progress = self.progress()
            if progress is not None:
                if self.is_main:
                    atomic_write_json(run_file, info)  # epochs / patience may have been raised
                return progress
            if (self.path / METRICS_FILE).exists():
                raise RunError(f"{self.path} is already complete; pass --overwrite to train again")
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_file, info)
        return None

    def progress(self) -> dict | None:
        """The bookkeeping of the last complete checkpoint, with ``state_dir``; None when there is none."""
        f = self.checkpoint_dir / PROGRESS_FILE
        if not f.exists():
            return None
        progress = _read_json(f, "checkpoint")
        state = self.checkpoint_dir / str(progress.get("state", ""))
        if not isinstance(progress, dict) or not state.is_dir():
            raise RunError(f"{f} names no checkpoint; pass --overwrite to start over")
        return {**progress, "state_dir": state}

    # ------------------------------------------------------------------ while training

    def save_checkpoint(self, engine, progress: dict) -> None:
        """Save the engine's state for the epoch ``progress["epoch"]``, then point to it (all processes call this)."""
        name = f"epoch-{progress['epoch']}"
        target = self.checkpoint_dir / name
        if self.is_main:
            shutil.rmtree(target, ignore_errors=True)  # a half-written one from a killed attempt
            target.mkdir(parents=True)
        engine.wait()
        engine.save_state(target)
        engine.wait()
        if self.is_main:
            atomic_write_json(self.checkpoint_dir / PROGRESS_FILE, {**progress, "state": name})
            for old in self.checkpoint_dir.glob("epoch-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        engine.wait()

    def save_best(self, model: nn.Module, method: str, extra: dict) -> None:
        """Keep ``model`` as the run's best (main process only)."""
        if not self.is_main:
            return
        if method == "mask":
            from .maskfile import save_masks

            save_masks(model, self.path / MASK_FILE, extra=extra)
        elif method == "lora":
            from .lora import save_lora

            save_lora(model, self.path / LORA_FILE)
        else:
            save_weights(model, self.path / WEIGHTS_FILE)

    def finish(self, metrics: dict) -> None:
        """Write ``metrics.json`` (the run is complete from now on) and drop the checkpoint."""
        if self.is_main:
            atomic_write_json(self.path / METRICS_FILE, metrics)
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def attach_log(self) -> logging.Handler | None:
        """Append maskfit's log to ``train.log`` (main process only); detach with :meth:`detach_log`."""
        if not self.is_main:
            return None
        handler = logging.FileHandler(self.path / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("maskfit")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        return handler

    @staticmethod
    def detach_log(handler: logging.Handler | None) -> None:
        if handler is not None:
            logging.getLogger("maskfit").removeHandler(handler)
            handler.close()


def _comparable(info: dict, defaults: dict) -> dict:
    keep = dict(info)
    args = {**defaults, **(info.get("args") or {})}
    keep["args"] = {k: v for k, v in args.items() if k not in RESUME_FREE}
    keep.pop("precision", None)  # recorded as resolved on the machine; the asked-for value is in args
    keep.pop("engine", None)
    return keep


# --------------------------------------------------------------------------- finished runs


@dataclass
class Run:
    """A finished (or best-so-far) training run on disk."""

    path: Path
    info: dict

    @property
    def method(self) -> str:
        return self.info["method"]

    @property
    def metrics(self) -> dict:
        p = self.path / METRICS_FILE
        return _read_json(p, "metrics") if p.exists() else {}

    @property
    def task_type(self) -> str:
        return self.info["task_type"]

    @property
    def labels(self) -> list[str] | None:
        return self.info.get("labels")

    @property
    def max_length(self) -> int:
        return int(self.info.get("max_length") or 128)

    @property
    def pooling(self) -> str:
        return (self.info.get("args") or {}).get("pooling", "cls")

    @cached_property
    def task(self):
        from .tasks import get_task

        t = dict(self.info["task"])
        name = t.pop("name")
        return get_task(name, **{k: v for k, v in t.items() if v is not None})

    @cached_property
    def tokenizer(self):
        from .heads import load_tokenizer

        return load_tokenizer(self.info["model"])

    def model(self, device=None, model_config=None) -> nn.Module:
        """The best epoch's model, ready for inference (eval mode), on ``device`` (default: CPU).

        ``model_config`` rebuilds a run that trained a random model of that config (tests):
        the base is drawn again from the run's seed, as training drew it.
        """
        import copy

        from .heads import build_model

        weights = self.path / BEST_FILE[self.method]
        if not weights.exists():
            raise RunError(f"{self.path} has no {weights.name} yet (no epoch finished)")
        if self.method == "mask" and model_config is None:
            from .maskfile import load_task_model

            return load_task_model(weights, base_model=self.info["model"], device=device)
        seed = (self.info.get("args") or {}).get("seed", 0) if model_config is not None else 0
        model = build_model(self.info["model"], self.task_type, self.labels, seed=seed, pooling=self.pooling,
                            config=copy.deepcopy(model_config) if model_config is not None else None)
        if self.method == "mask":
            from .maskfile import load_masks

            return load_masks(model, weights).to(device or "cpu")
        if self.method == "lora":
            from .lora import load_lora

            return load_lora(model, weights).to(device or "cpu").eval()
        from safetensors.torch import load_model

        from .masking.apply import unwrap

        load_model(unwrap(model), str(weights))
        return model.to(device or "cpu").eval()


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    f = path / RUN_FILE
    if not f.is_file():
        raise RunError(f"{path} is not a maskfit run directory (no {RUN_FILE})")
    info = _read_json(f, "run")
    if not isinstance(info, dict) or not all(k in info for k in ("task", "model", "method", "task_type")):
        raise RunError(f"{f} is corrupt: not a maskfit run description")
    return Run(path, info)
