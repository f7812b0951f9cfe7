"""The per-task file: packed 1-bit masks + the random head + JSON metadata.

Layout (one safetensors file, written atomically):

* ``mask/<layer>``: uint8, the layer's bool mask flattened row-major and coded by the
  layer's codec (metadata ``codecs``; :mod:`maskfit.maskcodec`: ANS below 1 bit per weight,
  or packed 8 per byte, least significant bit first, or nothing for a constant layer).
  Version 1 files always packed;
* ``head/<param>``: the randomly initialised, never trained classifier tensors;
* metadata ``maskfit``: JSON with the format version, base model name and fingerprint,
  task type, labels, ``MaskConfig``, layer shapes and sparsity, the layer codecs and a
  blake2b ``checksum`` of every tensor (checked before anything is decoded: a flipped or
  truncated file is refused, never decoded into another mask).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import MaskfileError
from .masking import DEFAULT, MaskConfig, active_layers, mask_model, mask_stats, pack_bits, unpack_bits, unwrap

FORMAT = "maskfit.masks"
VERSION = 2
"""Written by :func:`save_masks`: entropy-coded layers (:mod:`maskfit.maskcodec`) and a payload
checksum. Version 1 (1 bit per weight, no checksum) is still read; ``maskfit convert`` rewrites it."""
READABLE = (1, 2)
REQUIRED = ("base_model", "fingerprint", "task_type", "mask_config", "layers")
"""Metadata keys every mask file must have."""


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained tensors a mask file belongs to: embeddings and encoder blocks.

    Keyed by their name inside the base model, so the same base gives the same set
    whatever head sits on top. The pooler is left out because token-tagging heads drop it.
    """
    base = unwrap(model).base_model
    out = {}
    for name, t in list(base.named_parameters()) + list(base.named_buffers()):
        if name.startswith("pooler.") or name.endswith(".scores") or name.endswith("fixed_mask") or "._packed_" in name:
            continue
        if name.endswith("position_ids") or name.endswith("token_type_ids"):
            continue  # index buffers, not weights
        if ".lora_" in name:
            continue  # a LoRA adapter is not the base: its frozen weight sits under '<layer>.base_layer'
        out[name.replace(".base_layer.", ".")] = t
    return out


