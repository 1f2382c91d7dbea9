"""The adaptors' modules and factories and the digit CNN (see :mod:`robench_grl.plugin`).

Imported when an adaptor or the ``digits-cnn`` backbone is built or its parameters are
checked, not when they are listed.
"""

from __future__ import annotations

from collections import deque
from typing import Annotated, Literal

import torch
from torch import nn
from torch.nn import functional as F

import robench
from robench_grl.layers import dann_lambda, dann_lr_factor, grad_reverse

#: ``[adaptor.dann]`` parameters with a rule of their own, checked by robench's one validator
#: (``robench.checked`` on :class:`DANN`; the host checks the ``dann`` factory the same way)
Width = Annotated[int, robench.Check(ge=1)]
LambdaSchedule = Annotated[Literal["dann", "constant"], robench.Check(
    rule="'dann' (2/(1+exp(-gamma p))-1) or 'constant' (max_lambda throughout)")]
LrSchedule = Annotated[Literal["dann", "constant"] | None, robench.Check(
    rule="'constant' or 'dann' (mu0/(1+alpha p)^beta), or left out to follow the grid's "
         "lr_schedule")]


class SourceOnly(nn.Module):
    """No adaptation: training sees source batches only."""

    uses_target = False

    def loss(self, source: torch.Tensor, target: torch.Tensor | None,
             progress: float) -> torch.Tensor:
        return source.new_zeros(())


class DANN(nn.Module):
    """Domain classifier behind a gradient reversal layer.

    Defaults: a 100-unit hidden layer as in the paper's digit experiments; lambda rises as
    ``max_lambda * (2 / (1 + exp(-gamma p)) - 1)`` with ``max_lambda = 0.5``.  The learning
    rate follows the grid's ``lr_schedule`` (the paper's annealing by default, which is what
    lets the adversarial game settle in a few hundred steps: benchmarks/RESULTS.md), unless
    ``lr_schedule`` is given here.
    """

    uses_target = True

    @robench.checked("[adaptor.dann]")
    def __init__(self, num_features: int, *, hidden: Width = 100, depth: Width = 2,
                 dropout: float = 0.0, weight: float = 1.0, gamma: float = 10.0,
                 max_lambda: float = 0.5, lambda_schedule: LambdaSchedule = "dann",
                 lr_schedule: LrSchedule = None, lr_alpha: float = 10.0,
                 lr_beta: float = 0.75) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.domain_classifier = nn.Sequential(*layers)
        self.weight, self.gamma, self.max_lambda = weight, gamma, max_lambda
        self.lambda_schedule, self.lr_schedule = lambda_schedule, lr_schedule
        self.lr_alpha, self.lr_beta = lr_alpha, lr_beta
        # accuracy of the last batches, kept on the device: read once, by metrics()
        self._recent: deque[torch.Tensor] = deque(maxlen=50)
        self.last_lambda = 0.0
        if lr_schedule is not None:  # an explicit schedule overrides the grid's
            self.lr_factor = self._lr_factor

    def current_lambda(self, progress: float) -> float:
        if self.lambda_schedule == "constant":
            return self.max_lambda
        return dann_lambda(progress, gamma=self.gamma, max_lambda=self.max_lambda)

    def _lr_factor(self, progress: float) -> float:
        if self.lr_schedule == "constant":
            return 1.0
        return dann_lr_factor(progress, alpha=self.lr_alpha, beta=self.lr_beta)

    def loss(self, source: torch.Tensor, target: torch.Tensor,
             progress: float) -> torch.Tensor:
        self.last_lambda = self.current_lambda(progress)
        features = grad_reverse(torch.cat([source, target]), self.last_lambda)
        logits = self.domain_classifier(features).squeeze(1)
        labels = torch.cat([source.new_zeros(len(source)), source.new_ones(len(target))])
        self._recent.append(((logits.detach() > 0).float() == labels).float().mean())
        return self.weight * F.binary_cross_entropy_with_logits(logits, labels)

    def metrics(self) -> dict[str, float]:
        acc = float(torch.stack(list(self._recent)).mean()) if self._recent else float("nan")
        return {"domain_classifier_acc": acc, "final_lambda": self.last_lambda}


class CORAL(nn.Module):
    """Deep CORAL (Sun & Saenko, 2016): match second-order statistics of the two domains."""

    uses_target = True

    def __init__(self, num_features: int, *, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    @staticmethod
    def _cov(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(0, keepdim=True)
        return x.T @ x / max(1, len(x) - 1)

    def loss(self, source: torch.Tensor, target: torch.Tensor,
             progress: float) -> torch.Tensor:
        d = source.shape[1]
        diff = self._cov(source) - self._cov(target)
        return self.weight * (diff * diff).sum() / (4 * d * d)


class DigitsCNN(nn.Module):
    """5x5 conv 32, pool, 5x5 conv 48, pool, with batch norm: Ganin & Lempitsky's digit
    feature extractor.  1,200 features at 32x32 (48 x 5 x 5)."""

    def __init__(self, *, image_size: int = 32, in_chans: int = 3) -> None:
        super().__init__()
        if image_size < 16:
            raise robench.UsageError(
                f"backbone 'digits-cnn' needs images of at least 16 px, got {image_size}.")
        self.stage1 = nn.Sequential(nn.Conv2d(in_chans, 32, 5), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(nn.Conv2d(32, 48, 5), nn.BatchNorm2d(48), nn.ReLU(),
                                    nn.MaxPool2d(2))
        side = ((image_size - 4) // 2 - 4) // 2
        self.num_features = 48 * side * side
        self.mean = [0.5] * in_chans
        self.std = [0.5] * in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(x)).flatten(1)


def digits_cnn(*, image_size: int, in_chans: int,
               pretrained_file: str | None = None) -> DigitsCNN:
    """``pretrained_file``: a robench checkpoint (e.g. ``models/<key>.safetensors`` of a run
    trained on digits) to transfer from; its classifier is dropped."""
    model = DigitsCNN(image_size=image_size, in_chans=in_chans)
    if pretrained_file:
        robench.load_backbone_weights(model, pretrained_file)
    return model


def none(*, num_features: int) -> SourceOnly:
    return SourceOnly()


def dann(*, num_features: int, **params) -> DANN:
    return DANN(num_features, **params)


def coral(*, num_features: int, weight: float = 1.0) -> CORAL:
    return CORAL(num_features, weight=weight)


def _dann_signature() -> None:
    """Expose DANN's keyword parameters on the factory, so bad config keys are caught early."""
    import inspect

    params = [inspect.Parameter("num_features", inspect.Parameter.KEYWORD_ONLY)]
    for p in list(inspect.signature(DANN.__init__).parameters.values())[2:]:
        params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    dann.__signature__ = inspect.Signature(params)


_dann_signature()
