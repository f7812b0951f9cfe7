"""The engine: one training and inference loop for any device and any number of processes.

:class:`Engine` is a thin layer over ``accelerate.Accelerator``, which owns the device,
mixed precision (autocast, fp16 gradient scaling), data parallelism (DDP under
``torchrun`` / ``accelerate launch``), checkpoint state (``save_state`` /
``load_state``: optimizer, scheduler, scaler, per-process RNG), the main-process
guards and the experiment trackers. What is ours:

* batches come from :mod:`maskfit.data.loader`: length-grouped global batches cut
  *exactly* into per-process shards, so N processes × batch B step on the same examples
  as one process × batch N·B, with nothing repeated;
* the loss of a shard is its *summed* cross-entropy divided by the item count of the
  whole global batch (all processes, all accumulation micro-steps), times the number of
  processes (DDP averages gradients): the gradient is the global batch's mean gradient
  for every task type, tagging included, whatever the split;
* predictions are gathered with their example indices, so a dev metric counts every
  example exactly once, in input order, on every process;
* checkpoints keep only the trainable tensors (the mask scores of a masked model), not
  the frozen base.

:func:`predict_outputs` is the inference loop on one process; the engine, serving,
ensembles and the analyses all use it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.loader import batches
from .errors import ConfigError, RunError
from .masking.apply import unwrap
from .runtime import autocast, distributed_env, hardware, resolve_device, resolve_precision
from .tasktypes import TaskType

TRACKERS = ("tensorboard", "wandb")
TRAINABLE_FILE = "model.safetensors"
logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint INFO lines are noise here


def _accelerator_state_reset() -> None:
    """accelerate keeps one device and precision per process; a single process that trains several
    models (tests, analyses, sweeps) may change them between runs. Never reset inside a launch."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _check_trackers(log_with: Sequence[str] | None) -> list[str]:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    out = []
    for name in log_with or ():
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[name]():
            raise ConfigError(f"--log-with {name} needs the {name} package: pip install 'maskfit[tracking]'"
                              if name == "tensorboard" else f"--log-with {name} needs the {name} package: pip install {name}")
        out.append(name)
    return out


@torch.no_grad()
def predict_outputs(model: nn.Module, kind: TaskType, features: Sequence[dict], pad_token_id: int, labels,
                    batch_size: int = 64, device: torch.device | None = None, precision: str = "fp32",
                    order: str = "length", num_shards: int = 1, shard: int = 0) -> list[tuple[int, np.ndarray]]:
    """``(feature index, output)`` for this shard's share of ``features`` (see :mod:`maskfit.tasktypes`)."""
    model.eval()
    device = device or next(model.parameters()).device
    out = []
    for piece, batch in batches(features, pad_token_id, batch_size, order=order, num_shards=num_shards, shard=shard,
                                device=device, skip_stand_ins=True):
        with autocast(device, precision):
            logits = kind.logits(model, batch)
        out.extend(zip(piece.indices, kind.outputs(logits, batch, labels)))
    return out


RNG_FILE = "random_states_{rank}.pkl"


def _refuse(path: Path, why: str) -> RunError:
    return RunError(f"checkpoint file {path} {why}; nothing was loaded from it (pass --overwrite to start over)")


def _load_plain(path: Path):
    """A ``.bin`` / ``.pkl`` / ``.pt`` checkpoint file, read as accelerate reads it (``torch.load(weights_only=True)``
    with its numpy allow-list): tensors, numbers, strings, containers, never code."""
    import pickle
    import re
    import warnings
    import zipfile

    from accelerate.utils.other import load

    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols: the refusal says enough
            warnings.simplefilter("ignore")
            return load(path, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported (?:global: GLOBAL [\w.]+|operand \d+|class [\w.]+)", str(e))
        raise _refuse(path, "holds more than tensors and plain data (a pickle that would run code or build "
                      f"objects: {(found.group(0) if found else 'refused by weights_only')[:120]})") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, AttributeError, TypeError,
            IndexError, KeyError, MemoryError, UnicodeDecodeError) as e:
        raise _refuse(path, f"is unreadable ({type(e).__name__})") from None