def fingerprint(model: nn.Module) -> str:
    """A short hash of the base model's pretrained tensors (names, shapes, dtypes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(base_state(model).items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _task_type_of(model: nn.Module) -> str:
    """The task type of a plain transformers head, from its class (``...ForTokenClassification``: tagging)."""
    from .tasktypes import TASK_TYPES

    name = type(unwrap(model)).__name__
    for t in TASK_TYPES.values():
        if name.endswith(t.auto_model.__name__.removeprefix("AutoModel")):
            return t.name
    raise MaskfileError(f"cannot tell the task type of a {name}: pass task_type=")


def save_masks(model: nn.Module, path: str | os.PathLike, labels=None, extra: dict | None = None, *,
               name: str | None = None, config: MaskConfig | None = None, base: str | None = None,
               task_type: str | None = None, pooling: str | None = None) -> Path:
    """Write mask ``name`` of ``model`` (default: the active one) and its random head to ``path``, atomically.

    A :class:`~maskfit.model.MaskfitModel` knows its base, task type, labels, pooling and
    mask config; for a plain transformers model they come from the keyword arguments,
    else from its config and head class.
    """
    from .heads import random_head_parameters

    path = Path(path)
    inner = unwrap(model)
    if name is not None:
        from .masking import set_active_mask

        set_active_mask(inner, name)
    layers = active_layers(inner)
    if not layers:
        raise MaskfileError("the model has no masked layers (or none active): call mask_model first")
    cfg = inner.config
    task_type = task_type or getattr(model, "task_type", None) or _task_type_of(inner)
    if labels is None and task_type != "choice":
        labels = getattr(model, "labels", None) or [cfg.id2label[i] for i in range(cfg.num_labels)]
    if config is None:
        config = getattr(model, "mask_config", None) or MaskConfig()
    stats = mask_stats(inner)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "base_model": base or getattr(model, "base", None) or getattr(cfg, "_name_or_path", ""),
        "fingerprint": fingerprint(inner),
        "model_type": cfg.model_type,
        "head_class": type(inner).__name__,
        "task_type": task_type,
        "pooling": pooling or getattr(model, "pooling", "cls"),
        "labels": list(labels) if labels is not None and task_type != "choice" else None,
        "mask_config": config.to_dict(),
        "layers": {n: list(m.weight.shape) for n, m in layers.items()},
        "sparsity": stats["sparsity"],
        "masked_weights": stats["total"],
        "extra": extra or {},
    }
    head = {n: p.detach().contiguous().cpu() for n, p in random_head_parameters(model).items()}
    return write_maskfile(path, meta, {n: m.mask() for n, m in layers.items()}, head)


def write_maskfile(path: Path, meta: dict, masks: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> Path:
    """Code ``masks`` (layer → bool) and write them with ``head`` and ``meta`` as a current-version file, atomically."""
    from . import maskcodec
    from .run import atomic_write

    tensors, codecs = {}, {}
    for n, m in masks.items():
        codecs[n], tensors[f"mask/{n}"] = maskcodec.encode(m)
    tensors.update({f"head/{n}": t for n, t in head.items()})
    meta = {**meta, "format": FORMAT, "version": VERSION, "codecs": codecs, "checksum": payload_checksum(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, writer=lambda tmp: save_file(tensors, tmp, metadata={"maskfit": json.dumps(meta)}))
    return path


def convert(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Rewrite a mask file (any readable version) in the current format; ``out`` defaults to ``path``."""
    mf = read_maskfile(path)
    meta = {k: v for k, v in mf.meta.items() if k not in ("codecs", "checksum")}
    return write_maskfile(Path(out or path), meta, mf.masks, mf.head)


def describe(path: str | os.PathLike) -> dict:
    """What a mask file holds (``maskfit inspect``): header facts, per-layer sparsity and bytes, bits per weight."""
    from safetensors import safe_open

    from .maskcodec import entropy_bits

    mf = read_maskfile(path)  # every check, the checksum included
    with safe_open(str(mf.path), "pt") as f:
        stored = {k[5:]: f.get_slice(k).get_shape() for k in f.keys() if k.startswith("mask/")}
    layers, total_bits, total_n, bound = [], 0, 0, 0.0
    for name, shape in mf.shapes.items():
        mask = mf.masks[name]
        n, nbytes = mask.numel(), int(stored[name][0]) if stored[name] else 0
        h = entropy_bits(mask)
        layers.append({"layer": name, "shape": list(shape), "sparsity": 1 - float(mask.sum()) / n,
                       "codec": (mf.meta.get("codecs") or {}).get(name, {}).get("codec", "packed"),
                       "bytes": nbytes, "bits_per_weight": 8 * nbytes / n, "entropy_bits_per_weight": h / n})
        total_bits, total_n, bound = total_bits + 8 * nbytes, total_n + n, bound + h
    meta = mf.meta
    return {
        "file": str(mf.path), "bytes": mf.path.stat().st_size, "format_version": meta["version"],
        "task": (meta.get("extra") or {}).get("task", {}).get("name") if isinstance((meta.get("extra") or {}).get("task"), dict) else None,
        "task_type": meta["task_type"], "labels": meta.get("labels"), "pooling": mf.pooling,
        "base_model": meta["base_model"], "fingerprint": meta["fingerprint"],
        "checksum": "verified" if meta["version"] >= 2 else "none (version 1: maskfit convert adds one)",
        "masked_weights": total_n, "sparsity": 1 - sum(float(m.sum()) for m in mf.masks.values()) / total_n,
        "mask_bytes": total_bits // 8, "bits_per_weight": total_bits / total_n,
        "entropy_bound_bytes": bound / 8, "bytes_over_bound": (total_bits / bound) if bound else None,
        "head_bytes": sum(t.numel() * t.element_size() for t in mf.head.values()),
        "layers": layers,
    }


