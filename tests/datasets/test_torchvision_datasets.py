"""``cifar10``, ``cifar100``, ``mnist``, ``svhn`` from tiny files in torchvision's own formats.

The files are written here, byte for byte in the layout torchvision reads (pickled CIFAR
batches, MNIST's idx-ubyte files, SVHN's MATLAB files), so the real torchvision loaders run.
CIFAR and SVHN are also checked against fixed MD5 sums that tiny files cannot match; the
``accept_any_md5`` fixture replaces only that comparison (``torchvision.datasets.utils.
check_md5``, which both loaders reach through ``check_integrity``), and one test without
it shows the failed checksum is reported as such.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.utils
from robench_datasets.torchvision_sets import cifar10, cifar100, mnist, svhn

import robench

N_TRAIN, N_TEST = 12, 6


def _pixels(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def accept_any_md5(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Let tiny files pass torchvision's MD5 comparison; returns the files it was asked about."""
    asked: list[str] = []

    def check_md5(fpath: str, md5: str, **kwargs: object) -> bool:
        asked.append(Path(fpath).name)
        return True

    monkeypatch.setattr(torchvision.datasets.utils, "check_md5", check_md5)
    return asked


# ------------------------------------------------------------------------------ writers


def write_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five training batches, one test batch and batches.meta, as CIFAR's python pickles:
    ``data`` is uint8 (N, 3072) in channel-major order, ``labels`` a list of ints."""
    folder = root / "cifar-10-batches-py"
    train = _pixels(N_TRAIN, (3, 32, 32), seed=1)
    test = _pixels(N_TEST, (3, 32, 32), seed=2)
    train_labels = np.arange(N_TRAIN) % 10
    test_labels = (np.arange(N_TEST) * 3) % 10
    for b, rows in enumerate(np.array_split(np.arange(N_TRAIN), 5)):
        _pickle(folder / f"data_batch_{b + 1}",
                {"data": train[rows].reshape(-1, 3072), "labels": train_labels[rows].tolist()})
    _pickle(folder / "test_batch",
            {"data": test.reshape(-1, 3072), "labels": test_labels.tolist()})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    _pickle(folder / "batches.meta", {"label_names": names})
    return train, train_labels, test, test_labels


def write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    train = _pixels(N_TRAIN, (3, 32, 32), seed=3)
    fine = (np.arange(N_TRAIN) * 7) % 100
    _pickle(folder / "train", {"data": train.reshape(-1, 3072), "fine_labels": fine.tolist(),
                               "coarse_labels": (fine // 5).tolist()})
    test = _pixels(N_TEST, (3, 32, 32), seed=4)
    _pickle(folder / "test", {"data": test.reshape(-1, 3072),
                              "fine_labels": list(range(N_TEST)),
                              "coarse_labels": [0] * N_TEST})
    _pickle(folder / "meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)],
                              "coarse_label_names": [f"super{i:02d}" for i in range(20)]})
    return train, fine


def _idx(path: Path, array: np.ndarray) -> None:
    """The idx format: big-endian magic (0x0800 | ndim, 0x08 = uint8), sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I",
                                                                  *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    train = _pixels(N_TRAIN, (28, 28), seed=5)
    train_labels = np.arange(N_TRAIN) % 10
    _idx(raw / "train-images-idx3-ubyte", train)
    _idx(raw / "train-labels-idx1-ubyte", train_labels)
    _idx(raw / "t10k-images-idx3-ubyte", _pixels(N_TEST, (28, 28), seed=6))
    _idx(raw / "t10k-labels-idx1-ubyte", np.arange(N_TEST) % 10)
    return train, train_labels


def write_svhn(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's MATLAB files: ``X`` is (32, 32, 3, N) uint8 and ``y`` (N, 1) with 10 for 0."""
    root.mkdir(parents=True, exist_ok=True)
    train = _pixels(N_TRAIN, (3, 32, 32), seed=7)
    digits = np.arange(N_TRAIN) % 10
    scipy.io.savemat(root / "train_32x32.mat", {
        "X": train.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None]})
    test = _pixels(N_TEST, (3, 32, 32), seed=8)
    scipy.io.savemat(root / "test_32x32.mat", {
        "X": test.transpose(2, 3, 1, 0), "y": np.full((N_TEST, 1), 10, dtype=np.uint8)})
    return train, digits


