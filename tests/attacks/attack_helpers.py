"""Helpers shared by the attack tests: the model, robust accuracy, cost counting, checks."""

from __future__ import annotations

import torch
from torch import nn

#: the harness's slack on a perturbation norm (robench.evaluation.EPS_TOLERANCE)
EPS_TOLERANCE = 1e-5


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction classified as ``y``: the robust accuracy when ``x`` is adversarial."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def hit_rate(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    """Targeted success rate: fraction classified as ``target``."""
    with torch.no_grad():
        return float((model(x).argmax(1) == target).float().mean())


def norms(delta: torch.Tensor, threat: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if threat == "linf":
        return flat.abs().amax(1)
    if threat == "l2":
        return flat.norm(dim=1)
    if threat == "l1":
        return flat.abs().sum(1)
    if threat == "l0":
        return (delta.abs() > 1e-7).any(dim=1).flatten(1).sum(1).float()
    raise ValueError(threat)


class Counting(nn.Module):
    """Counts forwards and input gradients per sample, like the harness's CountingModel."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.queries = 0
        self.grad_evals = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        self.queries += n
        if x.requires_grad and torch.is_grad_enabled():
            x = x.view_as(x)

            def hook(_grad: torch.Tensor) -> None:
                self.grad_evals += n

            x.register_hook(hook)
        return self.model(x)


def assert_valid(
    x: torch.Tensor, x_adv: torch.Tensor, *, threat: str, eps: float | None
) -> None:
    """The harness's checks: same shape, finite, in [0, 1], inside the eps ball."""
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if eps is not None and threat in ("linf", "l2", "l1", "l0"):
        worst = float(norms(x_adv - x, threat).max())
        assert worst <= eps + EPS_TOLERANCE * max(1.0, eps), (
            f"{threat} norm {worst} exceeds eps {eps}")


class Normalize(nn.Module):
    """Per-channel normalisation inside the model, as the harness builds it."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), mean))
        self.register_buffer("std", torch.full((1, 3, 1, 1), std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def small_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        Normalize(0.3, 0.4),
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None  # training leaves the last batch's gradients behind
    return model
