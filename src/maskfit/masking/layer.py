"""MaskedLinear: a frozen, shared ``nn.Linear`` weight plus the masks that select from it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .binarize import binarize

DEFAULT = "default"
"""Name of the mask a layer gets when none is given (as peft's ``"default"`` adapter)."""


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor → uint8 tensor of ceil(n / 8) bytes, least significant bit first, on its device."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`pack_bits`, on the packed tensor's device (numpy's fast path on the CPU)."""
    n = int(torch.Size(shape).numel())
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes, expected {(n + 7) // 8} for shape {list(shape)}")
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.reshape(-1).numpy(), count=n, bitorder="little")
        return torch.from_numpy(bits).view(torch.bool).view(*shape)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) >> shifts) & 1
    return bits.reshape(-1)[:n].bool().view(*shape)


def masked_into(weight: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out ← weight ⊙ mask``, bitwise what ``weight * mask`` gives (IEEE: w·1 = w, w·0 = ±0).

    On the CPU this runs numpy's single-threaded multiply instead of a torch parallel region:
    on a busy machine a 2-thread OpenMP elementwise op waits for descheduled threads
    (measured: 540 ms vs 15 ms for MiniLM's 7.2M masked weights on 2 shared cores).
    """
    if weight.device.type == "cpu" and out.is_contiguous() and weight.dtype != torch.bfloat16:
        np.multiply(weight.detach().numpy(), mask.numpy(), out=out.numpy())
        return out
    return torch.mul(weight, mask, out=out)


class MaskedLinear(nn.Module):
    """``y = x (W ⊙ m)ᵀ + b`` with ``W`` and ``b`` frozen and shared with the original layer.

    A layer holds several named masks and uses one, the *active* mask (``None``: the
    plain weight), like peft's ``BaseTunerLayer`` holds several adapters:

    * at most one *trainable* mask, ``scores``: a real-valued ``nn.Parameter`` of W's
      shape (fp32, or fp64 when given fp64; never half precision), binarised against ``threshold`` with a straight-through
      gradient; its name is ``scores_name``;
    * any number of *fixed* masks, kept packed (1 bit per weight, a non-persistent
      buffer that moves with the module); the active one is unpacked once, when it is
      activated, into ``fixed_mask`` (bool).

    ``merge()`` writes ``W ⊙ m`` of the active mask into a plain tensor the forward then
    uses (plain-linear speed); ``unmerge()`` drops it. ``weight`` and ``bias`` are the very
    ``Parameter`` objects of the wrapped layer, so masking adds only the masks to memory
    and can never change the pretrained weights (they have ``requires_grad=False``).
    """

    def __init__(self, linear: nn.Linear, threshold: float = 5e-3, scores: torch.Tensor | None = None,
                 fixed_mask: torch.Tensor | None = None, name: str = DEFAULT):
        super().__init__()
        if (scores is None) == (fixed_mask is None):
            raise ValueError("give exactly one of scores or fixed_mask (MaskedLinear.wrap makes a layer without masks)")
        self._share(linear, threshold)
        if scores is not None:
            self.add_scores(name, scores, threshold)
        else:
            self.add_mask(name, fixed_mask)
            self.set_active(name)

    @classmethod
    def wrap(cls, linear: nn.Linear, threshold: float = 5e-3) -> "MaskedLinear":
        """A layer over ``linear`` holding no mask yet (it computes the plain linear until one is added)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._share(linear, threshold)
        return layer

    def _share(self, linear: nn.Linear, threshold: float) -> None:
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.threshold = float(threshold)
        self.scores: nn.Parameter | None = None
        self.scores_name: str | None = None
        self._packed: dict[str, str] = {}  # mask name -> buffer attribute holding its packed bits
        self._shapes: dict[str, torch.Size] = {}  # mask name -> the weight shape it masks (a head's follows its task)
        self.register_buffer("fixed_mask", None, persistent=False)
        self.active: str | None = None
        self.merged: torch.Tensor | None = None
        self.scratch: torch.Tensor | None = None

    # A classifier's weight is swapped with its task's head (its first dimension is the task's label
    # count), so the features are read from the weight the layer holds now.
    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    # ------------------------------------------------------------------ masks

    @property
    def mask_names(self) -> list[str]:
        """Every mask the layer holds (the trainable one first)."""
        return ([self.scores_name] if self.scores is not None else []) + list(self._packed)

    def _check_shape(self, t: torch.Tensor, what: str) -> None:
        if t.shape != self.weight.shape:
            raise ValueError(f"{what} shape {tuple(t.shape)} != weight shape {tuple(self.weight.shape)}")

    def add_scores(self, name: str, scores: torch.Tensor, threshold: float | None = None) -> None:
        """Add the trainable mask ``name`` (fp32 scores, on the weight's device) and activate it."""
        self._check_shape(scores, "scores")
        if self.scores is not None and self.scores_name != name:
            raise ValueError(f"the layer already trains mask '{self.scores_name}'; freeze it first")
        if name in self._packed:
            raise ValueError(f"mask '{name}' already exists")
        dtype = scores.dtype if scores.dtype == torch.float64 else torch.float32  # never below fp32
        self.scores = nn.Parameter(scores.detach().to(self.weight.device, dtype), requires_grad=True)
        self.scores_name = name
        if threshold is not None:
            self.threshold = float(threshold)
        self.set_active(name)

    def add_mask(self, name: str, mask: torch.Tensor | None = None, packed: torch.Tensor | None = None,
                 shape=None) -> None:
        """Add the fixed mask ``name``, given as bools or already packed (:func:`pack_bits`).

        ``shape`` is the weight shape the mask belongs to (default: the layer's weight now). It
        differs for a classifier whose tasks have different label counts: the task's head
        weight must be in place before its mask is activated.
        """
        if (mask is None) == (packed is None):
            raise ValueError("give exactly one of mask or packed")
        if name == self.scores_name or name in self._packed:
            raise ValueError(f"mask '{name}' already exists")
        shape = torch.Size(shape if shape is not None else self.weight.shape)
        if len(shape) != 2 or shape[1] != self.weight.shape[1]:
            raise ValueError(f"mask shape {tuple(shape)} does not fit a layer of {self.weight.shape[1]} inputs")
        if mask is not None:
            if mask.shape != shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} != {tuple(shape)}")
            packed = pack_bits(mask.to(torch.bool))
        elif packed.dtype != torch.uint8 or packed.numel() != (shape.numel() + 7) // 8:
            raise ValueError(f"packed mask of {packed.numel()} bytes does not fit weight shape {tuple(shape)}")
        attr = f"_packed_{len(self._packed)}"
        while hasattr(self, attr):
            attr += "_"
        self.register_buffer(attr, packed.reshape(-1).to(self.weight.device), persistent=False)
        self._packed[name] = attr
        self._shapes[name] = shape

    def mask_shape(self, name: str) -> torch.Size:
        """The weight shape mask ``name`` belongs to."""
        return self.scores.shape if name == self.scores_name else self._shapes[name]

    def packed(self, name: str) -> torch.Tensor:
        """The packed bits of fixed mask ``name``."""
        return self._buffers[self._packed[name]]

    def remove_mask(self, name: str) -> None:
        """Forget mask ``name`` (deactivating it first if it is active)."""
        if self.active == name:
            self.set_active(None)
        if name == self.scores_name:
            self.scores, self.scores_name = None, None
        else:
            delattr(self, self._packed.pop(name))
            self._shapes.pop(name, None)

    def set_active(self, name: str | None, unpack: bool = True) -> None:
        """Make ``name`` the mask the forward uses (``None``: the plain weight).

        A fixed mask is unpacked here, once, not at every forward; ``unpack=False`` leaves
        that to a following :meth:`merge` (serving's merge strategies never need the bools).
        """
        if name is not None and name != self.scores_name and name not in self._packed:
            raise KeyError(f"no mask '{name}' in this layer (has: {', '.join(self.mask_names) or 'none'})")
        mask = None
        shape = self._shapes.get(name)  # on the serving switch path: plain dict lookups
        if shape is not None and shape != self._parameters["weight"].shape:
            raise ValueError(f"mask '{name}' belongs to a {tuple(shape)} weight, the layer holds "
                             f"{tuple(self.weight.shape)}: put that task's head in first")
        if name is not None and name != self.scores_name and unpack:
            mask = unpack_bits(self.packed(name), self.weight.shape)
        self._point(name, None, mask)

    def use_merged(self, name: str, merged: torch.Tensor) -> None:
        """Make fixed mask ``name`` active with ``W ⊙ m`` already computed (a serving cache hit)."""
        if name not in self._packed or merged.shape != self.weight.shape:
            raise ValueError(f"no mask '{name}' of this shape to point at")
        self._point(name, merged, None)

    def _point(self, name, merged, mask) -> None:
        # A serving switch sets this state in every masked layer, many times a second: plain
        # dict writes here, not nn.Module.__setattr__'s checks (a MiniLM cache-hit switch,
        # 26 layers: 0.07 ms instead of 0.32 ms).
        self.__dict__["active"] = name
        self.__dict__["merged"] = merged
        self._buffers["fixed_mask"] = mask

    def mask(self, name: str | None = None) -> torch.Tensor:
        """A mask as a bool tensor (default: the active one; no gradient)."""
        name = self.active if name is None else name
        if name is None:
            return torch.ones_like(self.weight, dtype=torch.bool)
        if name == self.scores_name:
            return self.scores.detach() >= self.threshold
        if name == self.active and self.fixed_mask is not None:
            return self.fixed_mask
        return unpack_bits(self.packed(name), self.mask_shape(name))

    def freeze(self) -> None:
        """Turn the trainable mask into a fixed one of the same name (1 bit per weight, not 4 bytes)."""
        if self.scores is None:
            return
        name, mask, was_active = self.scores_name, self.mask(self.scores_name).clone(), self.active == self.scores_name
        self.scores, self.scores_name = None, None
        self.add_mask(name, mask)
        if was_active:
            self.set_active(name)

    # ------------------------------------------------------------------ weights

    def masked_weight(self) -> torch.Tensor:
        """``W ⊙ m`` of the active mask; differentiable w.r.t. the scores when they are active."""
        if self.active is None:
            return self.weight
        if self.active == self.scores_name:
            # The scores stay fp32 (τ-sized steps would vanish in bf16/fp16); the 0/1 mask takes
            # the weight's dtype so a half-precision model gets a half-precision Ŵ.
            return self.weight * binarize(self.scores, self.threshold).to(self.weight.dtype)
        mask = self.fixed_mask if self.fixed_mask is not None else self.mask()
        s = self.scratch
        if s is not None and s.shape == self.weight.shape and s.dtype == self.weight.dtype and s.device == self.weight.device:
            return masked_into(self.weight, mask, s)
        return self.weight * mask

    def merge(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """Write ``W ⊙ m`` of the active fixed mask into ``out`` (or a new tensor); the forward uses it."""
        if self.active is None or self.active == self.scores_name:
            raise ValueError("merge needs an active fixed mask (freeze trainable scores first)")
        if out is None:
            out = torch.empty_like(self.weight, memory_format=torch.contiguous_format)
        mask = self._buffers["fixed_mask"]
        if mask is None:
            mask = unpack_bits(self._buffers[self._packed[self.active]], self.weight.shape)
        masked_into(self.weight.detach(), mask, out)  # W is frozen: no graph to record
        self.__dict__["merged"] = out
        return out

    def unmerge(self) -> None:
        self.__dict__["merged"] = None

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W ⊙ m`` of the active mask (a new tensor) and the shared bias."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight * self.mask())
        lin.weight.requires_grad_(False)
        if self.bias is not None:
            lin.bias = self.bias
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None:
            return F.linear(x, self.merged, self.bias)
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        state = "merged" if self.merged is not None else "scores" if self.active == self.scores_name and self.active \
            else "fixed_mask" if self.active else "plain"
        return (f"in_features={self.in_features}, out_features={self.out_features}, masks={self.mask_names}, "
                f"active={self.active!r} ({state}), threshold={self.threshold:g}")
