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

from robench_reports.figures import diverging_rgb

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


#: threat models whose eps bounds every pixel's change, so the colour scale can be +-eps
PIXEL_BOUNDED = ("linf",)


@dataclass(frozen=True)
class PerturbationView:
    """Signed perturbations as diverging-colour images and what the colour scale means.

    ``images`` are uint8 RGB ``(k, H, W, 3)``: white = unchanged, red = brighter, blue =
    darker, full colour at +-``scale`` (a fraction of the pixel range).  ``scale_label``
    says what that is, e.g. ``8/255 (eps)`` or ``0.094 (largest change)``.
    """

    images: np.ndarray
    scale: float
    scale_label: str


def perturbation_image(clean: np.ndarray, adv: np.ndarray, *, eps: float, threat: str,
                       eps_label: str = "") -> PerturbationView:
    """The signed perturbation ``adv - clean`` on a diverging colour map, scaled to eps.

    For an Linf attack every pixel may change by at most eps, so +-eps is the full colour:
    a reader sees both where the attack changed the image and how much of its budget it
    used there.  Other threats (an L2 or L0 budget is not a per-pixel bound) are scaled to
    the largest change in the batch, and the label says so.  Colour images show, per
    pixel, the channel that changed most, with its sign.
    """
    delta = (adv.astype(np.float64) - clean.astype(np.float64)) / 255.0
    if delta.ndim == 4 and delta.shape[-1] > 1:
        channel = np.abs(delta[..., :3]).argmax(axis=-1)[..., None]
        delta = np.take_along_axis(delta[..., :3], channel, axis=-1)
    delta = delta[..., 0] if delta.ndim == 4 else delta
    largest = float(np.abs(delta).max()) if delta.size else 0.0
    if threat in PIXEL_BOUNDED and np.isfinite(eps) and eps > 0:
        scale = float(eps)
        label = f"{eps_label or f'{eps:g}'} (eps)"
    else:
        scale = largest if largest > 0 else 1.0 / 255.0
        label = f"{scale:.3g} (largest change)"
    return PerturbationView(images=diverging_rgb(delta / scale), scale=scale,
                            scale_label=label)
