"""Checks and pixel helpers shared by every dataset factory.

Factories receive parameters straight from a TOML config or the command line.  The types
below say what each common parameter accepts; robench's one validator checks them
(``robench.checked`` on each factory, ``host.build`` before a build) and a bad value becomes a
:class:`robench.UsageError` that names the config table, the parameter, what is accepted and
the value given (the CLI shows it as a one-paragraph error with exit code 2).  The pixel
helpers keep every dataset's images in the same form: float32 ``(N, C, H, W)`` in [0, 1],
square, resized the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F

import robench

MIN_IMAGE_SIZE = 4
MAX_IMAGE_SIZE = 512
CHANNELS = (1, 3)
# ITU-R BT.601 luma: how RGB images become one channel when a backbone wants gray input.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Converting and resizing in chunks bounds the transient memory of big datasets (CIFAR, SVHN).
CHUNK = 4096


# --------------------------------------------------------------------------- parameter checks


# What each common parameter accepts, declared once: the factories annotate their parameters
# with these types and are decorated with ``robench.checked``, so the host (``host.build``),
# the grid's validation and a direct call all check them with robench's one validator.

ImageSize = Annotated[int, robench.Check(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE,
                                         means="pixels per side of the square images")]
Channels = Annotated[int, robench.Check(test=lambda v: v in CHANNELS,
                                        rule="1 (gray) or 3 (RGB; gray images are repeated)")]
TestFraction = Annotated[float, robench.Check(
    gt=0, lt=1, means="the share of each class held out for testing")]
Seed = Annotated[int, robench.Check(ge=0)]
#: ``max_train``/``max_test``: keep the first N images of a split
Limit = Annotated[int | None, robench.Check(
    ge=1, rule="an integer >= 1, or left out for the whole split")]
#: a folder the user points at (checked for existence by :func:`check_path`)
FolderPath = str | os.PathLike[str] | None


def check_path(value: Any, *, dataset: str, name: str, must_exist: bool = True,
               hint: str = "") -> Path:
    """A folder the user points at; a missing one is the commonest configuration mistake."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise robench.UsageError(
            f"Dataset {dataset!r} needs {name}=PATH, the folder that holds its files "
            f"(e.g. `[data.\"{dataset}\"] {name} = \"data/{dataset}\"` in the config TOML)."
        )
    path = Path(value).expanduser()
    if must_exist and not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise robench.UsageError(
            f"Dataset {dataset!r}: {name} {str(path)!r} {what}. Point {name} at the folder "
            f"that holds the dataset{hint}."
        )
    return path


# --------------------------------------------------------------------------- pixels


def set_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat gray to RGB, or reduce RGB to luma, so any dataset feeds any backbone."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear with antialiasing: downscaling without aliasing, and no overshoot past [0, 1]."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.clamp_(0.0, 1.0)


def uint8_to_unit(images: np.ndarray | torch.Tensor, *, size: int, channels: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 ``(N, channels, size, size)`` in [0, 1], in chunks.

    Chunking matters for the torchvision datasets: 60,000 MNIST digits at 32x32x3 are 740 MB
    as float32, and converting them in one go would need several times that transiently.
    """
    data = torch.as_tensor(images)
    n = int(data.shape[0])
    out = torch.empty((n, channels, size, size), dtype=torch.float32)
    for start in range(0, n, CHUNK):
        chunk = data[start:start + CHUNK].float().div_(255.0)
        out[start:start + CHUNK] = resize(set_channels(chunk, channels), size)
    return out


# --------------------------------------------------------------------------- splits


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class hold-out, so every class is in both splits in the same proportion.

    Indices come back sorted, so the same seed gives the same split on every machine and the
    order of the source is kept (shuffling is the training loop's job).  A class with one
    image goes to train; every other class keeps at least one image in each split.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = 0
        if len(members) >= 2:
            n_test = min(max(int(round(len(members) * test_fraction)), 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
