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
from its last complete epoch; the temp files a kill leaves behind are removed by the next
attempt. In a multi-process run only the main process writes and decides (start, resume
or refuse), and every process hears its decision.

A run directory is used by one ``maskfit train`` at a time: the main process holds an
exclusive lock on ``.maskfit.lock`` (``filelock``; the OS drops it when the process dies,
so a killed run never leaves a stale lock). ``--out`` must be empty, or hold a run with
the same ``run.json`` (resumed from its checkpoint); anything else is refused unless
``--overwrite``, which removes only the files named above. ``run.json`` records a hash
of the task's data files, and a resume refuses data that changed.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .errors import MaskfitError, RunError

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
LOCK_FILE = ".maskfit.lock"
OWN_FILES = (CHECKPOINT_DIR, METRICS_FILE, *BEST_FILE.values(), RUN_FILE, LOG_FILE)
"""What ``maskfit train`` writes into a run directory (and ``--overwrite`` removes)."""
_TEMP = re.compile(r"\.(%s)\.[A-Za-z0-9_]+\.tmp" % "|".join(map(re.escape, OWN_FILES + (PROGRESS_FILE,))))
"""The temp files atomic_write leaves when killed mid-write, ``.<name>.<random>.tmp``, for our files only:
a user's own ``.notes.tmp`` is not ours to delete."""
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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RunError(f"{path} is corrupt ({type(e).__name__}); pass --overwrite to start over") from None


def _count(x, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def check_run_info(info, path) -> dict:
    """``run.json``'s content if it describes a run that can be rebuilt; else a one-line :class:`RunError`."""
    from .tasks import get_task
    from .tasktypes import TASK_TYPES
    from .train import METHODS

    def bad(what: str):
        raise RunError(f"{path} is corrupt: {what}")

    if not isinstance(info, dict):
        bad(f"a JSON {type(info).__name__}, not an object")
    missing = [k for k in ("task", "model", "method", "task_type") if k not in info]
    if missing:
        bad(f"not a maskfit run description (no {', '.join(missing)})")
    task = info["task"]
    known = set(inspect.signature(get_task).parameters)
    if not isinstance(task, dict) or not isinstance(task.get("name"), str) or not task["name"]:
        bad("'task' must be an object with a 'name'")
    if not set(task) <= known or not all(v is None or isinstance(v, str) for v in task.values()):
        bad(f"'task' holds {', '.join(sorted(set(task) - known)) or 'a value that is not text'}")
    if not isinstance(info["model"], str) or not info["model"]:
        bad("'model' must be a model name")
    if info["method"] not in METHODS:
        bad(f"unknown method {info['method']!r}")
    if info["task_type"] not in TASK_TYPES:
        bad(f"unknown task type {info['task_type']!r}")
    labels = info.get("labels")
    if labels is not None and not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        bad("'labels' must be a list of label names")
    if info["task_type"] != "choice" and labels is None:
        bad(f"a {info['task_type']} run must list its labels")
    if "max_length" in info and not _count(info["max_length"], 2):
        bad(f"max_length must be an integer >= 2, got {info['max_length']!r}")
    if not isinstance(info.get("args", {}), dict):
        bad("'args' must be an object")
    if info.get("inputs") not in (None, "single", "pair"):
        bad(f"'inputs' must be single or pair, got {info['inputs']!r}")
    return info


def read_run_info(path: str | os.PathLike) -> dict:
    """The checked ``run.json`` of run directory ``path``."""
    path = Path(path)
    f = path / RUN_FILE
    if not f.is_file():
        raise RunError(f"{path} is not a maskfit run directory (no {RUN_FILE})")
    return check_run_info(_read_json(f), f)


def _progress_ok(p) -> bool:
    return (isinstance(p, dict) and _count(p.get("epoch"), 0) and isinstance(p.get("history"), list)
            and len(p["history"]) == p["epoch"] + 1 and all(isinstance(r, dict) for r in p["history"])
            and isinstance(p.get("best"), (int, float)) and not isinstance(p["best"], bool)
            and _count(p.get("best_epoch"), -1) and p["best_epoch"] <= p["epoch"]
            and isinstance(p.get("state"), str) and re.fullmatch(r"epoch-\d+", p["state"]) is not None)


def _plain(x):
    """``x`` as JSON would give it back (tuples become lists): what ``run.json`` holds."""
    return json.loads(json.dumps(x, default=str))


def _show(v) -> str:
    return "unset" if v is None else ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _splits(info: dict) -> dict[str, tuple[str, str | None]]:
    """split -> (file, hash) of ``run.json``'s data fingerprint ({} when it has none)."""
    data = info.get("data")
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, dict):
        return {}
    return {k: (str(v.get("file", "?")), v.get("blake2b")) for k, v in splits.items() if isinstance(v, dict)}


