"""The gradient-masking flags fire on constructed masked models and not on the clean one.

Two ways a model hides its weakness from gradient attacks (Athalye et al. 2018): a saturated
softmax (the output is ``log_softmax(1e4 * logits)``: cross-entropy is exactly 0 in float32
for confident samples, so its input gradient is exactly 0) and a non-differentiable input
quantisation (its gradient is 0 almost everywhere).  On both the harness's own checks and
comparisons must say so: ``zero-gradients`` (model diagnostics), ``unbounded-eps-robust`` (the
harness's own PGD at Linf eps 1, whatever eps the grid lists) and ``black-box-stronger``
(Square beats PGD); on the same model without the masking, none of them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robench
from robench.context import WorkerContext
from robench.evaluation import model_diagnostics, predict, run_attack_cascade
from robench.flags import add_flags
from robench.worker import unbounded_check

MASKING_FLAGS = {"zero-gradients", "unbounded-eps-robust", "black-box-stronger"}
EPS = 0.1
N = 96


class SaturatedSoftmax(nn.Module):
    """Log-probabilities of logits scaled by 1e4: the softmax saturates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(1e4 * self.model(x), dim=1)


class Quantised(nn.Module):
    """Pixels rounded to 4 grey levels before the classifier (no gradient through round)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 3) / 3)


def _flags(host: robench.PluginHost, model: nn.Module, x: torch.Tensor,
           y: torch.Tensor) -> set[str]:
    """The flags the harness raises on PGD and Square rows of ``model`` at Linf ``EPS``, with
    the diagnostics of the model's clean task (as ``robench.worker.clean_task`` makes them)."""
    correct = predict(model, x) == y
    diagnostics = model_diagnostics(model, x, y, num_classes=10)
    diagnostics["unbounded_linf_robust"] = unbounded_check(
        WorkerContext.create(host), model, x, y, correct, seed=0, batch_size=len(x))
    rows = []
    for name, params in (("pgd", {"steps": 10}), ("square", {"queries": 300})):
        spec, _ = host.resolve("attack", name)
        (outcome,) = run_attack_cascade(host.build("attack", name, **params), model, x, y,
                                        correct, threat="linf", kind="bounded",
                                        eps_list=[EPS], batch_size=len(x))
        rows.append({"model": "m", "domain": "source", "attack": name, "threat": "linf",
                     "eps": EPS, "attack_kind": "bounded", "status": "ok",
                     "clean_acc": float(correct.float().mean()),
                     "robust_acc": float(outcome.robust.float().mean()),
                     "black_box": spec.black_box})
    frame = add_flags(pd.DataFrame(rows), {("m", "source"): {**diagnostics, "num_classes": 10}})
    return {f for value in frame["flags"] for f in str(value).split(";") if f}


@pytest.mark.parametrize("masking", [SaturatedSoftmax, Quantised])
def test_masked_gradients_raise_every_masking_flag(host: robench.PluginHost, digits: Any,
                                                   masking: type[nn.Module]) -> None:
    masked = masking(digits.model).eval()
    flags = _flags(host, masked, digits.x[:N], digits.y[:N])
    assert MASKING_FLAGS <= flags, flags


def test_the_same_model_unmasked_raises_none(host: robench.PluginHost, digits: Any) -> None:
    flags = _flags(host, digits.model, digits.x[:N], digits.y[:N])
    assert not flags & MASKING_FLAGS, flags


def test_the_saturated_softmax_keeps_the_predictions(digits: Any) -> None:
    """The construction masks gradients only: the classifier is the same."""
    x = digits.x[:N]
    assert torch.equal(predict(SaturatedSoftmax(digits.model), x), predict(digits.model, x))
