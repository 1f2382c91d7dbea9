"""``cifar10``, ``cifar100``, ``mnist``, ``svhn``: the standard benchmarks, via torchvision.

torchvision's dataset classes own the on-disk formats, the download mirrors and the
checksums, so robench reuses them and only converts their in-memory arrays (uint8) into
resident float tensors in one vectorised pass, instead of going through PIL per image.
Nothing is downloaded unless ``download=true``: a benchmark run should never reach the
network behind the user's back, and a missing file is reported with the exact paths expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import robench

from .common import (
    Channels,
    FolderPath,
    ImageSize,
    Limit,
    check_path,
    uint8_to_unit,
)

DIGIT_NAMES = tuple(str(d) for d in range(10))

# (images uint8 (N, C, H, W), labels int64 (N,), class names) of one split.
Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


@dataclass(frozen=True)
class Source:
    """One torchvision dataset: how to load a split and which files it needs under ``root``."""

    name: str
    load: Callable[[Path, bool, bool], Arrays]  # (root, train, download) -> arrays
    files: Callable[[], list[str]]  # paths relative to root, read from torchvision's class
    holder: str  # what root must contain, for error messages


def _cifar_class(name: str) -> type:
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


def _cifar_loader(name: str) -> Callable[[Path, bool, bool], Arrays]:
    def load(root: Path, train: bool, download: bool) -> Arrays:
        ds = _cifar_class(name)(root=str(root), train=train, download=download)
        images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # stored HWC
        return images, np.asarray(ds.targets, dtype=np.int64), tuple(ds.classes)

    return load


def _cifar_files(name: str) -> Callable[[], list[str]]:
    def files() -> list[str]:
        cls = _cifar_class(name)
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{f}" for f in names]

    return files


def _load_mnist(root: Path, train: bool, download: bool) -> Arrays:
    from torchvision.datasets import MNIST

    ds = MNIST(root=str(root), train=train, download=download)
    return ds.data.numpy()[:, None], ds.targets.numpy().astype(np.int64), DIGIT_NAMES


def _mnist_files() -> list[str]:
    from torchvision.datasets import MNIST

    return [f"MNIST/raw/{Path(url).stem}" for url, _ in MNIST.resources]  # stem drops .gz


def _load_svhn(root: Path, train: bool, download: bool) -> Arrays:
    from torchvision.datasets import SVHN

    ds = SVHN(root=str(root), split="train" if train else "test", download=download)
    return ds.data, ds.labels.astype(np.int64), DIGIT_NAMES  # labels already map 10 -> 0


def _svhn_files() -> list[str]:
    from torchvision.datasets import SVHN

    return [SVHN.split_list[split][1] for split in ("train", "test")]


SOURCES: dict[str, Source] = {
    "cifar10": Source("cifar10", _cifar_loader("cifar10"), _cifar_files("cifar10"),
                      "cifar-10-batches-py/"),
    "cifar100": Source("cifar100", _cifar_loader("cifar100"), _cifar_files("cifar100"),
                       "cifar-100-python/"),
    "mnist": Source("mnist", _load_mnist, _mnist_files, "MNIST/raw/"),
    "svhn": Source("svhn", _load_svhn, _svhn_files, "train_32x32.mat and test_32x32.mat"),
}


def _load_split(source: Source, root: Path, *, train: bool, download: bool) -> Arrays:
    """torchvision's loader, with its RuntimeError/URLError turned into advice."""
    try:
        return source.load(root, train, download)
    except (RuntimeError, OSError) as exc:
        if download:
            raise robench.UsageError(
                f"Dataset {source.name!r}: download into {str(root)!r} failed ({exc}). Check "
                f"the network, or fetch the files yourself and point root at the folder that "
                f"holds {source.holder}."
            ) from exc
        expected = source.files()
        missing = [f for f in expected if not (root / f).is_file()]
        if missing:
            problem = (f"these files are missing under it: {', '.join(missing)}")
        else:
            problem = ("its files are all there but fail torchvision's checksum (truncated or "
                       "modified): delete them and download again")
        raise robench.UsageError(
            f"Dataset {source.name!r}: root {str(root)!r} should be the folder that holds "
            f"{source.holder}, but {problem}. Pass download=true to fetch them, or point root "
            f"at the folder that holds them."
        ) from exc


