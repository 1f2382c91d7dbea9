"""Transfer-learning heads: a new last layer trained on the task's labels.

``linear`` fine-tunes the whole model, ``linear-probe`` freezes the backbone, ``partial``
fine-tunes only its last ``trainable_stages`` stages, ``mlp`` is a hidden layer with dropout.
A pretrained backbone trains at ``backbone_lr_scale`` (default 0.1) times the head's learning
rate, as in Transfer-Learning-Library: its weights are already a good start.
"""

from __future__ import annotations

from torch import nn

import robench

PRETRAINED_LR_SCALE = 0.1


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
        if trainable_stages < 0:
            raise robench.UsageError("head 'partial': trainable_stages must be >= 0.")
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


def partial(*, num_features: int, num_classes: int, trainable_stages: int = 1,
            backbone_lr_scale: float | None = None) -> Head:
    return PartialHead(nn.Linear(num_features, num_classes), trainable_stages=trainable_stages,
                       backbone_lr_scale=backbone_lr_scale)


def mlp(*, num_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2,
        backbone_lr_scale: float | None = None) -> Head:
    if hidden < 1 or not 0 <= dropout < 1:
        raise robench.UsageError("head 'mlp': hidden must be >= 1 and dropout in [0, 1).")
    layers = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                           nn.Linear(hidden, num_classes))
    return Head(layers, backbone_lr_scale=backbone_lr_scale)


@robench.hookimpl
def robench_register_heads() -> list[robench.HeadSpec]:
    return [
        robench.HeadSpec(name="linear", factory=linear, backbone_training="fine-tune",
                         description="new linear layer; whole model fine-tuned"),
        robench.HeadSpec(name="linear-probe", factory=linear_probe, backbone_training="frozen",
                         description="new linear layer on a frozen backbone"),
        robench.HeadSpec(name="partial", factory=partial, backbone_training="partial",
                         description="new linear layer; last trainable_stages stages trained"),
        robench.HeadSpec(name="mlp", factory=mlp, backbone_training="fine-tune",
                         description="hidden layer (hidden, dropout) + linear; fine-tuned"),
    ]
