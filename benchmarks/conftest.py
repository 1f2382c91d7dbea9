"""Fixtures for the attack benchmarks: the same models and data for every implementation.

Two settings, each one benchmark group:

* ``resnet10t`` (timm, random init, 32x32, eval, frozen) with labels set to its own
  predictions and a tiny eps, so no sample is ever fooled: every implementation does the
  full 10 forward+backward passes and the comparison is pure per-pass overhead against the
  ideal;
* a CNN trained in seconds on scikit-learn digits (16x16 RGB, > 90% test accuracy),
  attacked at a realistic eps (0.08: about half the samples fall, most within the 10
  steps), where early exit pays.

Intra-op threads default to 1 (``ROBENCH_BENCH_THREADS`` overrides): on a shared 2-core
machine two threads per process made a resnet10t forward+backward 9x slower, which would
measure the neighbours rather than the attacks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

BATCH = 32


@dataclass
class Setting:
    """A frozen eval-mode model taking [0, 1] images, a batch it classifies correctly, eps."""

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model


@pytest.fixture(scope="session", autouse=True)
def _threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ROBENCH_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def resnet_setting() -> Setting:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _freeze(timm.create_model("resnet10t", num_classes=10, pretrained=False))
    x = torch.rand(BATCH, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    return Setting("resnet10t-32px-no-exit", model, x, y, eps=1e-6)


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.3) / 0.4


def _digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as RGB images of ``size`` px in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1).repeat(1, 3, 1, 1), torch.tensor(data.target)


def _fit_and_select(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                    optimizer: type[torch.optim.Optimizer], lr: float, name: str,
                    eps: float) -> Setting:
    """Train on the first 1400 digits for 3 epochs; keep correctly classified test images."""
    optimizer = optimizer(model.parameters(), lr=lr)
    train_x, train_y = images[:1400], labels[:1400]
    for _ in range(3):
        for batch in torch.randperm(len(train_x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
            optimizer.step()
    _freeze(model)
    test_x, test_y = images[1400:], labels[1400:]
    with torch.no_grad():
        correct = model(test_x).argmax(1) == test_y
    assert correct.float().mean() > 0.85, f"the benchmark's {name} model failed to train"
    return Setting(name, model, test_x[correct][: 2 * BATCH], test_y[correct][: 2 * BATCH],
                   eps=eps)


@pytest.fixture(scope="session")
def digits_setting() -> Setting:
    torch.manual_seed(0)
    images, labels = _digits(16)
    # wide enough that a pass costs in proportion to the batch (a tiny CNN is all overhead,
    # which would hide what early exit saves)
    model = nn.Sequential(
        _Normalize(),
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    return _fit_and_select(model, images, labels, optimizer=torch.optim.Adam, lr=2e-3,
                           name="digits-cnn-eps0.08",
                           eps=0.08)


@pytest.fixture(scope="session")
def undefended_setting() -> Setting:
    """timm's ``test_resnet`` trained briefly on digits at 32 px: an ordinary undefended model,
    most of whose samples fall at a small eps (the common case on a leaderboard)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    images, labels = _digits(32)
    model = nn.Sequential(_Normalize(), timm.create_model("test_resnet", num_classes=10))
    return _fit_and_select(model, images, labels, optimizer=torch.optim.AdamW, lr=3e-3,
                           name="undefended-test_resnet",
                           eps=0.03)
