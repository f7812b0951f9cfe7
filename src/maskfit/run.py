"""A run directory: what ``maskfit train`` writes and everything else reads.

``run.json`` (how to rebuild the task and model), ``metrics.json``, ``train.log``, and the
best epoch's ``task.masks`` (method mask) or ``model.safetensors`` (method finetune).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .errors import RunError

RUN_FILE = "run.json"


def atomic_write_json(path: Path, data) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: Path) -> None:
    """All of a finetuned model's tensors, as safetensors, written atomically."""
    from safetensors.torch import save_model

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def versions() -> dict:
    import transformers

    from . import __version__

    return {"maskfit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


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
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else {}

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

    def model(self) -> nn.Module:
        """The best epoch's model, ready for inference (eval mode)."""
        if self.method == "mask":
            from .maskfile import load_task_model

            path = self.path / "task.masks"
            if not path.exists():
                raise RunError(f"{self.path} has no task.masks yet (no epoch finished)")
            return load_task_model(path, base_model=self.info["model"])
        from safetensors.torch import load_model

        from .heads import build_model

        path = self.path / "model.safetensors"
        if not path.exists():
            raise RunError(f"{self.path} has no model.safetensors yet (no epoch finished)")
        labels = self.info["labels"] or ["choice"]
        model = build_model(self.info["model"], self.info["task_type"], labels,
                            pooling=self.info["args"].get("pooling", "cls"))
        load_model(model, str(path))
        return model.eval()


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    f = path / RUN_FILE
    if not f.is_file():
        raise RunError(f"{path} is not a maskfit run directory (no {RUN_FILE})")
    try:
        return Run(path, json.loads(f.read_text()))
    except json.JSONDecodeError as e:
        raise RunError(f"{f} is corrupt: {e}") from None
