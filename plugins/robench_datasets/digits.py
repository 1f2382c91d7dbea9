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

from .blend import PHOTOS, blend_with_photos
from .common import (
    Channels,
    ImageSize,
    Seed,
    TestFraction,
    resize,
    set_channels,
    stratified_split,
)

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))


@functools.lru_cache(maxsize=8)
def _digit_pixels(image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 digits as gray ``(N, 1, S, S)`` in [0, 1] (raw values run 0..16), labels."""
    from sklearn.datasets import load_digits  # 2 s to import: only when digits are built

    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    return resize(images, image_size), raw.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _blended_pixels(image_size: int, seed: int) -> torch.Tensor:
    """All 1,797 digits blended MNIST-M style (:func:`blend.blend_with_photos`), in their
    fixed order, so a digit gets the same patch whatever split it lands in."""
    digits, _ = _digit_pixels(image_size)
    return blend_with_photos(digits, seed=seed)


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


@robench.checked(robench.table_ref("data", "digits"))
def digits(
    *,
    image_size: ImageSize = 32,
    channels: Channels = 3,
    test_fraction: TestFraction = 0.3,
    split_seed: Seed = 0,
) -> robench.DatasetBundle:
    """scikit-learn's 8x8 handwritten digits, upscaled to ``image_size`` (32 suits timm models
    and the DANN digit CNN), gray repeated to ``channels``, split per class with
    ``split_seed``."""
    name = "digits"
    images, labels = _digit_pixels(image_size)
    return _bundle(
        name=name, images=images, labels=labels, channels=channels,
        test_fraction=test_fraction, split_seed=split_seed,
        info={"source": "sklearn.datasets.load_digits", "native_size": 8},
    )


@robench.checked(robench.table_ref("data", "digits-m"))
def digits_m(
    *,
    image_size: ImageSize = 32,
    channels: Channels = 3,
    test_fraction: TestFraction = 0.3,
    split_seed: Seed = 0,
    seed: Seed = 0,
) -> robench.DatasetBundle:
    """``digits`` blended MNIST-M style with crops of colour photographs (chosen by ``seed``).

    Same images, labels and split as ``digits`` with the same ``test_fraction`` and
    ``split_seed``, so ``digits -> digits-m`` isolates the change of domain.
    """
    name = "digits-m"
    _, labels = _digit_pixels(image_size)
    return _bundle(
        name=name, images=_blended_pixels(image_size, seed), labels=labels,
        channels=channels, test_fraction=test_fraction, split_seed=split_seed,
        info={"source": "sklearn.datasets.load_digits blended with skimage.data photos",
              "photos": list(PHOTOS), "seed": seed, "native_size": 8},
    )