_DERIVED = {"lr", "labels", "metric", "task_type", "inputs", "max_length"}
"""run.json keys that follow from the task and the arguments."""


def run_differences(old: dict, new: dict, compare: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(what differs in the data, what differs otherwise) between a saved ``run.json`` and the one a run
    would write now (:func:`maskfit.train.run_info`), as messages such as ``--lr was 0.001, now 0.002``.

    Arguments a resume may change (:data:`RESUME_FREE`) are not compared, except those named in
    ``compare``: a *finished* run trained with another ``epochs`` or ``patience`` is another result.
    """
    from .train import TrainArgs

    return _differences(old, new, TrainArgs.defaults(), compare)


def _differences(old: dict, new: dict, defaults: dict, compare: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(what differs in the data, what differs otherwise) between a saved run and this one, for messages."""
    a, b = _comparable(old, defaults, compare), _comparable(new, defaults, compare)
    for key in ("data", "inputs"):  # a run written before these were recorded has neither: nothing to compare
        if key not in old:
            b.pop(key, None)
    data = []
    if "data" in a and "data" in b:
        was, now = _splits(old), _splits(new)
        for split in sorted(set(was) | set(now)):
            if (was.get(split) or (None, None))[1] != (now.get(split) or (None, None))[1]:
                file = (now.get(split) or was.get(split))[0]
                data.append(f"the {split} split ({file}) " + ("is new" if split not in was else
                                                              "is gone" if split not in now else "has changed"))
    a.pop("data", None), b.pop("data", None)
    other = []
    for key in ("args", "mask_config"):
        x, y = a.pop(key, None) or {}, b.pop(key, None) or {}
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k):
                other.append(f"--{k.replace('_', '-')} was {_show(x.get(k))}, now {_show(y.get(k))}")
    top = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if other or set(top) - _DERIVED:  # say what the user changed, not what followed from it
        top = [k for k in top if k not in _DERIVED]
    other += [f"{k} was {_show(a.get(k))}, now {_show(b.get(k))}" for k in top]
    return data, other



