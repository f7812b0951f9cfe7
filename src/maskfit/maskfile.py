"""The per-task file: packed 1-bit masks + the random head + JSON metadata.

Layout (one safetensors file, written atomically):

* ``mask/<layer>``: uint8, the layer's bool mask flattened row-major and packed 8 per
  byte (least significant bit first), padded with zeros to a whole byte;
* ``head/<param>``: the randomly initialised, never trained classifier tensors;
* metadata ``maskfit``: JSON with the format version, base model name and fingerprint,
  task type, labels, ``MaskConfig``, layer shapes and sparsity.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import MaskfileError
from .masking import MaskConfig, binary_masks, mask_model, mask_stats, masked_layers

FORMAT = "maskfit.masks"
VERSION = 1


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor → uint8 tensor of ceil(n / 8) bytes (LSB first)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`pack_bits`."""
    n = int(torch.Size(shape).numel())
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes, expected {(n + 7) // 8} for shape {list(shape)}")
    bits = (packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[:n].bool().view(*shape)


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained tensors a mask file belongs to: embeddings and encoder blocks.

    Keyed by their name inside the base model, so the same base gives the same set
    whatever head sits on top. The pooler is left out because token-tagging heads drop it.
    """
    base = model.base_model
    out = {}
    for name, t in list(base.named_parameters()) + list(base.named_buffers()):
        if name.startswith("pooler.") or name.endswith(".scores") or name.endswith("fixed_mask"):
            continue
        if name.endswith("position_ids") or name.endswith("token_type_ids"):
            continue  # index buffers, not weights
        out[name] = t
    return out


def fingerprint(model: nn.Module) -> str:
    """A short hash of the base model's pretrained tensors (names, shapes, dtypes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(base_state(model).items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_masks(model: nn.Module, path: str | os.PathLike, labels=None, extra: dict | None = None) -> Path:
    """Write ``model``'s binary masks and random head to ``path`` (atomically)."""
    from .heads import random_head_parameters

    path = Path(path)
    layers = masked_layers(model)
    if not layers:
        raise MaskfileError("the model has no masked layers: call mask_model first")
    tensors = {f"mask/{n}": pack_bits(m) for n, m in binary_masks(model).items()}
    for n, p in random_head_parameters(model).items():
        tensors[f"head/{n}"] = p.detach().contiguous().cpu()
    cfg = model.config
    if labels is None and getattr(model, "maskfit_task_type", "sequence") != "choice":
        labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
    stats = mask_stats(model)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "base_model": getattr(model, "maskfit_base", getattr(cfg, "_name_or_path", "")),
        "fingerprint": fingerprint(model),
        "model_type": cfg.model_type,
        "head_class": type(model).__name__,
        "task_type": getattr(model, "maskfit_task_type", None),
        "pooling": getattr(model, "maskfit_pooling", "cls"),
        "labels": list(labels) if labels is not None else None,
        "mask_config": getattr(model, "mask_config", MaskConfig()).to_dict(),
        "layers": {n: list(m.weight.shape) for n, m in layers.items()},
        "sparsity": stats["sparsity"],
        "masked_weights": stats["total"],
        "extra": extra or {},
    }
    _atomic_save(tensors, {"maskfit": json.dumps(meta)}, path)
    return path


@dataclass
class MaskFile:
    """A mask file's content, unpacked: metadata, bool masks and head tensors."""

    path: Path
    meta: dict
    masks: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]

    @property
    def labels(self):
        return self.meta.get("labels")

    @property
    def config(self) -> MaskConfig:
        return MaskConfig.from_dict(self.meta["mask_config"])


def read_header(path: str | os.PathLike) -> dict:
    """Only the metadata of a mask file (cheap: reads the safetensors header)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MaskfileError(f"mask file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("maskfit")
    except (SafetensorError, OSError, ValueError) as e:
        raise MaskfileError(f"corrupt mask file {path}: {e}") from None
    if raw is None:
        raise MaskfileError(f"{path} is not a maskfit mask file (no 'maskfit' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise MaskfileError(f"corrupt mask file {path}: bad metadata JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise MaskfileError(f"{path}: unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
    return meta


def read_maskfile(path: str | os.PathLike) -> MaskFile:
    """Read and check a mask file; every failure is a one-line :class:`MaskfileError`."""
    path = Path(path)
    meta = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MaskfileError(f"corrupt mask file {path}: {e}") from None
    masks, head = {}, {}
    for name, shape in meta["layers"].items():
        packed = tensors.get(f"mask/{name}")
        if packed is None:
            raise MaskfileError(f"corrupt mask file {path}: no mask for layer {name}")
        try:
            masks[name] = unpack_bits(packed, shape)
        except ValueError as e:
            raise MaskfileError(f"corrupt mask file {path}: layer {name}: {e}") from None
    for key, t in tensors.items():
        if key.startswith("head/"):
            head[key[5:]] = t
    return MaskFile(path, meta, masks, head)


def check_base(model: nn.Module, meta: dict, path) -> None:
    """Refuse a base whose fingerprint differs from the one the mask file names."""
    fp = fingerprint(model)
    if fp != meta["fingerprint"]:
        have = getattr(model, "maskfit_base", getattr(model.config, "_name_or_path", "?"))
        raise MaskfileError(
            f"{path} was trained on base '{meta['base_model']}' (fingerprint {meta['fingerprint'][:12]}), "
            f"but this model is '{have}' (fingerprint {fp[:12]}): load the mask onto its own base")


def load_masks(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply a task's mask file to a freshly loaded base model, ready for inference.

    ``model`` must carry the head of the file's task type (see
    :func:`maskfit.load_task_model`, which builds it for you). Returns ``model`` in
    eval mode with fixed masks.
    """
    mf = read_maskfile(path)
    check_base(model, mf.meta, mf.path)
    return apply_maskfile(model, mf)


def apply_maskfile(model: nn.Module, mf: MaskFile) -> nn.Module:
    """Put ``mf``'s head tensors and fixed masks onto ``model`` (fingerprint already checked)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in mf.head.items():
            if name not in params or params[name].shape != t.shape:
                got = tuple(params[name].shape) if name in params else "missing"
                raise MaskfileError(f"{mf.path}: head tensor {name} {tuple(t.shape)} does not fit the model ({got})")
            params[name].copy_(t)
    try:
        mask_model(model, mf.config, masks=mf.masks)
    except ValueError as e:
        raise MaskfileError(f"{mf.path}: {e}") from None
    return model.eval()


def load_task_model(path: str | os.PathLike, base_model: str | None = None) -> nn.Module:
    """Build the right head on the base the file names (or ``base_model``) and load the masks."""
    from .heads import build_model

    mf = read_maskfile(path)
    labels = mf.labels or ["0"]
    model = build_model(base_model or mf.meta["base_model"], mf.meta["task_type"], labels,
                        pooling=mf.meta.get("pooling", "cls"))
    check_base(model, mf.meta, mf.path)
    return apply_maskfile(model, mf)
