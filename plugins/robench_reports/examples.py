"""Reading the harness's example-image files (``run_dir/examples/*.npz``) for the HTML report.

The harness saves, per model and domain, a few clean images with their adversarial versions
and predictions, and optionally one image per class optimised from noise.  A report must not
fail because one of these files is broken (an interrupted run, an old format), but it must
not hide that either: :func:`load_examples` returns the good files and one message per bad
one, which the HTML report shows.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TEXT_KEYS = ("model", "domain", "dataset", "attack", "threat")
_IMAGE_KEYS = ("images_clean", "images_adv")
_INT_KEYS = ("labels", "pred_clean", "pred_adv")


@dataclass
class ExampleSet:
    """One npz file: ``k`` clean/adversarial pairs of one model on one domain."""

    path: Path
    model: str
    domain: str
    dataset: str
    attack: str
    threat: str
    eps: float
    images_clean: np.ndarray  # uint8 (k, H, W, C)
    images_adv: np.ndarray  # uint8 (k, H, W, C)
    labels: np.ndarray
    pred_clean: np.ndarray
    pred_adv: np.ndarray
    class_names: list[str]
    class_images: np.ndarray | None  # uint8 (num_classes, H, W, C)

    def class_name(self, index: int) -> str:
        """The class's name, or its number when the file names fewer classes."""
        index = int(index)
        if 0 <= index < len(self.class_names) and self.class_names[index]:
            return self.class_names[index]
        return str(index)


def _text(data: np.lib.npyio.NpzFile, key: str) -> str:
    value = np.asarray(data[key])
    if value.dtype.kind not in "US":
        raise ValueError(f"key {key!r} must be a string, got dtype {value.dtype}")
    return str(value.reshape(-1)[0]) if value.size else ""


def _images(value: np.ndarray, key: str) -> np.ndarray:
    """``(k, H, W, C)`` uint8; ``(k, H, W)`` grayscale gets a channel axis."""
    value = np.asarray(value)
    if value.dtype != np.uint8:
        raise ValueError(f"{key} must be uint8, got {value.dtype}")
    if value.ndim == 3:
        value = value[..., None]
    if value.ndim != 4 or value.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{key} must have shape (k, H, W, C) with C in 1, 3, 4; "
                         f"got {value.shape}")
    return value


def read_example_set(path: Path) -> ExampleSet:
    """Load and check one npz (``allow_pickle=False``: the file may come from anywhere)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in (*_TEXT_KEYS, "eps", *_IMAGE_KEYS, *_INT_KEYS, "class_names")
                   if k not in data.files]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(missing)}")
        texts = {key: _text(data, key) for key in _TEXT_KEYS}
        eps = float(np.asarray(data["eps"]).reshape(-1)[0])
        clean = _images(data["images_clean"], "images_clean")
        adv = _images(data["images_adv"], "images_adv")
        if clean.shape != adv.shape:
            raise ValueError(f"images_clean {clean.shape} and images_adv {adv.shape} differ")
        ints = {}
        for key in _INT_KEYS:
            value = np.asarray(data[key]).reshape(-1)
            if value.dtype.kind not in "iu" or value.shape[0] != clean.shape[0]:
                raise ValueError(f"{key} must be {clean.shape[0]} integers, got "
                                 f"{value.dtype} {value.shape}")
            ints[key] = value.astype(np.int64)
        names = np.asarray(data["class_names"]).reshape(-1)
        if names.size and names.dtype.kind not in "US":
            raise ValueError(f"class_names must be strings, got {names.dtype}")
        class_images = None
        if "class_images" in data.files:
            class_images = _images(data["class_images"], "class_images")
    return ExampleSet(path=path, eps=eps, images_clean=clean, images_adv=adv,
                      class_names=[str(n) for n in names], class_images=class_images,
                      **texts, **ints)


def load_examples(examples_dir: Path | None) -> tuple[list[ExampleSet], list[str]]:
    """Every readable example file in ``examples_dir`` (sorted), and a problem per bad one."""
    if examples_dir is None:
        return [], []
    examples_dir = Path(examples_dir)
    if not examples_dir.is_dir():
        return [], []
    sets, problems = [], []
    for path in sorted(examples_dir.glob("*.npz")):
        try:
            sets.append(read_example_set(path))
        except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile, EOFError) as exc:
            problems.append(f"{path.name}: {exc}")
    return sets, problems


def perturbation_image(clean: np.ndarray, adv: np.ndarray) -> tuple[np.ndarray, float]:
    """The perturbation made visible: mid-gray is zero, amplified so the largest change in
    the batch spans half the range; returns the images and the amplification factor.

    Adversarial perturbations are a few grey levels, invisible at scale 1; one factor per
    batch (not per image) keeps the images comparable with each other.
    """
    delta = adv.astype(np.int16) - clean.astype(np.int16)
    largest = int(np.abs(delta).max()) if delta.size else 0
    factor = 127.5 / largest if largest else 1.0
    shown = np.clip(np.rint(127.5 + delta * factor), 0, 255).astype(np.uint8)
    return shown, factor
