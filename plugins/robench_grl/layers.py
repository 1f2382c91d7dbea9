"""Gradient reversal and the schedules of Ganin & Lempitsky (2015)."""

from __future__ import annotations

import math

import torch


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-lambda_`` on the way back.

    Placed between the feature extractor and the domain classifier, it turns the
    classifier's gradient *descent* into gradient *ascent* for the features: the features
    learn to make the domains indistinguishable while the classifier learns to tell them apart.
    """
    return _ReverseGrad.apply(x, float(lambda_))


def dann_lambda(progress: float, *, gamma: float = 10.0, max_lambda: float = 1.0) -> float:
    """``max_lambda * (2 / (1 + exp(-gamma p)) - 1)``: 0 at the start, ~1 at the end, so the
    noisy early domain signal does not swamp the class signal."""
    return max_lambda * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def dann_lr_factor(progress: float, *, alpha: float = 10.0, beta: float = 0.75) -> float:
    """Learning-rate annealing ``1 / (1 + alpha p)^beta`` (times the base rate mu0)."""
    return 1.0 / (1.0 + alpha * progress) ** beta