def check_checkpoint(directory: str | os.PathLike, rank: int = 0) -> None:
    """Refuse, with one line, a checkpoint folder holding anything but tensors and plain data.

    ``torch.load`` unpickles, and a crafted pickle runs code when it is loaded; accelerate
    reads with ``weights_only=True`` but silently skips a random-state file it cannot use.
    So, before accelerate sees the folder: every ``.safetensors`` file must parse, every
    ``.json`` file must be JSON, every other file must load with ``weights_only=True``, no
    subfolder may exist, and this process's random-state file must be there and hold the
    states accelerate restores.
    """
    import json
    import random

    from safetensors import safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise RunError(f"checkpoint {directory} is missing; pass --overwrite to start over")
    for path in sorted(directory.iterdir()):
        if path.is_dir() or not path.is_file():
            raise _refuse(path, "is not a regular file")
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), "pt") as f:
                    f.keys()
            except Exception as e:  # noqa: BLE001 - the Rust parser's errors have no common type
                raise _refuse(path, f"is not a safetensors file ({type(e).__name__})") from None
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (OSError, ValueError, RecursionError) as e:
                raise _refuse(path, f"is not JSON ({type(e).__name__})") from None
        else:
            _load_plain(path)
    rng = directory / RNG_FILE.format(rank=rank)
    if not rng.is_file():
        raise RunError(f"checkpoint {directory} has no random state for process {rank} ({rng.name}): it was written "
                       "by fewer processes. Resume with the same number of processes, or pass --overwrite")
    states = _load_plain(rng)
    try:  # what accelerate restores, tried on throwaway generators first (it would skip a bad one silently)
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
        cuda = states.get("torch_cuda_manual_seed")
        if cuda is not None and not (isinstance(cuda, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in cuda)):
            raise TypeError("torch_cuda_manual_seed")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise _refuse(rng, f"does not hold the random states of a run ({type(e).__name__}: {str(e)[:80]})") from None


