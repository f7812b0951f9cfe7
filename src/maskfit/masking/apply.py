"""Put masks on a model, read their statistics, merge them for plain inference."""
from __future__ import annotations

import re
import zlib
from contextlib import contextmanager

import torch
from torch import nn

from .config import MaskConfig
from .layer import MaskedLinear
from .targets import architecture_for


def initial_scores(shape: torch.Size | tuple[int, ...], config: MaskConfig, name: str = "") -> torch.Tensor:
    """Scores drawn from U[τ - p·s, τ + (1 - p)·s) with *exactly* round(p·n) below τ.

    A random ``round(p·n)`` subset (chosen by a permutation) is drawn uniformly from the
    part of the range below τ, the rest uniformly from the part above, which is a
    stratified draw from the same uniform distribution. The generator is seeded from
    ``config.seed`` and the layer name, so equal seeds give equal initial masks.
    """
    n = int(torch.Size(shape).numel())
    p, tau, s = config.init_sparsity, config.threshold, config.init_scale
    gen = torch.Generator().manual_seed((config.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    k = round(p * n)
    u = torch.rand(n, generator=gen)
    scores = tau + (1 - p) * s * u                      # in [τ, τ + (1-p)s): kept
    zeros = torch.randperm(n, generator=gen)[:k]
    below = tau - p * s * (1.0 - u[zeros])               # in (τ - p·s, τ]: pruned...
    below = torch.minimum(below, torch.tensor(tau).nextafter(torch.tensor(-float("inf"))))  # ...strictly < τ
    scores[zeros] = below
    return scores.view(*shape)


def _linear(model: nn.Module, name: str) -> nn.Linear | None:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        return None
    return mod if isinstance(mod, nn.Linear) else None


def target_names(model: nn.Module, config: MaskConfig) -> list[str]:
    """Full names of the ``nn.Linear`` modules ``config`` selects in ``model``."""
    if config.targets is not None:
        rx = re.compile(config.targets)
        return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, MaskedLinear)) and rx.search(n)]
    arch = architecture_for(getattr(model.config, "model_type", type(model).__name__))
    base = model.base_model
    prefix = "" if base is model else f"{model.base_model_prefix}."
    blocks = base.get_submodule(arch.blocks)
    names = []
    for b in config.block_indices(len(blocks)):
        for key in config.modules:
            names.append(f"{prefix}{arch.blocks}.{b}.{arch.modules[key]}")
    if config.mask_pooler:
        names += [f"{prefix}{p}" for p in arch.pooler if _linear(base, p) is not None]
        names += [p for p in arch.pre_classifier if _linear(model, p) is not None]
    if config.mask_classifier:
        names += [c for c in arch.classifier if _linear(model, c) is not None][:1]
    missing = [n for n in names if _linear(model, n) is None and not isinstance(_get(model, n), MaskedLinear)]
    if missing:
        raise ValueError(f"expected nn.Linear modules not found: {missing[:3]}")
    return names


def _get(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def mask_model(model: nn.Module, config: MaskConfig | None = None,
               masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Swap the selected linears of ``model`` for :class:`MaskedLinear`, in place.

    Afterwards only the mask scores require grad; every pretrained tensor (and the
    random classifier) is frozen and shared with the original layers, not copied.
    With ``masks`` (name → bool tensor), the layers get those fixed masks instead of
    trainable scores (used by :func:`maskfit.load_masks`).
    """
    config = config or MaskConfig()
    if masked_layers(model):
        raise ValueError("model is already masked")
    names = list(masks) if masks is not None else target_names(model, config)
    if not names:
        raise ValueError("the mask config selects no nn.Linear in this model")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        lin = _linear(model, name)
        if lin is None:
            raise ValueError(f"no nn.Linear named '{name}' in the model")
        if masks is not None:
            layer = MaskedLinear(lin, config.threshold, fixed_mask=masks[name])
        else:
            layer = MaskedLinear(lin, config.threshold, scores=initial_scores(lin.weight.shape, config, name))
        _set(model, name, layer)
    model.mask_config = config
    return model


def masked_layers(model: nn.Module) -> dict[str, MaskedLinear]:
    """Name → :class:`MaskedLinear` for every masked layer, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}


def binary_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → current bool mask of every masked layer."""
    return {n: m.mask() for n, m in masked_layers(model).items()}


def mask_stats(model: nn.Module) -> dict:
    """Sparsity (fraction of zeros) per masked layer and overall.

    Returns ``{"layers": {name: {"shape", "zeros", "total", "sparsity"}},
    "zeros", "total", "sparsity"}``.
    """
    layers, zeros, total = {}, 0, 0
    for name, m in masked_layers(model).items():
        mask = m.mask()
        z, t = int((~mask).sum()), mask.numel()
        layers[name] = {"shape": list(mask.shape), "zeros": z, "total": t, "sparsity": z / t}
        zeros += z
        total += t
    return {"layers": layers, "zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0}


def unmask_model(model: nn.Module) -> nn.Module:
    """Put the original, unmasked ``nn.Linear`` layers back (weights untouched)."""
    for name, m in masked_layers(model).items():
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight, lin.bias = m.weight, m.bias
        _set(model, name, lin)
    return model


@contextmanager
def merged(model: nn.Module):
    """Temporarily replace every masked layer by a plain linear holding ``W ⊙ m``.

    Inside the block the model runs at plain-linear speed; on exit the masked layers
    (sharing the untouched pretrained weights) are put back.
    """
    layers = masked_layers(model)
    try:
        for name, m in layers.items():
            _set(model, name, m.to_linear())
        yield model
    finally:
        for name, m in layers.items():
            _set(model, name, m)
