"""The attack and the backbone that :mod:`robench_sign_noise.plugin` registers.

This module imports torch, so the registration module names these classes through
``robench.lazy`` instead of importing them: it is imported only when robench builds one of
them or checks its parameters, not by ``robench plugins`` or a refused name.
"""

from typing import Annotated

import torch
from torch import nn

import robench


class SignNoise:
    """Random +-eps on every pixel: a black-box baseline."""

    def perturb(self, model, x, y, eps, target=None):
        return (x + eps * torch.randn_like(x).sign()).clamp(0, 1)


#: robench checks ``[backbone.tiny-mlp] width`` against this before anything is built
Width = Annotated[int, robench.Check(ge=1, le=4096, means="hidden units")]


class TinyMLP(nn.Module):
    """Flatten -> Linear -> ReLU: pooled features of size ``width``."""

    def __init__(self, *, image_size: int, in_chans: int, width: Width = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size**2, width),
                                 nn.ReLU())
        self.num_features = width

    def forward(self, x):
        return self.net(x)
