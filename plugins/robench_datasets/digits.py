"""``digits`` and ``digits-m``: a real source/target pair that needs no download.

``digits`` is scikit-learn's copy of the UCI optical handwritten digits (1,797 real 8x8
scans, shipped inside scikit-learn), so the default grid, the tests and the docs run offline
in seconds.  ``digits-m`` applies MNIST-M's recipe (Ganin et al., the DANN paper) to the same
images: each digit is blended with a crop of a colour photograph, ``|digit - patch|`` per
channel.  The photographs are the ones scikit-image ships in its wheel (no network), so the
pair is a genuine domain shift with identical labels and splits, which is what domain
adaptation (DANN) needs to be measured at all.

Both are cached in-process: a grid builds the same dataset once per model, and rebuilding
costs nothing after the first call.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import robench

from .common import (
    check_channels,
    check_fraction,
    check_image_size,
    check_int,
    resize,
    set_channels,
    stratified_split,
)

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
# Colour photographs inside scikit-image's wheel that load without pooch or a network.
# hubble_deep_field and retina are left out: mostly black, they would barely change a digit.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
# Crops are taken from the photo at these scales too, so a patch shows anything from fine
# texture (full resolution) to whole objects and colour edges (downscaled).
PHOTO_SCALES = (1.0, 0.5, 0.25)


@functools.lru_cache(maxsize=8)
def _digit_pixels(image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 digits as gray ``(N, 1, S, S)`` in [0, 1] (raw values run 0..16), labels."""
    from sklearn.datasets import load_digits  # 2 s to import: only when digits are built

    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    return resize(images, image_size), raw.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    """The source photographs as ``(3, H, W)`` float in [0, 1], full size."""
    import skimage.data

    return tuple(
        torch.from_numpy(getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0)
        .permute(2, 0, 1).contiguous()
        for name in PHOTOS
    )


@functools.lru_cache(maxsize=4)
def _photo_pyramid(image_size: int) -> tuple[torch.Tensor, ...]:
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


@functools.lru_cache(maxsize=8)
def _blended_pixels(image_size: int, seed: int) -> torch.Tensor:
    """MNIST-M: ``|digit - patch|`` per channel, one seeded random photo crop per digit.

    Every draw (photo, scale, position) comes from one generator seeded by ``seed`` and is
    made for all 1,797 digits in their fixed order, so a digit gets the same patch whatever
    split it lands in, and two calls give identical tensors.
    """
    digits, _ = _digit_pixels(image_size)
    levels = _photo_pyramid(image_size)
    rng = np.random.default_rng(seed)
    choice = rng.integers(len(levels), size=len(digits))
    corner = rng.random((len(digits), 2))
    out = torch.empty((len(digits), 3, image_size, image_size), dtype=torch.float32)
    for i, level_index in enumerate(choice):
        level = levels[level_index]
        top = int(corner[i, 0] * (level.shape[1] - image_size + 1))
        left = int(corner[i, 1] * (level.shape[2] - image_size + 1))
        patch = level[:, top:top + image_size, left:left + image_size]
        out[i] = (digits[i] - patch).abs()
    return out


def _bundle(
    *,
    name: str,
    images: torch.Tensor,
    labels: np.ndarray,
    channels: int,
    test_fraction: float,
    split_seed: int,
    info: dict[str, object],
) -> robench.DatasetBundle:
    """Split and wrap.  Indexing by rows copies, so callers may modify their tensors without
    touching the in-process cache."""
    train_idx, test_idx = stratified_split(labels, test_fraction=test_fraction, seed=split_seed)
    images = set_channels(images, channels)
    targets = torch.from_numpy(labels)

    def split(index: np.ndarray) -> robench.TensorSplit:
        rows = torch.from_numpy(index)
        return robench.TensorSplit(images[rows], targets[rows])

    return robench.DatasetBundle(
        name=name,
        num_classes=NUM_CLASSES,
        image_size=int(images.shape[-1]),
        in_chans=channels,
        train=split(train_idx),
        test=split(test_idx),
        class_names=CLASS_NAMES,
        domain=name,
        info={"test_fraction": test_fraction, "split_seed": split_seed, **info},
    )


def digits(
    *,
    image_size: int = 32,
    channels: int = 3,
    test_fraction: float = 0.3,
    split_seed: int = 0,
) -> robench.DatasetBundle:
    """scikit-learn's 8x8 handwritten digits, upscaled to ``image_size`` (32 suits timm models
    and the DANN digit CNN), gray repeated to ``channels``, split per class with
    ``split_seed``."""
    name = "digits"
    image_size = check_image_size(image_size, dataset=name)
    channels = check_channels(channels, dataset=name)
    test_fraction = check_fraction(test_fraction, dataset=name)
    split_seed = check_int(split_seed, dataset=name, name="split_seed")
    images, labels = _digit_pixels(image_size)
    return _bundle(
        name=name, images=images, labels=labels, channels=channels,
        test_fraction=test_fraction, split_seed=split_seed,
        info={"source": "sklearn.datasets.load_digits", "native_size": 8},
    )


def digits_m(
    *,
    image_size: int = 32,
    channels: int = 3,
    test_fraction: float = 0.3,
    split_seed: int = 0,
    seed: int = 0,
) -> robench.DatasetBundle:
    """``digits`` blended MNIST-M style with crops of colour photographs (chosen by ``seed``).

    Same images, labels and split as ``digits`` with the same ``test_fraction`` and
    ``split_seed``, so ``digits -> digits-m`` isolates the change of domain.
    """
    name = "digits-m"
    image_size = check_image_size(image_size, dataset=name)
    channels = check_channels(channels, dataset=name)
    test_fraction = check_fraction(test_fraction, dataset=name)
    split_seed = check_int(split_seed, dataset=name, name="split_seed")
    seed = check_int(seed, dataset=name, name="seed")
    _, labels = _digit_pixels(image_size)
    return _bundle(
        name=name, images=_blended_pixels(image_size, seed), labels=labels,
        channels=channels, test_fraction=test_fraction, split_seed=split_seed,
        info={"source": "sklearn.datasets.load_digits blended with skimage.data photos",
              "photos": list(PHOTOS), "seed": seed, "native_size": 8},
    )