class RunDir:
    """Where one training run lives while it trains (see the module doc).

    ``broadcast(obj)`` hands the main process's object to every process (the engine's);
    without it, a non-main process checks the folder itself and writes nothing.
    """

    def __init__(self, path: str | os.PathLike, is_main: bool = True, broadcast: Callable | None = None):
        self.path = Path(path)
        self.is_main = is_main
        self._broadcast = broadcast
        self._lock = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    # ------------------------------------------------------------------ start or resume

    def prepare(self, info: dict, overwrite: bool, defaults: dict) -> dict | None:
        """Create the run, or find its checkpoint: returns the saved progress to resume from, or None.

        The main process locks the folder, removes leftover temp files and decides; every
        process gets the same answer (or the same one-line :class:`RunError`). ``defaults``
        are the training arguments' defaults: a run written before an argument existed had
        its default.
        """
        if self.is_main or self._broadcast is None:
            try:
                outcome = ("resume", self._decide(info, overwrite, defaults, write=self.is_main))
            except MaskfitError as e:
                outcome = ("error", str(e))
        else:
            outcome = None
        if self._broadcast is not None:
            outcome = self._broadcast(outcome)
        if outcome[0] == "error":
            self.close()
            raise RunError(outcome[1])
        return outcome[1]

    def _decide(self, info: dict, overwrite: bool, defaults: dict, write: bool) -> dict | None:
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"--out {self.path} is a file, not a folder: give a folder for the run")
        if write:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunError(f"cannot create --out {self.path}: {e.strerror or e}") from None
            self._acquire()
            self._remove_temp_files()
        run_file = self.path / RUN_FILE
        if overwrite:
            if write:
                for name in OWN_FILES:
                    p = self.path / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        elif run_file.exists():
            old = _read_json(run_file)
            if not isinstance(old, dict) or not isinstance(old.get("args"), dict):
                raise RunError(f"{run_file} is corrupt; pass --overwrite to start over")
            data, other = _differences(old, info, defaults)
            if other:  # another task or other arguments: its data differs too, but that is not the news
                shown = "; ".join(other[:4]) + (f"; and {len(other) - 4} more" if len(other) > 4 else "")
                raise RunError(f"{self.path} holds a different run ({shown}); use another --out, or pass "
                               "--overwrite to start over")
            progress = self.progress()
            if progress is not None:
                if data:
                    raise RunError(f"the data of the run in {self.path} changed since it started: "
                                   f"{'; '.join(data)}. Resuming would mix epochs trained and scored on different "
                                   "data: restore the data, or pass --overwrite to start over")
                if write:
                    atomic_write_json(run_file, info)  # epochs / patience may have been raised
                return progress
            if (self.path / METRICS_FILE).exists():
                raise RunError(f"{self.path} is already complete; pass --overwrite to train again")
            # the same run, stopped before its first checkpoint (killed, or its data refused): start it again
        else:
            found = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE and not _TEMP.fullmatch(p.name)) \
                if self.path.is_dir() else []
            if found:
                shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
                raise RunError(f"--out {self.path} is not empty and holds no maskfit run (no {RUN_FILE}; it has "
                               f"{shown}); use an empty or new folder, or pass --overwrite to write the run there")
        if write:
            atomic_write_json(run_file, info)
        return None

    def _acquire(self) -> None:
        """Lock the run directory for this process (released by :meth:`close`, or by the OS when it dies)."""
        from filelock import FileLock, Timeout

        if self._lock is not None:
            return
        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunError(f"another maskfit train is using {self.path} (it holds {LOCK_FILE}); wait for it to "
                           "finish or use another --out") from None
        except OSError as e:
            raise RunError(f"cannot lock {self.path / LOCK_FILE}: {e.strerror or e}") from None
        self._lock = lock

    def close(self) -> None:
        """Release the run directory's lock (a no-op when this process does not hold it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _remove_temp_files(self) -> None:
        """Temp files of writes a kill interrupted (never renamed into place, so never part of the run)."""
        for folder in (self.path, self.checkpoint_dir):
            if folder.is_dir():
                for p in folder.iterdir():
                    if _TEMP.fullmatch(p.name) and p.is_file():
                        p.unlink(missing_ok=True)

    def progress(self) -> dict | None:
        """The bookkeeping of the last complete checkpoint, with ``state_dir``; None when there is none."""
        f = self.checkpoint_dir / PROGRESS_FILE
        if not f.exists():
            return None
        progress = _read_json(f)
        if not _progress_ok(progress) or not (self.checkpoint_dir / progress["state"]).is_dir():
            raise RunError(f"{f} is corrupt or names no checkpoint; pass --overwrite to start over")
        return {**progress, "state_dir": self.checkpoint_dir / progress["state"]}

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


def _comparable(info: dict, defaults: dict, compare: tuple[str, ...] = ()) -> dict:
    keep = _plain(info)
    args = {**_plain(defaults), **(keep.get("args") or {})}
    keep["args"] = {k: v for k, v in args.items() if k not in RESUME_FREE or k in compare}
    keep.pop("precision", None)  # recorded as resolved on the machine; the asked-for value is in args
    keep.pop("engine", None)
    if "data" in keep:  # the same bytes, wherever the files are now
        keep["data"] = {split: digest for split, (_, digest) in _splits(info).items()}
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
        return _read_json(p) if p.exists() else {}

    @property
    def task_type(self) -> str:
        return self.info["task_type"]

    @property
    def labels(self) -> list[str] | None:
        return self.info.get("labels")

    @property
    def max_length(self) -> int:
        return self.info.get("max_length") or 128

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
    return Run(Path(path), read_run_info(path))
