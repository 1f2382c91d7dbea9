"""Session fixtures of the defense tests: the MNIST split, the plugin host, the harness's
attack builder and a standard (undefended) model trained once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from defense_helpers import N_TEST, N_TRAIN, mnist_5k, train

import robench
from robench.models import RobenchModel


@pytest.fixture(scope="session")
def mnist() -> dict[str, torch.Tensor]:
    """A seeded shuffle: ``N_TRAIN`` training digits from the first 4,000 of the shuffle and
    ``N_TEST`` test digits from the last 1,000 (the benchmark's split)."""
    images, labels = mnist_5k()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:N_TRAIN], perm[4000:4000 + N_TEST]
    return {"x": images[train_idx], "y": labels[train_idx], "x_test": images[test_idx],
            "y_test": labels[test_idx], "x_pool": images[perm[N_TRAIN:4000]]}


@pytest.fixture(scope="session")
def host() -> robench.PluginHost:
    return robench.PluginHost.create()


@pytest.fixture(scope="session")
def build_attack(host) -> Callable:
    """What the harness hands a training defense: robench's attacks by name."""
    return lambda name, params: host.build("attack", name, **params)


@pytest.fixture(scope="session")
def standard_model(host, mnist) -> RobenchModel:
    model, _ = train(host, mnist)
    return model
