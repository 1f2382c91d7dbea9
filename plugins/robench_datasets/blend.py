"""MNIST-M's construction, shared by ``digits-m`` and ``mnist-m``.

Ganin & Lempitsky (ICML 2015, the DANN paper) made MNIST-M by blending each MNIST digit with
a patch cropped at random from a colour photograph: ``out = |digit - patch|`` per channel, so
the background shows the photo and the stroke shows its inverse.  They cropped BSDS500
photos; robench crops the colour photographs that scikit-image ships in its wheel, so the
target domain is built offline, deterministically from a seed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

# Colour photographs inside scikit-image's wheel that load without pooch or a network.
# hubble_deep_field and retina are left out: mostly black, they would barely change a digit.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
# Crops are taken from the photo at these scales too, so a patch shows anything from fine
# texture (full resolution) to whole objects and colour edges (downscaled).
PHOTO_SCALES = (1.0, 0.5, 0.25)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    """The source photographs as ``(3, H, W)`` float in [0, 1], full size."""
    import skimage.data  # imported only when a blended dataset is built

    return tuple(
        torch.from_numpy(getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0)
        .permute(2, 0, 1).contiguous()
        for name in PHOTOS
    )


@functools.lru_cache(maxsize=4)
def photo_pyramid(image_size: int) -> tuple[torch.Tensor, ...]:
    """Every photo at every scale whose shorter side still fits a patch of ``image_size``."""
    levels = []
    for photo in _photos():
        height, width = photo.shape[-2:]
        for scale in PHOTO_SCALES:
            size = (round(height * scale), round(width * scale))
            if min(size) < image_size:
                continue
            level = photo if scale == 1.0 else torch.nn.functional.interpolate(
                photo[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
            levels.append(level)
    return tuple(levels)


def blend_with_photos(
    digits: torch.Tensor,
    *,
    seed: int | Sequence[int],
    rows: np.ndarray | None = None,
    pool: int | None = None,
) -> torch.Tensor:
    """MNIST-M: ``|digit - patch|`` per channel, one seeded random photo crop per digit.

    ``digits`` are gray ``(N, 1, S, S)`` in [0, 1]; the result is ``(N, 3, S, S)`` in [0, 1].
    The draws (photo and scale, then the crop's corner) come from one generator seeded with
    ``seed`` and are made for a whole ``pool`` of images in its fixed order (default: the
    ``N`` given); ``rows[i]`` is the position of ``digits[i]`` in that pool (default ``i``).
    So an image gets the same patch whichever split or subset it is built in, and two calls
    give identical tensors.
    """
    if digits.ndim != 4 or digits.shape[1] != 1 or digits.shape[2] != digits.shape[3]:
        raise ValueError(f"digits must be gray (N, 1, S, S), got {tuple(digits.shape)}")
    n, image_size = int(digits.shape[0]), int(digits.shape[-1])
    pool = n if pool is None else int(pool)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    if rows.shape != (n,) or (n and (rows.min() < 0 or rows.max() >= pool)):
        raise ValueError(f"rows must be {n} positions inside a pool of {pool}")
    levels = photo_pyramid(image_size)
    if not levels:
        raise ValueError(f"no photo is large enough for {image_size}-pixel patches")
    rng = np.random.default_rng(seed)
    choice = rng.integers(len(levels), size=pool)
    corner = rng.random((pool, 2))
    out = torch.empty((n, 3, image_size, image_size), dtype=torch.float32)
    for i, row in enumerate(rows):
        level = levels[choice[row]]
        top = int(corner[row, 0] * (level.shape[1] - image_size + 1))
        left = int(corner[row, 1] * (level.shape[2] - image_size + 1))
        patch = level[:, top:top + image_size, left:left + image_size]
        out[i] = (digits[i] - patch).abs()
    return out
