"""Where and how maskfit computes: device, precision and CPU threads, decided in one place.

Every command takes ``--device auto|cpu|cuda|cuda:N|mps`` and ``--precision
auto|bf16|fp16|fp32``; the Python API takes the same strings. ``auto`` means:

* device: CUDA when torch sees a GPU, else Apple's MPS, else the CPU;
* precision: on a CUDA GPU bf16 autocast where the GPU supports it (Ampere and newer),
  fp16 autocast with a gradient scaler elsewhere; on the CPU bf16 only where the CPU
  has native bf16 (AMX or AVX512-BF16: without them oneDNN emulates bf16 and autocast
  is several times *slower* than fp32, 7x measured); fp32 on MPS. Mask *training* stays
  fp32 under ``auto`` on every device, GPUs included: the README's MRPC figure is an fp32
  mean over seeds; on an AMX CPU bf16 mask training gave 79.9 ± 1.8 against fp32's
  79.7 ± 2.6 over 3 MRPC seeds (``readme_mrpc_lr7e-5-*intel``), no measurable loss but too
  few seeds to rule out a point, and not yet measured on a GPU. ``--precision bf16`` asks
  for it (1.7x faster per epoch there).

Precision is autocast only: parameters, and the mask scores in particular, stay fp32
(a step of size lr on a score near τ = 5e-3 would vanish in bf16 or fp16).
"""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from .errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` → a ``torch.device`` that exists here.

    An unknown or absent device is a one-line :class:`ConfigError`, never a CUDA traceback.
    """
    spec = str(spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}; use {DEVICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"--device {spec}: torch sees no CUDA GPU here (torch {torch.__version__}, {built})")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here "
                              f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not mps_available():
            raise ConfigError(f"--device {spec}: MPS is not available here")
        return torch.device("mps")
    raise ConfigError(f"unsupported device {spec!r}; use {DEVICES}")


def cpu_has_native_bf16() -> bool:
    """True when this CPU does bf16 matmuls natively (AMX or AVX512-BF16)."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(p is not None for p in probes):
        return any(p() for p in probes if p is not None)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16 (what a benchmark's timings and
    fp32 numerics depend on); ``platform.processor()`` only says ``x86_64``."""
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"


def hardware(device: torch.device) -> str:
    """What ``device`` is, in words: the GPU's name, or :func:`cpu_model`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


def resolve_precision(precision: str, device: torch.device, mask_training: bool = False) -> str:
    """``auto|bf16|fp16|fp32`` on ``device`` → ``bf16``, ``fp16`` or ``fp32`` (see the module doc).

    ``mask_training``: ``auto`` keeps mask training in fp32 on every device, even where
    bf16 is native (see the module doc for why).
    """
    precision = str(precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        if mask_training:
            return "fp32"
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 autocast needs a GPU; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; use fp16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def set_threads(threads: int | None) -> None:
    """torch's intra-op CPU threads (None: torch's choice).

    On a shared machine one thread per process avoids OpenMP stalls (a parallel region
    waits for its slowest, possibly descheduled, thread).
    """
    if threads is None:
        return
    if int(threads) < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))


def distributed_env() -> bool:
    """True inside a multi-process launch (torchrun, accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
