"""Inference-time defenses: wrappers of the evaluated model that transform its input.

``jpeg`` (Dziugaite et al. 2016; Guo et al. 2018) and ``bit-depth`` (feature squeezing, Xu et
al. 2018) are not differentiable: their plain backward is zero (what a gradient attack that
ignores them sees, so robench's ``zero-gradients`` flag fires) and straight-through under
``robench.defenses.bpda``.  ``random-resize-pad`` (Xie et al. 2018) is differentiable but
randomised: attack it with ``robench.defenses.eot``.
"""

from __future__ import annotations

import io
import math
from typing import Annotated

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

import robench
from robench.defenses import InferenceWrapper


class JPEG(InferenceWrapper):
    """JPEG compression at ``quality`` (1-100, default 75) of every image, then the model.

    Images are quantised to 8 bits, encoded and decoded (Pillow's libjpeg), on the CPU;
    1 (grayscale) or 3 (RGB) channels.
    """

    randomised = False
    differentiable = False

    def __init__(self, model: nn.Module, *, quality: int = 75) -> None:
        super().__init__(model)
        self.quality = int(quality)  # checked by the factory

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] not in (1, 3):
            raise robench.UsageError(
                f"defense 'jpeg' compresses 1- or 3-channel images; these have {x.shape[1]}.")
        pixels = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(pixels)
        for i, image in enumerate(pixels):
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                buffer, format="JPEG", quality=self.quality)
            buffer.seek(0)
            decoded = np.asarray(Image.open(buffer))
            out[i] = decoded.reshape(image.shape)
        images = torch.from_numpy(out).permute(0, 3, 1, 2)
        return images.to(device=x.device, dtype=x.dtype) / 255.0


class BitDepth(InferenceWrapper):
    """Reduce each pixel to ``bits`` bits (1-8, default 4): ``round(x (2^b - 1)) / (2^b - 1)``
    (Xu et al.'s feature squeezing; 1 bit on MNIST)."""

    randomised = False
    differentiable = False

    def __init__(self, model: nn.Module, *, bits: int = 4) -> None:
        super().__init__(model)
        self.bits = int(bits)  # checked by the factory

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels


class RandomResizePad(InferenceWrapper):
    """Xie et al. (2018)'s randomisation: each image is resized to a random side ``s`` and
    zero-padded at a random offset.

    Xie et al. enlarge 299 px to ``s`` in [299, 331) and pad to 331; robench's backbones may
    need their input size, so here the image shrinks to ``s`` in
    ``[ceil(min_scale * H), H]`` (bilinear; default ``min_scale = 0.9``, the paper's
    299 / 331) and is padded back to ``H x W``.  Every image of a batch draws its own size and
    offset from torch's global generator (seeded per task by the harness).
    """

    randomised = True
    differentiable = True

    def __init__(self, model: nn.Module, *, min_scale: float = 0.9) -> None:
        super().__init__(model)
        self.min_scale = float(min_scale)  # checked by the factory

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        side = min(h, w)
        smallest = max(1, math.ceil(self.min_scale * side))
        sides = torch.randint(smallest, side + 1, (n,)).float()
        sh, sw = torch.floor(h * sides / side), torch.floor(w * sides / side)
        top = torch.floor(torch.rand(n) * (h - sh + 1))
        left = torch.floor(torch.rand(n) * (w - sw + 1))
        # one batched bilinear resample: output pixel centre (j + 0.5) reads the source at
        # ((j + 0.5 - left) / sw) of its width (align_corners=False, as F.interpolate), and
        # reads zeros outside the placed image
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = w / sw
        theta[:, 0, 2] = (w - 2 * left) / sw - 1
        theta[:, 1, 1] = h / sh
        theta[:, 1, 2] = (h - 2 * top) / sh - 1
        grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [n, x.shape[1], h, w],
                             align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)


# The inference defenses' parameters, declared on their factories and checked by robench's
# one validator (``robench.checked``; the host checks them the same way before a build).
Quality = Annotated[int, robench.Check(ge=1, le=100, means="JPEG quality")]
Bits = Annotated[int, robench.Check(ge=1, le=8)]
MinScale = Annotated[float, robench.Check(gt=0, le=1)]


@robench.checked("[defense.jpeg]")
def jpeg(*, model: nn.Module, quality: Quality = 75) -> JPEG:
    return JPEG(model, quality=quality)


@robench.checked("[defense.bit-depth]")
def bit_depth(*, model: nn.Module, bits: Bits = 4) -> BitDepth:
    return BitDepth(model, bits=bits)


@robench.checked("[defense.random-resize-pad]")
def random_resize_pad(*, model: nn.Module, min_scale: MinScale = 0.9) -> RandomResizePad:
    return RandomResizePad(model, min_scale=min_scale)
