"""Put masks on a model, read their statistics, merge them for plain inference."""
from __future__ import annotations

import re
import zlib
from contextlib import contextmanager

import torch
from torch import nn

from .config import MaskConfig
from .layer import DEFAULT, MaskedLinear
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


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a wrapper (``MaskfitModel``, peft's ``PeftModel``: ``get_base_model()``),
    or inside a ``DistributedDataParallel`` (``module``); ``model`` itself otherwise."""
    while True:
        if hasattr(type(model), "get_base_model"):
            model = model.get_base_model()
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _get(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _linear(model: nn.Module, name: str) -> nn.Linear | None:
    mod = _get(model, name)
    return mod if isinstance(mod, (nn.Linear, MaskedLinear)) else None


def target_names(model: nn.Module, config: MaskConfig) -> list[str]:
    """Full names (in the transformers model) of the linears ``config`` selects."""
    model = unwrap(model)
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
    missing = [n for n in names if _linear(model, n) is None]
    if missing:
        raise ValueError(f"expected nn.Linear modules not found: {missing[:3]}")
    return names


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def mask_model(model: nn.Module, config: MaskConfig | None = None,
               masks: dict[str, torch.Tensor] | None = None, name: str = DEFAULT) -> nn.Module:
    """Put mask ``name`` on the linears ``config`` selects, in place, and make it the active mask.

    Without ``masks`` the mask is trainable: each selected layer gets scores drawn by
    :func:`initial_scores`, and afterwards only those scores require grad; every
    pretrained tensor (and the random classifier) is frozen and shared with the original
    layers, not copied. With ``masks`` (layer name → bool tensor, or packed uint8 bits)
    the layers get those fixed masks instead (:func:`maskfit.load_masks` uses this).

    Works on a transformers model or a wrapper around one (a ``MaskfitModel`` also
    records ``config`` as the config of mask ``name``). A model can hold several named
    masks; one is active at a time (:func:`set_active_mask`).
    """
    config = config or MaskConfig()
    inner = unwrap(model)
    names = list(masks) if masks is not None else target_names(inner, config)
    if not names:
        raise ValueError("the mask config selects no nn.Linear in this model")
    existing = masked_layers(inner)
    if masks is None and any(m.scores is not None for m in existing.values()):
        raise ValueError("model is already masked with trainable scores; freeze them (or unmask_model) first")
    if any(name in m.mask_names for m in existing.values()):
        raise ValueError(f"model is already masked with a mask named '{name}'")
    for p in inner.parameters():
        p.requires_grad_(False)
    if masks is None and config.classifier_scale != 1.0:
        _scale_classifier(inner, config.classifier_scale)
    for layer_name in names:
        lin = _linear(inner, layer_name)
        if lin is None:
            raise ValueError(f"no nn.Linear named '{layer_name}' in the model")
        layer = lin if isinstance(lin, MaskedLinear) else MaskedLinear.wrap(lin, config.threshold)
        if masks is None:
            layer.add_scores(name, initial_scores(lin.weight.shape, config, layer_name), config.threshold)
        else:
            m = masks[layer_name]
            if m.dtype == torch.uint8:
                layer.add_mask(name, packed=m)
            else:
                layer.add_mask(name, mask=m)
        if layer is not lin:
            _set(inner, layer_name, layer)
    set_active_mask(inner, name)
    if isinstance(getattr(model, "mask_configs", None), dict):
        model.mask_configs[name] = config
    return model


def _scale_classifier(model: nn.Module, scale: float) -> None:
    """Multiply the random classifier W_T (the head's output projection) by ``scale``, in place."""
    arch = architecture_for(getattr(model.config, "model_type", type(model).__name__))
    name = next((c for c in arch.classifier if _linear(model, c) is not None), None)
    if name is None:
        raise ValueError("classifier_scale needs a classifier the architecture map names")
    with torch.no_grad():
        _linear(model, name).weight.mul_(scale)


def set_active_mask(model: nn.Module, name: str | None) -> None:
    """Activate mask ``name`` in every masked layer (layers without it compute their plain weight)."""
    for layer in masked_layers(model).values():
        layer.set_active(name if name is not None and name in layer.mask_names else None)


def mask_names(model: nn.Module) -> list[str]:
    """The names of the masks the model holds, in the order they were added."""
    seen: dict[str, None] = {}
    for layer in masked_layers(model).values():
        seen.update(dict.fromkeys(layer.mask_names))
    return list(seen)


def masked_layers(model: nn.Module) -> dict[str, MaskedLinear]:
    """Name → :class:`MaskedLinear` for every masked layer, in module order (names in the transformers model)."""
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, MaskedLinear)}


def active_layers(model: nn.Module) -> dict[str, MaskedLinear]:
    """The masked layers the active mask covers."""
    return {n: m for n, m in masked_layers(model).items() if m.active is not None}


def binary_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → current bool mask of every layer the active mask covers."""
    return {n: m.mask() for n, m in active_layers(model).items()}


def mask_stats(model: nn.Module) -> dict:
    """Sparsity (fraction of zeros) of the active mask, per layer and overall.

    Returns ``{"layers": {name: {"shape", "zeros", "total", "sparsity"}},
    "zeros", "total", "sparsity"}``.
    """
    layers, zeros, total = {}, 0, 0
    for name, mask in binary_masks(model).items():
        z, t = int((~mask).sum()), mask.numel()
        layers[name] = {"shape": list(mask.shape), "zeros": z, "total": t, "sparsity": z / t}
        zeros += z
        total += t
    return {"layers": layers, "zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0}


def unmask_model(model: nn.Module) -> nn.Module:
    """Put the original, unmasked ``nn.Linear`` layers back (weights untouched), dropping every mask."""
    inner = unwrap(model)
    for name, m in masked_layers(inner).items():
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight, lin.bias = m.weight, m.bias
        _set(inner, name, lin)
    if isinstance(getattr(model, "mask_configs", None), dict):
        model.mask_configs.clear()
    return model


@contextmanager
def merged(model: nn.Module):
    """Temporarily replace every masked layer by a plain linear holding ``W ⊙ m`` of its active mask.

    Inside the block the model runs at plain-linear speed; on exit the masked layers
    (sharing the untouched pretrained weights) are put back.
    """
    inner = unwrap(model)
    layers = masked_layers(inner)
    try:
        for name, m in layers.items():
            _set(inner, name, m.to_linear())
        yield model
    finally:
        for name, m in layers.items():
            _set(inner, name, m)
