"""Common corruptions (Hendrycks & Dietterich 2019) as attacks with threat ``corruption``.

The eps of a corruption is its severity, an integer 1..5 (0 returns the image unchanged).
Constants are CIFAR-10-C's, the variant made for small images.  None of them looks at the
model: a corruption is a fixed distribution shift, and the harness measures accuracy on it.
"""

from __future__ import annotations

import abc
import io
import math

import torch
import torchvision.transforms.functional as TF
from torch import nn

import robench
from robench_attacks._core import Rng, Tensor, positive_int
from robench_attacks.base import NativeAttack


class Corruption(NativeAttack, abc.ABC):
    """Base of the corruptions: validates the severity and applies ``corrupt``."""

    threat = "corruption"
    kind = "bounded"
    #: one constant per severity 1..5
    levels: tuple[float, ...] = ()
    #: one line for ``robench plugins``
    summary: str = ""

    def severity(self, eps: float | None) -> int:
        if eps is None:
            raise robench.UsageError(
                f"{self.name} is a corruption; its eps is the severity, an integer 1..5."
            )
        value = float(eps)
        if value != int(value) or not 0 <= value <= 5:
            raise robench.UsageError(
                f"{self.name}: the eps of a corruption is its severity, an integer 0..5 "
                f"(0 = clean); got {eps!r}. Use e.g. --eps corruption:1,3,5."
            )
        return int(value)

    def perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, eps: float | None,
        target: Tensor | None = None,
    ) -> Tensor:
        x, y, target = self._batch(x, y, target)
        level = self.severity(eps)
        if level == 0 or x.shape[0] == 0:
            return x.clone()
        return self.corrupt(x, self.levels[level - 1]).clamp(0.0, 1.0)

    @abc.abstractmethod
    def corrupt(self, x: Tensor, c: float) -> Tensor:
        """The corrupted images at constant ``c`` (clipped to [0, 1] by the caller)."""


class GaussianNoise(Corruption):
    """Additive Gaussian noise, std ``(0.04, 0.06, 0.08, 0.09, 0.10)`` per severity."""

    name = "gaussian-noise"
    summary = "Additive Gaussian noise, std 0.04..0.10."
    levels = (0.04, 0.06, 0.08, 0.09, 0.10)

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__()
        self.rng = Rng(seed)
        self.params = {"levels": self.levels, "seed": seed}

    def corrupt(self, x: Tensor, c: float) -> Tensor:
        return x + c * self.rng.randn(x.shape, x)


class GaussianBlur(Corruption):
    """Gaussian blur, sigma ``(0.4, 0.6, 0.7, 0.8, 1.0)`` pixels at 32x32 per severity.

    With ``scale_with_size=True`` (default) sigma scales with the image side over 32, so a
    severity blurs away the same share of the content at 16x16 as at 224x224.  The kernel
    spans +-3 sigma (at least 3 pixels), with reflect padding.
    """

    name = "gaussian-blur"
    summary = "Gaussian blur, sigma 0.4..1.0 px at 32x32, scaled with size."
    levels = (0.4, 0.6, 0.7, 0.8, 1.0)

    def __init__(self, *, scale_with_size: bool = True) -> None:
        super().__init__()
        self.scale_with_size = bool(scale_with_size)
        self.params = {"levels": self.levels, "scale_with_size": self.scale_with_size}

    def corrupt(self, x: Tensor, c: float) -> Tensor:
        side = min(x.shape[-2:])
        sigma = c * side / 32.0 if self.scale_with_size else c
        radius = max(1, math.ceil(3.0 * sigma))
        size = min(2 * radius + 1, 2 * ((side - 1) // 2) + 1)  # odd, no wider than the image
        return TF.gaussian_blur(x, kernel_size=[size, size], sigma=[sigma, sigma])


class Contrast(Corruption):
    """Contrast reduction toward the per-image, per-channel mean, factor
    ``(0.75, 0.5, 0.4, 0.3, 0.15)`` per severity."""

    name = "contrast"
    summary = "Contrast reduction to 0.75..0.15 around the channel mean."
    levels = (0.75, 0.5, 0.4, 0.3, 0.15)

    def __init__(self) -> None:
        super().__init__()
        self.params = {"levels": self.levels}

    def corrupt(self, x: Tensor, c: float) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        return (x - mean) * c + mean


class Brightness(Corruption):
    """Brightness: add ``(0.05, 0.1, 0.15, 0.2, 0.3)`` to the HSV value channel.

    Hue and saturation stay fixed, so RGB scales by ``min(V + c, 1) / V`` (a black pixel
    becomes grey ``c``); single-channel images simply get ``+c``.
    """

    name = "brightness"
    summary = "Brightness: +0.05..0.3 on the HSV value."
    levels = (0.05, 0.1, 0.15, 0.2, 0.3)

    def __init__(self) -> None:
        super().__init__()
        self.params = {"levels": self.levels}

    def corrupt(self, x: Tensor, c: float) -> Tensor:
        if x.shape[1] != 3:
            return x + c
        value = x.amax(dim=1, keepdim=True)
        new_value = (value + c).clamp(max=1.0)
        scaled = x * new_value / value.clamp_min(1e-12)
        return torch.where(value > 0, scaled, new_value.expand_as(x))


class Jpeg(Corruption):
    """JPEG compression at quality ``(80, 65, 58, 50, 40)`` per severity.

    Encoded and decoded with Pillow (as CIFAR-10-C was made), per image on the CPU; 1- and
    3-channel images.  Pillow rather than ``torchvision.io``, whose JPEG codec is deprecated.
    """

    name = "jpeg"
    summary = "JPEG compression at quality 80..40."
    levels = (80, 65, 58, 50, 40)

    def __init__(self) -> None:
        super().__init__()
        self.params = {"levels": self.levels}

    def corrupt(self, x: Tensor, c: float) -> Tensor:
        import numpy as np
        from PIL import Image

        if x.shape[1] not in (1, 3):
            raise robench.UsageError(
                f"jpeg needs 1- or 3-channel images, got {x.shape[1]} channels."
            )
        quality = positive_int(c, name="quality", attack=self.name)
        pixels = (x.detach().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).numpy()
        decoded = []
        for image in pixels:
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                buffer, format="JPEG", quality=quality)
            buffer.seek(0)
            array = np.asarray(Image.open(buffer), dtype=np.uint8)
            decoded.append(array[..., None] if array.ndim == 2 else array)
        out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
        return out.to(device=x.device, dtype=x.dtype) / 255.0


CORRUPTIONS: tuple[type[Corruption], ...] = (GaussianNoise, GaussianBlur, Contrast, Brightness,
                                             Jpeg)
