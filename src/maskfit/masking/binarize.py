"""Binarizers: tiny autograd functions, kept apart from the layers that use them."""
from __future__ import annotations

import torch


class ThresholdBinarizer(torch.autograd.Function):
    """Hard threshold with a straight-through gradient.

    Forward: ``m = 1[scores >= threshold]`` (same dtype as ``scores``).
    Backward: ``∂L/∂scores := ∂L/∂m`` (the straight-through estimator, Bengio et al.
    2013). Used as ``Ŵ = W ⊙ m``, this gives ``∂L/∂scores = (∂L/∂Ŵ) ⊙ W``.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores >= threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def binarize(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1[scores >= threshold]`` with a straight-through gradient."""
    return ThresholdBinarizer.apply(scores, threshold)