def payload_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """blake2b of every tensor of a mask file (name, dtype, shape, bytes), in name order."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class MaskFile:
    """A mask file's content: metadata, packed masks (``masks`` unpacks them) and head tensors."""

    path: Path
    meta: dict
    packed: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]

    @property
    def labels(self):
        return self.meta.get("labels")

    @property
    def task_type(self) -> str:
        return self.meta["task_type"]

    @property
    def pooling(self) -> str:
        return self.meta.get("pooling", "cls")

    @property
    def config(self) -> MaskConfig:
        return MaskConfig.from_dict(self.meta["mask_config"])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(int(d) for d in s) for n, s in self.meta["layers"].items()}

    @cached_property
    def masks(self) -> dict[str, torch.Tensor]:
        """Layer name → bool mask."""
        return {n: unpack_bits(self.packed[n], shape) for n, shape in self.shapes.items()}


def _check_meta(meta, path: Path) -> dict:
    """The metadata of a readable mask file of this version, or a one-line :class:`MaskfileError`."""
    from .tasktypes import TASK_TYPES

    if not isinstance(meta, dict):
        raise MaskfileError(f"corrupt mask file {path}: its metadata is a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE:
        raise MaskfileError(f"{path}: unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
    missing = [k for k in REQUIRED + (("codecs", "checksum") if meta["version"] >= 2 else ()) if k not in meta]
    if missing:
        raise MaskfileError(f"corrupt mask file {path}: metadata lacks {', '.join(missing)}")
    if meta["task_type"] not in TASK_TYPES:
        raise MaskfileError(f"{path}: unknown task type {meta['task_type']!r}")
    if meta["task_type"] != "choice" and not (isinstance(meta.get("labels"), list) and meta["labels"]):
        raise MaskfileError(f"{path}: a {meta['task_type']} mask file must list its labels")
    layers = meta["layers"]
    if not isinstance(layers, dict) or not layers or not all(
            isinstance(v, list) and v and all(isinstance(d, int) and d > 0 for d in v) for v in layers.values()):
        raise MaskfileError(f"corrupt mask file {path}: bad or empty layer list")
    if not isinstance(meta["mask_config"], dict):
        raise MaskfileError(f"corrupt mask file {path}: mask_config is not an object")
    try:
        MaskConfig.from_dict(meta["mask_config"])
    except (TypeError, ValueError) as e:
        raise MaskfileError(f"corrupt mask file {path}: mask_config: {e}") from None
    return meta


def read_header(path: str | os.PathLike) -> dict:
    """Only the metadata of a mask file (cheap: reads the safetensors header), checked."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MaskfileError(f"mask file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("maskfit")
    except (SafetensorError, OSError, ValueError) as e:
        raise MaskfileError(f"corrupt mask file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if raw is None:
        raise MaskfileError(f"{path} is not a maskfit mask file (no 'maskfit' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise MaskfileError(f"corrupt mask file {path}: bad metadata JSON ({e})") from None
    return _check_meta(meta, path)


def read_maskfile(path: str | os.PathLike) -> MaskFile:
    """Read and check a mask file (the one loader); every failure is a one-line :class:`MaskfileError`."""
    path = Path(path)
    meta = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MaskfileError(f"corrupt mask file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if meta["version"] >= 2 and payload_checksum(tensors) != meta["checksum"]:
        raise MaskfileError(f"corrupt mask file {path}: its content does not match the checksum in its header")
    packed, head = {}, {}
    codecs = meta.get("codecs") if isinstance(meta.get("codecs"), dict) else {}
    for name, shape in meta["layers"].items():
        t = tensors.get(f"mask/{name}")
        n = 1
        for d in shape:
            n *= int(d)
        if t is None:
            raise MaskfileError(f"corrupt mask file {path}: no mask for layer {name}")
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise MaskfileError(f"corrupt mask file {path}: layer {name}: the mask is not a byte vector")
        if meta["version"] >= 2:  # decoded once, here: serving switches between packed 1-bit masks
            from . import maskcodec

            try:
                packed[name] = pack_bits(maskcodec.decode(codecs.get(name), t, shape))
            except ValueError as e:
                raise MaskfileError(f"corrupt mask file {path}: layer {name}: {e}") from None
            continue
        if t.numel() != (n + 7) // 8:
            raise MaskfileError(f"corrupt mask file {path}: layer {name}: packed mask has {t.numel()} bytes, "
                                f"expected {(n + 7) // 8} for shape {list(shape)}")
        packed[name] = t.reshape(-1)
    for key, t in tensors.items():
        if key.startswith("head/"):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise MaskfileError(f"corrupt mask file {path}: head tensor {key[5:]} is not finite")
            head[key[5:]] = t
    return MaskFile(path, meta, packed, head)


def check_base(model_or_fingerprint, meta: dict, path, have: str | None = None) -> None:
    """Refuse a base whose fingerprint differs from the one the mask file names."""
    fp = model_or_fingerprint if isinstance(model_or_fingerprint, str) else fingerprint(model_or_fingerprint)
    if fp != meta["fingerprint"]:
        if have is None and not isinstance(model_or_fingerprint, str):
            model = model_or_fingerprint
            have = getattr(model, "base", None) or getattr(unwrap(model).config, "_name_or_path", "?")
        raise MaskfileError(
            f"{path} was trained on base '{meta['base_model']}' (fingerprint {str(meta['fingerprint'])[:12]}), "
            f"but this model is '{have}' (fingerprint {fp[:12]}): load the mask onto its own base")


def check_head(model: nn.Module, mf: MaskFile) -> dict[str, nn.Parameter]:
    """The model's parameters that ``mf``'s head tensors replace, after checking they fit."""
    params = dict(unwrap(model).named_parameters())
    for name, t in mf.head.items():
        have = params.get(name)
        if have is None or have.shape != t.shape or have.dtype != t.dtype:
            got = tuple(have.shape) if have is not None else "missing"
            raise MaskfileError(f"{mf.path}: head tensor {name} {tuple(t.shape)} does not fit the model ({got})")
    return {n: params[n] for n in mf.head}


def load_masks(model: nn.Module, path: str | os.PathLike, name: str = DEFAULT) -> nn.Module:
    """Apply a task's mask file to a freshly loaded base model, ready for inference.

    ``model`` must carry the head of the file's task type (see
    :func:`maskfit.load_task_model`, which builds it for you). Returns ``model`` in
    eval mode with the file's masks active as mask ``name``.
    """
    mf = read_maskfile(path)
    check_base(model, mf.meta, mf.path)
    return apply_maskfile(model, mf, name)


def apply_maskfile(model: nn.Module, mf: MaskFile, name: str = DEFAULT) -> nn.Module:
    """Put ``mf``'s head tensors and fixed masks onto ``model`` (fingerprint already checked)."""
    params = check_head(model, mf)
    with torch.no_grad():
        for pname, t in mf.head.items():
            params[pname].copy_(t)
    device = next(unwrap(model).parameters()).device
    try:
        mask_model(model, mf.config, masks={n: p.to(device) for n, p in mf.packed.items()}, name=name)
    except ValueError as e:
        raise MaskfileError(f"{mf.path}: {e}") from None
    return model.eval()


def load_task_model(path: str | os.PathLike, base_model: str | None = None, device=None,
                    name: str = DEFAULT) -> nn.Module:
    """Build the right head on the base the file names (or ``base_model``) and load the masks.

    Returns a :class:`~maskfit.model.MaskfitModel` in eval mode on ``device`` (default: CPU),
    holding the file's task as ``name`` (:meth:`MaskfitModel.from_pretrained <maskfit.model.MaskfitModel.from_pretrained>`
    also takes folders and hub repos).
    """
    from .model import MaskfitModel

    return MaskfitModel.from_pretrained(base_model, path, name, device=device)