def _split(arrays: Arrays, *, limit: int | None, image_size: int,
           channels: int) -> robench.TensorSplit:
    images, labels, _ = arrays
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return robench.TensorSplit(uint8_to_unit(images, size=image_size, channels=channels),
                               torch.from_numpy(np.ascontiguousarray(labels)))


def load_torchvision(
    name: str,
    *,
    root: FolderPath,
    download: bool,
    image_size: int,
    channels: int,
    max_train: int | None,
    max_test: int | None,
) -> robench.DatasetBundle:
    """Check the params, load both splits through torchvision, convert, bundle."""
    source = SOURCES[name]
    folder = check_path(root, dataset=name, name="root", must_exist=not download,
                        hint=", or pass download=true to fetch it there")

    train_arrays = _load_split(source, folder, train=True, download=download)
    test_arrays = _load_split(source, folder, train=False, download=download)
    class_names = train_arrays[2]
    return robench.DatasetBundle(
        name=name,
        num_classes=len(class_names),
        image_size=image_size,
        in_chans=channels,
        train=_split(train_arrays, limit=max_train, image_size=image_size, channels=channels),
        test=_split(test_arrays, limit=max_test, image_size=image_size, channels=channels),
        class_names=class_names,
        domain=name,
        info={"root": str(folder), "native_size": int(train_arrays[0].shape[-1]),
              "max_train": max_train, "max_test": max_test},
    )


@robench.checked(robench.table_ref("data", "cifar10"))
def cifar10(*, root: FolderPath = None, download: bool = False, image_size: ImageSize = 32,
            channels: Channels = 3, max_train: Limit = None,
            max_test: Limit = None) -> robench.DatasetBundle:
    """CIFAR-10 from ``root/cifar-10-batches-py/``; ``max_train``/``max_test`` keep the first
    N images of a split (CIFAR's files are already shuffled), for CPU-sized runs."""
    return load_torchvision("cifar10", root=root, download=download, image_size=image_size,
                            channels=channels, max_train=max_train, max_test=max_test)


@robench.checked(robench.table_ref("data", "cifar100"))
def cifar100(*, root: FolderPath = None, download: bool = False, image_size: ImageSize = 32,
             channels: Channels = 3, max_train: Limit = None,
             max_test: Limit = None) -> robench.DatasetBundle:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python/``; limits as for ``cifar10``."""
    return load_torchvision("cifar100", root=root, download=download, image_size=image_size,
                            channels=channels, max_train=max_train, max_test=max_test)


@robench.checked(robench.table_ref("data", "mnist"))
def mnist(*, root: FolderPath = None, download: bool = False, image_size: ImageSize = 28,
          channels: Channels = 1, max_train: Limit = None,
          max_test: Limit = None) -> robench.DatasetBundle:
    """MNIST from ``root/MNIST/raw/`` in its native 1x28x28 grey by default (the format of
    the literature's MNIST numbers); ``channels=3`` repeats the grey to RGB, ``image_size``
    resizes.  The registered ``mnist`` (:mod:`robench_datasets.mnist`) reads the same files
    and falls back to the shipped subset."""
    return load_torchvision("mnist", root=root, download=download, image_size=image_size,
                            channels=channels, max_train=max_train, max_test=max_test)


@robench.checked(robench.table_ref("data", "svhn"))
def svhn(*, root: FolderPath = None, download: bool = False, image_size: ImageSize = 32,
         channels: Channels = 3, max_train: Limit = None,
         max_test: Limit = None) -> robench.DatasetBundle:
    """SVHN (cropped digits, label 0 for the digit 0) from ``root/train_32x32.mat`` and
    ``root/test_32x32.mat``; the usual source for SVHN -> MNIST adaptation."""
    return load_torchvision("svhn", root=root, download=download, image_size=image_size,
                            channels=channels, max_train=max_train, max_test=max_test)
