"""``digits`` and ``digits-m`` on the real scans: form, split, determinism and the shift."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from robench_datasets.digits import digits, digits_m
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

import robench

N_DIGITS = 1797


def _flat(split: robench.TensorSplit) -> np.ndarray:
    return split.images.reshape(len(split), -1).numpy()


def test_digits_default_form() -> None:
    bundle = digits()
    assert (bundle.name, bundle.domain, bundle.num_classes) == ("digits", "digits", 10)
    assert (bundle.image_size, bundle.in_chans) == (32, 3)
    assert list(bundle.class_names) == [str(d) for d in range(10)]
    assert len(bundle.train) + len(bundle.test) == N_DIGITS
    assert len(bundle.test) == pytest.approx(0.3 * N_DIGITS, abs=10)
    for split in (bundle.train, bundle.test):
        assert isinstance(split, robench.TensorSplit)
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (3, 32, 32)
        assert split.images.min() >= 0 and split.images.max() <= 1
        assert split.images.max() > 0.99  # full ink reaches 1: 16/16
        assert torch.equal(split.images[:, 0], split.images[:, 2])  # gray repeated
        assert set(split.labels.tolist()) == set(range(10))
    image, label = bundle.test[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)


def test_digits_native_size_is_the_raw_scans() -> None:
    """At 8x8 and one channel no resampling happens: the images are exactly sklearn's / 16."""
    bundle = digits(image_size=8, channels=1)
    raw = load_digits()
    ours = torch.cat([bundle.train.images, bundle.test.images]).numpy()
    labels = torch.cat([bundle.train.labels, bundle.test.labels]).numpy()

    def keyed(images: np.ndarray, targets: np.ndarray) -> Counter:
        return Counter((img.astype(np.float32).tobytes(), int(t))
                       for img, t in zip(images, targets, strict=True))

    assert ours.shape == (N_DIGITS, 1, 8, 8)
    assert keyed(ours[:, 0], labels) == keyed(raw.images / 16.0, raw.target)


def test_digits_split_is_stratified_and_seeded() -> None:
    bundle = digits(test_fraction=0.3, split_seed=0)
    totals = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(bundle.test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - np.round(0.3 * totals)) <= 1)

    again = digits(test_fraction=0.3, split_seed=0)
    assert torch.equal(bundle.test.images, again.test.images)
    assert torch.equal(bundle.train.labels, again.train.labels)
    other = digits(split_seed=1)
    assert not torch.equal(bundle.test.images, other.test.images)
    assert len(digits(test_fraction=0.5).test) == pytest.approx(N_DIGITS / 2, abs=10)


def test_digits_cache_survives_callers_editing_their_tensors() -> None:
    first = digits(image_size=16)
    reference = first.train.images.clone()
    first.train.images.zero_()
    assert torch.equal(digits(image_size=16).train.images, reference)


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": "32"}, "image_size"),
        ({"image_size": True}, "image_size"),
        ({"image_size": 4096}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": 0}, "test_fraction"),
        ({"split_seed": -1}, "split_seed"),
        ({"split_seed": 1.5}, "split_seed"),
    ],
)
def test_digits_bad_params_are_usage_errors(params: dict, word: str) -> None:
    with pytest.raises(robench.UsageError, match=word):
        digits(**params)
    with pytest.raises(robench.UsageError, match=word):
        digits_m(**params)


def test_digits_m_bad_seed() -> None:
    with pytest.raises(robench.UsageError, match="seed must be an integer"):
        digits_m(seed="zero")


def test_digits_m_is_deterministic_with_the_same_split_and_labels() -> None:
    source = digits(image_size=16)
    target = digits_m(image_size=16)
    again = digits_m(image_size=16)
    assert (target.name, target.domain, target.num_classes) == ("digits-m", "digits-m", 10)
    assert torch.equal(target.train.images, again.train.images)
    assert torch.equal(target.test.images, again.test.images)
    assert torch.equal(target.train.labels, source.train.labels)
    assert torch.equal(target.test.labels, source.test.labels)
    assert target.train.images.shape == source.train.images.shape == (1258, 3, 16, 16)
    assert target.train.images.min() >= 0 and target.train.images.max() <= 1
    assert not torch.equal(digits_m(image_size=16, seed=1).test.images, target.test.images)
    gray = digits_m(image_size=16, channels=1)
    assert gray.in_chans == 1 and gray.test.images.shape[1] == 1


def test_digits_m_follows_the_mnist_m_recipe() -> None:
    """out = |digit - patch|: full ink (1) gives 1 - patch, background (0) gives the patch.
    Patches are drawn independently of the digit, so the mean over ink pixels and the mean
    over background pixels add up to 1 (E[1 - p] + E[p]); any other blend breaks this."""
    source = digits(image_size=8).test.images
    target = digits_m(image_size=8).test.images
    ink, background = source == 1.0, source == 0.0
    assert ink.float().mean() > 0.05 and background.float().mean() > 0.3
    assert target[ink].mean() + target[background].mean() == pytest.approx(1.0, abs=0.03)
    assert target[background].mean() > 0.2  # the photo shows through the black background


def test_digits_m_is_a_real_but_learnable_domain_shift() -> None:
    source = digits(image_size=16)
    target = digits_m(image_size=16)

    # Pixel statistics: digits are gray on black; digits-m is coloured and bright everywhere.
    assert (source.test.images - target.test.images).abs().mean() > 0.2
    src_channels = source.test.images.mean(dim=(0, 2, 3))
    tgt_channels = target.test.images.mean(dim=(0, 2, 3))
    assert torch.allclose(src_channels, src_channels[0].expand(3))
    assert (tgt_channels.max() - tgt_channels.min()) > 0.02
    background = source.test.images == 0
    assert target.test.images[background].mean() > 0.2

    # A classifier trained on digits (1-nearest-neighbour: fast, no tuning) loses most of its
    # accuracy on digits-m ...
    y_train, y_test = source.train.labels.numpy(), source.test.labels.numpy()
    clf = KNeighborsClassifier(n_neighbors=1).fit(_flat(source.train), y_train)
    on_source = clf.score(_flat(source.test), y_test)
    on_target = clf.score(_flat(target.test), y_test)
    assert on_source > 0.9
    assert on_target < on_source - 0.4
    # ... yet digits-m alone is learnable, far above chance (0.1), even by nearest neighbours.
    clf_target = KNeighborsClassifier(n_neighbors=1).fit(_flat(target.train), y_train)
    assert clf_target.score(_flat(target.test), y_test) > 0.5
