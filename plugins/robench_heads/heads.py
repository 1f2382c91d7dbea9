"""The transfer-learning heads' modules and factories (see :mod:`robench_heads.plugin`).

Imported when a head is built or its parameters are checked, not when the heads are listed.
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

import robench

PRETRAINED_LR_SCALE = 0.1

#: head parameters with bounds, checked by robench's one validator (``robench.checked`` on
#: the factories; the host checks them the same way before a build)
Stages = Annotated[int, robench.Check(ge=0, means="top-level backbone stages trained")]
Hidden = Annotated[int, robench.Check(ge=1)]
Dropout = Annotated[float, robench.Check(ge=0, lt=1)]


class Head(nn.Module):
    """A head plus the rules for how the backbone trains under it."""

    freeze_backbone = False

    def __init__(self, layers: nn.Module, *, backbone_lr_scale: float | None) -> None:
        super().__init__()
        self.layers = layers
        self._requested_scale = backbone_lr_scale
        self.backbone_lr_scale = 1.0 if backbone_lr_scale is None else float(backbone_lr_scale)

    def prepare_backbone(self, backbone: nn.Module) -> None:
        if self._requested_scale is None:
            pretrained = bool(getattr(backbone, "is_pretrained", False))
            self.backbone_lr_scale = PRETRAINED_LR_SCALE if pretrained else 1.0
        if self.freeze_backbone:
            for param in backbone.parameters():
                param.requires_grad_(False)

    def forward(self, features):
        return self.layers(features)


class ProbeHead(Head):
    freeze_backbone = True


class PartialHead(Head):
    """Trains the last ``trainable_stages`` top-level stages (children with parameters)."""

    def __init__(self, layers: nn.Module, *, trainable_stages: int,
                 backbone_lr_scale: float | None) -> None:
        super().__init__(layers, backbone_lr_scale=backbone_lr_scale)
        self.trainable_stages = trainable_stages

    def prepare_backbone(self, backbone: nn.Module) -> None:
        super().prepare_backbone(backbone)
        stages = [m for m in backbone.children() if any(True for _ in m.parameters())]
        keep = stages[len(stages) - self.trainable_stages:] if self.trainable_stages else []
        for param in backbone.parameters():
            param.requires_grad_(False)
        for stage in keep:
            for param in stage.parameters():
                param.requires_grad_(True)


def linear(*, num_features: int, num_classes: int,
           backbone_lr_scale: float | None = None) -> Head:
    return Head(nn.Linear(num_features, num_classes), backbone_lr_scale=backbone_lr_scale)


def linear_probe(*, num_features: int, num_classes: int) -> Head:
    return ProbeHead(nn.Linear(num_features, num_classes), backbone_lr_scale=0.0)


@robench.checked("[head.partial]")
def partial(*, num_features: int, num_classes: int, trainable_stages: Stages = 1,
            backbone_lr_scale: float | None = None) -> Head:
    return PartialHead(nn.Linear(num_features, num_classes), trainable_stages=trainable_stages,
                       backbone_lr_scale=backbone_lr_scale)


@robench.checked("[head.mlp]")
def mlp(*, num_features: int, num_classes: int, hidden: Hidden = 256, dropout: Dropout = 0.2,
        backbone_lr_scale: float | None = None) -> Head:
    layers = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                           nn.Linear(hidden, num_classes))
    return Head(layers, backbone_lr_scale=backbone_lr_scale)
