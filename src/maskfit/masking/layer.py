"""MaskedLinear: a frozen, shared ``nn.Linear`` weight plus trainable mask scores."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .binarize import binarize


class MaskedLinear(nn.Module):
    """``y = x (W ⊙ m)ᵀ + b`` with ``W`` and ``b`` frozen and shared with the original layer.

    The mask ``m`` comes from one of two sources:

    * ``scores`` (training): a real-valued ``nn.Parameter`` of W's shape, binarised
      against ``threshold`` with a straight-through gradient;
    * ``fixed_mask`` (inference after :func:`maskfit.load_masks`): a bool buffer.

    ``weight`` and ``bias`` are the very ``Parameter`` objects of the wrapped layer, so
    masking adds only the score tensor to memory and can never change the pretrained
    weights (they have ``requires_grad=False``).
    """

    def __init__(self, linear: nn.Linear, threshold: float, scores: torch.Tensor | None = None,
                 fixed_mask: torch.Tensor | None = None):
        super().__init__()
        if (scores is None) == (fixed_mask is None):
            raise ValueError("give exactly one of scores or fixed_mask")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.threshold = float(threshold)
        if scores is not None:
            if scores.shape != self.weight.shape:
                raise ValueError(f"scores shape {tuple(scores.shape)} != weight shape {tuple(self.weight.shape)}")
            self.scores = nn.Parameter(scores.to(self.weight.device), requires_grad=True)
            self.register_buffer("fixed_mask", None)
        else:
            if fixed_mask.shape != self.weight.shape:
                raise ValueError(f"mask shape {tuple(fixed_mask.shape)} != weight shape {tuple(self.weight.shape)}")
            self.scores = None
            self.register_buffer("fixed_mask", fixed_mask.to(device=self.weight.device, dtype=torch.bool))

    def mask(self) -> torch.Tensor:
        """The current binary mask as a bool tensor (no gradient)."""
        if self.fixed_mask is not None:
            return self.fixed_mask
        return self.scores.detach() >= self.threshold

    def masked_weight(self) -> torch.Tensor:
        """``W ⊙ m``; differentiable w.r.t. the scores when training."""
        if self.fixed_mask is not None:
            return self.weight * self.fixed_mask
        # The scores stay fp32 (τ-sized steps would vanish in bf16/fp16); the 0/1 mask takes
        # the weight's dtype so a half-precision model gets a half-precision Ŵ.
        return self.weight * binarize(self.scores, self.threshold).to(self.weight.dtype)

    def freeze(self) -> None:
        """Replace the scores by their binary mask (1 byte/weight instead of 4)."""
        if self.scores is not None:
            mask = self.mask().clone()
            self.scores = None
            self.fixed_mask = mask

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W ⊙ m`` (a new tensor) and the shared bias."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight * self.mask())
        lin.weight.requires_grad_(False)
        if self.bias is not None:
            lin.bias = self.bias
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        src = "scores" if self.scores is not None else "fixed_mask"
        return f"in_features={self.in_features}, out_features={self.out_features}, mask={src}, threshold={self.threshold:g}"
