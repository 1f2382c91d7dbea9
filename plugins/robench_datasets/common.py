"""Checks and pixel helpers shared by every dataset factory.

Factories receive parameters straight from a TOML config or the command line, so every value
is checked here once, and a bad one becomes a :class:`robench.UsageError` that names the
dataset, the parameter, the value given and what is accepted (the CLI shows it as a
one-paragraph error with exit code 2).  The pixel helpers keep every dataset's images in the
same form: float32 ``(N, C, H, W)`` in [0, 1], square, resized the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def check_image_size(value: Any, *, dataset: str) -> int:
    """Images are square; the size must be an int a backbone can take and memory can hold."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
        MIN_IMAGE_SIZE <= int(value) <= MAX_IMAGE_SIZE
    ):
        raise robench.UsageError(
            f"Dataset {dataset!r}: image_size must be an integer from {MIN_IMAGE_SIZE} to "
            f"{MAX_IMAGE_SIZE} (pixels per side of the square images), got {value!r}."
        )
    return int(value)


def check_channels(value: Any, *, dataset: str) -> int:
    """Only gray (1) and RGB (3) have a meaning every backbone understands."""
    if isinstance(value, bool) or value not in CHANNELS:
        raise robench.UsageError(
            f"Dataset {dataset!r}: channels must be 1 (gray) or 3 (RGB; gray images are "
            f"repeated), got {value!r}."
        )
    return int(value)


def check_fraction(value: Any, *, dataset: str, name: str = "test_fraction") -> float:
    """A split fraction of 0 or 1 would leave one split empty."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise robench.UsageError(
            f"Dataset {dataset!r}: {name} must be a number strictly between 0 and 1 (the "
            f"share of each class held out for testing), got {value!r}."
        )
    return float(value)


def check_int(value: Any, *, dataset: str, name: str, minimum: int = 0) -> int:
    """Seeds and limits: plain integers (a bool is refused: ``True`` is not a seed)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise robench.UsageError(
            f"Dataset {dataset!r}: {name} must be an integer >= {minimum}, got {value!r}."
        )
    return int(value)


def check_optional_limit(value: Any, *, dataset: str, name: str) -> int | None:
    """``None`` means the whole split; otherwise a positive count."""
    if value is None:
        return None
    return check_int(value, dataset=dataset, name=name, minimum=1)


def check_flag(value: Any, *, dataset: str, name: str) -> bool:
    """A yes/no switch; strings such as ``"false"`` would be truthy, so only bools pass."""
    if not isinstance(value, bool):
        raise robench.UsageError(
            f"Dataset {dataset!r}: {name} must be true or false, got {value!r}."
        )
    return value


def check_path(value: Any, *, dataset: str, name: str, must_exist: bool = True,
               hint: str = "") -> Path:
    """A folder the user points at; a missing one is the commonest configuration mistake."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise robench.UsageError(
            f"Dataset {dataset!r} needs {name}=PATH, the folder that holds its files "
            f"(e.g. `[data.\"{dataset}\"] {name} = \"data/{dataset}\"` in the config TOML)."
        )
    if not isinstance(value, (str, os.PathLike)):
        raise robench.UsageError(
            f"Dataset {dataset!r}: {name} must be a path (a string), got {value!r}."
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