# ------------------------------------------------------------------------------ tests


def test_cifar10_native(tmp_path: Path, accept_any_md5: list[str]) -> None:
    train, train_labels, test, test_labels = write_cifar10(tmp_path)
    bundle = cifar10(root=str(tmp_path))
    assert "data_batch_1" in accept_any_md5  # torchvision did run its integrity check
    assert (bundle.name, bundle.num_classes, bundle.image_size, bundle.in_chans) == (
        "cifar10", 10, 32, 3)
    assert bundle.class_names[0] == "airplane" and len(bundle.class_names) == 10
    assert bundle.train.images.dtype == torch.float32
    assert torch.equal(bundle.train.images, torch.from_numpy(train).float() / 255)
    assert bundle.train.labels.tolist() == train_labels.tolist()
    assert torch.equal(bundle.test.images, torch.from_numpy(test).float() / 255)
    assert bundle.test.labels.dtype == torch.int64
    assert bundle.test.labels.tolist() == test_labels.tolist()


def test_cifar10_resize_gray_and_limits(tmp_path: Path, accept_any_md5: list[str]) -> None:
    write_cifar10(tmp_path)
    bundle = cifar10(root=tmp_path, image_size=16, channels=1, max_train=5, max_test=2)
    assert bundle.train.images.shape == (5, 1, 16, 16)
    assert bundle.test.images.shape == (2, 1, 16, 16)
    assert bundle.train.images.min() >= 0 and bundle.train.images.max() <= 1


def test_cifar100_fine_labels(tmp_path: Path, accept_any_md5: list[str]) -> None:
    train, fine = write_cifar100(tmp_path)
    bundle = cifar100(root=tmp_path)
    assert bundle.num_classes == 100 and bundle.class_names[7] == "class07"
    assert bundle.train.labels.tolist() == fine.tolist()
    assert torch.equal(bundle.train.images, torch.from_numpy(train).float() / 255)
    assert len(bundle.test) == N_TEST


def test_mnist_is_native_grey_by_default_and_rgb32_on_request(tmp_path: Path) -> None:
    train, labels = write_mnist(tmp_path)  # MNIST checks that files exist, not their MD5
    native = mnist(root=tmp_path)
    assert native.train.images.shape == (N_TRAIN, 1, 28, 28)
    assert (native.image_size, native.in_chans, native.num_classes) == (28, 1, 10)
    assert native.train.labels.tolist() == labels.tolist()
    assert torch.equal(native.train.images[:, 0], torch.from_numpy(train).float() / 255)
    assert len(native.test) == N_TEST
    rgb = mnist(root=tmp_path, image_size=32, channels=3)
    assert rgb.train.images.shape == (N_TRAIN, 3, 32, 32)
    assert torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 2])


def test_svhn_maps_label_10_to_0(tmp_path: Path, accept_any_md5: list[str]) -> None:
    train, digits = write_svhn(tmp_path)
    bundle = svhn(root=tmp_path)
    assert bundle.train.labels.tolist() == digits.tolist()
    assert bundle.test.labels.tolist() == [0] * N_TEST
    assert torch.equal(bundle.train.images, torch.from_numpy(train).float() / 255)
    assert list(bundle.class_names) == [str(d) for d in range(10)]


@pytest.mark.parametrize("factory", [cifar10, cifar100, mnist, svhn])
def test_missing_root_or_files(tmp_path: Path, factory) -> None:
    with pytest.raises(robench.UsageError, match="needs root="):
        factory()
    with pytest.raises(robench.UsageError, match="does not exist"):
        factory(root=tmp_path / "nowhere")
    with pytest.raises(robench.UsageError, match="missing under it.*download=true"):
        factory(root=tmp_path)
    with pytest.raises(robench.UsageError, match="download must be true or false"):
        factory(root=tmp_path, download="no")
    with pytest.raises(robench.UsageError, match="max_train"):
        factory(root=tmp_path, max_train=0)


def test_failed_checksum_is_reported(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(robench.UsageError, match="fail torchvision's checksum"):
        cifar10(root=tmp_path)