class Engine:
    """Device, precision, processes, checkpoints and trackers for one training or inference job.

    Args:
        device: ``auto|cpu|cuda|cuda:N|mps`` (inside a multi-process launch each process
            takes its local GPU, or the CPU with ``cpu``).
        precision: ``auto|bf16|fp16|fp32`` (see :mod:`maskfit.runtime`).
        grad_accum: micro-steps per optimizer step.
        max_grad_norm: clip the gradient norm of the trainable tensors (``None``: off, as
            in the paper).
        log_with: trackers (``tensorboard``, ``wandb``) that get every epoch's numbers.
        project_dir: where trackers write (the run directory).
    """

    def __init__(self, device: str = "auto", precision: str = "auto", *, grad_accum: int = 1,
                 max_grad_norm: float | None = None, log_with: Sequence[str] | None = None,
                 project_dir: str | os.PathLike | None = None, mask_training: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if int(grad_accum) < 1:
            raise ConfigError(f"--grad-accum must be >= 1, got {grad_accum}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ConfigError(f"--max-grad-norm must be > 0, got {max_grad_norm}")
        trackers = _check_trackers(log_with)
        if trackers and project_dir is None:
            raise ConfigError("--log-with needs a run directory (--out)")
        distributed = distributed_env()
        spec = str(device or "auto").lower()
        if distributed and spec.startswith("cuda:"):
            raise ConfigError(f"--device {spec} names one GPU, but this is a multi-process launch: each process "
                              "takes its local GPU (choose them with CUDA_VISIBLE_DEVICES)")
        wanted = resolve_device("cuda" if distributed and spec == "cuda" else spec)
        if not distributed:
            _accelerator_state_reset()
            if wanted.type == "cuda":
                torch.cuda.set_device(wanted)
        self.precision = resolve_precision(precision, wanted, mask_training)
        self.accelerator = Accelerator(
            cpu=wanted.type == "cpu", mixed_precision={"fp32": "no"}.get(self.precision, self.precision),
            log_with=trackers or None, project_dir=str(project_dir) if project_dir is not None else None,
            step_scheduler_with_optimizer=False,  # we step it ourselves, once per optimizer step
            # masks never change buffers; broadcasting them at each forward is wasted work
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
        self.device = self.accelerator.device
        self.grad_accum = int(grad_accum)
        self.max_grad_norm = max_grad_norm
        self.trackers = trackers
        self._hooks = [self.accelerator.register_save_state_pre_hook(self._save_trainable),
                       self.accelerator.register_load_state_pre_hook(self._load_trainable)]

    # ------------------------------------------------------------------ processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def broadcast(self, obj):
        """The main process's ``obj`` on every process (decisions are taken once, for all ranks)."""
        if self.num_processes == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def describe(self) -> dict:
        device = self.device if self.device.type != "cpu" else torch.device("cpu")
        return {"device": str(device), "hardware": hardware(device), "precision": self.precision,
                "processes": self.num_processes, "grad_accum": self.grad_accum, "max_grad_norm": self.max_grad_norm}

    # ------------------------------------------------------------------ training

    def prepare(self, model: nn.Module, optimizer=None, scheduler=None):
        """Move to the device and wrap for data parallelism (accelerate's ``prepare``)."""
        objs = [o for o in (model, optimizer, scheduler) if o is not None]
        out = self.accelerator.prepare(*objs)
        return out if len(objs) > 1 else (out,)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def train_epoch(self, model: nn.Module, optimizer, scheduler, kind: TaskType, features: Sequence[dict],
                    pad_token_id: int, *, batch_size: int, seed: int, progress: bool = False, desc: str = "",
                    on_step: Callable[[int, float], None] | None = None, max_steps: int | None = None) -> dict:
        """One pass over ``features``; returns ``{"loss", "examples", "time_s", "grad_norm"}`` over all processes.

        ``loss`` is the mean loss per item (example, or labelled token for tagging);
        ``grad_norm`` the mean norm of the trainable tensors' gradient per optimizer step,
        before clipping. ``on_step(step, loss)`` runs after every optimizer step; ``max_steps``
        ends the pass early.
        """
        from tqdm.auto import tqdm

        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        world = self.num_processes
        items = [kind.items(f) for f in features]
        stream = batches(features, pad_token_id, batch_size, order="shuffle", seed=seed, num_shards=world,
                         shard=self.rank, accum=self.grad_accum, items=items, device=self.device)
        bar = tqdm(stream, desc=desc, disable=not (progress and self.is_main), leave=False, unit="batch",
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, n_items, norms, steps = 0, 0, [], 0
        for piece, batch in bar:
            if max_steps is not None and piece.step >= max_steps:
                break
            sync = piece.last or world == 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                with self.accelerator.autocast():
                    logits = kind.logits(model, batch)
                summed = kind.loss_sum(logits, batch["labels"])
                self.accelerator.backward(summed * (piece.weight * world / max(piece.step_items, 1)))
            if piece.weight:
                loss_sum += summed.detach().double()
                seen += len(piece.indices)
                n_items += sum(items[i] for i in piece.indices)
            if piece.last:
                norm = self._step(params, optimizer, scheduler)
                if norm is not None:
                    norms.append(norm.detach().float())
                steps += 1
                if on_step is not None:
                    on_step(steps, float(summed.detach()) / max(1, sum(items[i] for i in piece.indices)))
                if progress and self.is_main and seen and steps % 10 == 1:  # reading the loss syncs a GPU
                    bar.set_postfix(loss=f"{float(loss_sum) / max(n_items, 1):.4f}",
                                    ex_s=f"{seen * world / (time.perf_counter() - t0):.1f}")
        totals = torch.stack([loss_sum, torch.tensor(float(n_items), dtype=torch.float64, device=self.device),
                              torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        totals = self.accelerator.reduce(totals, "sum") if world > 1 else totals
        finite = [n for n in (torch.stack(norms).tolist() if norms else []) if math.isfinite(n)]
        return {"loss": float(totals[0] / max(float(totals[1]), 1.0)), "examples": int(totals[2]),
                "time_s": time.perf_counter() - t0, "grad_norm": float(np.mean(finite)) if finite else None}

    def _step(self, params, optimizer, scheduler) -> torch.Tensor | None:
        """Clip (when asked), step the optimizer and, unless fp16 skipped the step, the scheduler.

        Returns the gradient norm before clipping, as a tensor (no device sync here).
        """
        if self.accelerator.scaler is not None:
            self.accelerator.unscale_gradients(optimizer)  # once: clipping and the norm need true gradients
        grads = [p.grad for p in params if p.grad is not None]
        norm = None
        if grads:
            if self.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            else:
                norm = torch.nn.utils.get_total_norm(grads)
        optimizer.step()
        if scheduler is not None and not optimizer.step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ inference

    def predict(self, model: nn.Module, kind: TaskType, features: Sequence[dict], pad_token_id: int, labels, *,
                batch_size: int = 64) -> list[np.ndarray]:
        """Every feature's output, in input order, on every process (each computes its share)."""
        model = self.unwrap(model)  # inference needs no gradient sync: skip the DDP wrapper
        pairs = predict_outputs(model, kind, features, pad_token_id, labels, batch_size, self.device, self.precision,
                                num_shards=self.num_processes, shard=self.rank)
        if self.num_processes > 1:
            # Our shards never repeat an example, so gathering objects loses and doubles nothing.
            pairs = self.accelerator.gather_for_metrics(pairs, use_gather_object=True)
        out: list = [None] * len(features)
        for i, o in pairs:
            out[i] = o
        missing = [i for i, o in enumerate(out) if o is None]
        if missing:  # pragma: no cover - would be a bug in the shard plan
            raise RuntimeError(f"{len(missing)} examples got no prediction")
        return out

    # ------------------------------------------------------------------ checkpoints

    @staticmethod
    def _save_trainable(models, weights, output_dir) -> None:
        """Checkpoint only what trains: the scores of a masked model, every weight of a finetuned one."""
        for i, m in enumerate(models):
            weights[i] = {n: p.detach().contiguous() for n, p in unwrap(m).named_parameters() if p.requires_grad}

    @staticmethod
    def _load_trainable(models, input_dir) -> None:
        from safetensors.torch import load_file

        path = Path(input_dir) / TRAINABLE_FILE
        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any unreadable file is a broken checkpoint
            raise RunError(f"checkpoint {path} is unreadable ({type(e).__name__}); pass --overwrite to start over") from None
        for m in models:
            params = {n: p for n, p in unwrap(m).named_parameters() if p.requires_grad}
            if set(params) != set(state):
                raise RunError(f"checkpoint {path} holds other tensors than this model trains; "
                               "pass --overwrite to start over")
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(state[n])
        models.clear()  # loaded here; accelerate must not load the (partial) state dict again

    def save_state(self, directory: str | os.PathLike) -> None:
        """Checkpoint the prepared model, optimizer, scheduler, scaler and every process's RNG."""
        self.accelerator.save_state(str(directory), safe_serialization=True)

    def load_state(self, directory: str | os.PathLike) -> None:
        """Restore :meth:`save_state`'s checkpoint. Every file is checked first (:func:`check_checkpoint`):
        only tensors and plain data are ever read, and nothing accelerate would skip silently is missing."""
        import pickle

        check_checkpoint(directory, self.rank)
        try:
            self.accelerator.load_state(str(directory))
        except RunError:
            raise
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunError(f"checkpoint {directory} cannot be loaded safely ({first[:160]}); "
                           "pass --overwrite to start over") from None

    # ------------------------------------------------------------------ trackers

    def init_trackers(self, name: str, config: dict) -> None:
        if self.trackers:
            flat = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers(name, config=flat)

    def log(self, values: dict, step: int) -> None:
        if self.trackers:
            self.accelerator.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def end(self) -> None:
        if self.trackers:
            self.accelerator.end_training()
        for h in self._hooks:
            h.remove()
