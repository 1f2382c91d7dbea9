"""Fixtures for the attack tests: a small CNN trained on scikit-learn digits in seconds.

The model mirrors what the harness hands an attack: ``Normalize -> CNN``, fed images in
[0, 1], in eval mode, with every parameter frozen.  Digits are upscaled from 8x8 to 16x16
and repeated over 3 channels so that attacks see RGB-shaped images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import robench_attacks.plugin
import torch
import torch.nn.functional as F
from attack_helpers import freeze, small_cnn
from torch import nn

import robench

IMAGE_SIZE = 16
N_EVAL = 160


@dataclass
class Digits:
    """A trained, frozen model and evaluation images it classifies correctly."""

    model: nn.Module
    x: torch.Tensor  # (N_EVAL, 3, 16, 16) in [0, 1], all correctly classified
    y: torch.Tensor
    test_accuracy: float


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                           align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    return images.contiguous(), torch.tensor(data.target, dtype=torch.long)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for batch in order.split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


@pytest.fixture(scope="session")
def digits() -> Digits:
    """Train once per session (about 3 s on one core) to > 90% test accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        images, labels = _load_digits()
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        train_idx, test_idx = perm[:1400], perm[1400:]
        model = small_cnn()
        train(model, images[train_idx], labels[train_idx], epochs=12, seed=0)
        freeze(model)
        with torch.no_grad():
            pred = model(images[test_idx]).argmax(1)
        correct = pred == labels[test_idx]
        accuracy = float(correct.float().mean())
        assert accuracy > 0.9, f"digits model reached only {accuracy:.3f} test accuracy"
        keep = test_idx[correct][:N_EVAL]
        return Digits(model=model, x=images[keep], y=labels[keep], test_accuracy=accuracy)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run each attack test on one intra-op thread.

    The models are tiny, so threads buy nothing, while on a shared 2-core machine two
    spinning threads per process slow small convolutions down by an order of magnitude.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def host() -> robench.PluginHost:
    return robench.PluginHost.create(entry_points=False, plugins=[robench_attacks.plugin])
