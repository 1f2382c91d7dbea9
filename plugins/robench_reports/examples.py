"""Reading the harness's example-image files (``run_dir/examples/*.npz``) for the HTML report.

The harness saves, per model and domain, a few clean images with their adversarial versions
and predictions (of the attack behind the headline at the headline eps, or a fallback that
the file names as such), and optionally one image per class optimised from noise.  A report must not
fail because one of these files is broken (an interrupted run, an old format), but it must
not hide that either: :func:`load_examples` returns the good files and one message per bad
one, which the HTML report shows.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
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
    #: ``headline`` (the attack behind the headline, at the headline eps), ``fallback``, or
    #: ``""`` for a file from before the harness chose
    role: str = ""
    #: per example, the eps whose run found it (at most ``eps``) and the attack that did (a
    #: preset's member shows the members before it too); empty when the file does not say
    found_eps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    example_attacks: list[str] = field(default_factory=list)
    #: the attack behind the headline and its threat and eps, when the harness knew them
    headline_attack: str = ""
    headline_threat: str = ""
    headline_eps: float = float("nan")

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
        optional: dict[str, object] = {
            key: _text(data, key) for key in ("role", "headline_attack", "headline_threat")
            if key in data.files}
        if "headline_eps" in data.files:
            optional["headline_eps"] = float(np.asarray(data["headline_eps"]).reshape(-1)[0])
        if "found_eps" in data.files:
            found = np.asarray(data["found_eps"], dtype=np.float64).reshape(-1)
            if found.shape[0] != clean.shape[0]:
                raise ValueError(f"found_eps must be {clean.shape[0]} numbers, got "
                                 f"{found.shape[0]}")
            optional["found_eps"] = found
        if "example_attacks" in data.files:
            attacks = np.asarray(data["example_attacks"]).reshape(-1)
            if attacks.dtype.kind not in "US" or attacks.shape[0] != clean.shape[0]:
                raise ValueError(f"example_attacks must be {clean.shape[0]} strings")
            optional["example_attacks"] = [str(a) for a in attacks]
    return ExampleSet(path=path, eps=eps, images_clean=clean, images_adv=adv,
                      class_names=[str(n) for n in names], class_images=class_images,
                      **texts, **ints, **optional)


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


def smoothing_window(height: int, width: int) -> int:
    """The side of the neighbourhood a perturbation is averaged over: 3 pixels up to 64 px,
    then about a 32nd of the shorter side (odd), so the map looks alike at every size."""
    return max(3, (min(height, width) // 32) | 1)


def local_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each ``window`` x ``window`` neighbourhood of ``(k, H, W, C)`` values, the
    borders mirrored (a zero border would read as a weaker change at every edge)."""
    pad = window // 2
    padded = np.pad(values, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    sums = padded.cumsum(axis=1).cumsum(axis=2)
    sums = np.pad(sums, ((0, 0), (1, 0), (1, 0), (0, 0)))
    height, width = values.shape[1:3]
    total = (sums[:, window:window + height, window:window + width]
             - sums[:, :height, window:window + width]
             - sums[:, window:window + height, :width] + sums[:, :height, :width])
    return total / float(window * window)


@dataclass(frozen=True)
class PerturbationView:
    """Perturbations as diverging-colour images, and what the colours mean.

    ``images`` are uint8 RGB ``(k, H, W, 3)``: the local mean of the signed change
    ``adversarial - clean`` over the channels and a ``window`` x ``window`` neighbourhood,
    white = unchanged on average, red = brighter, blue = darker, full colour at each
    image's own largest absolute local mean, ``scales[i]`` (a fraction of the pixel range).
    ``label`` says so in a few words.
    """

    images: np.ndarray
    scales: np.ndarray
    window: int
    label: str


def perturbation_image(clean: np.ndarray, adv: np.ndarray) -> PerturbationView:
    """Where the attack changed the image, and which way: the signed change averaged over
    the channels and a small neighbourhood, relative to its largest absolute value in each
    image.

    The raw change of an Linf attack is +-eps at nearly every pixel, one flat speckle
    whatever the attack did.  Its local mean keeps what is structure, where the attack
    pushes neighbouring pixels the same way (along a stroke, over an object), and fades
    sign noise to white; scaling each image to its own largest value shows the pattern
    however small the budget.  The mean over the channels is the change of brightness.
    """
    delta = (adv.astype(np.float64) - clean.astype(np.float64)) / 255.0
    if delta.ndim == 3:
        delta = delta[..., None]
    delta = delta[..., :3].mean(axis=-1, keepdims=True)
    k, height, width = delta.shape[:3]
    window = smoothing_window(height, width)
    smooth = (local_mean(delta, window) if k else delta)[..., 0]
    scales = np.abs(smooth).reshape(k, -1).max(axis=1) if k else np.zeros(0)
    scaled = smooth / np.where(scales > 0, scales, 1.0)[:, None, None]
    return PerturbationView(
        images=diverging_rgb(scaled), scales=scales, window=window,
        label=f"{window}×{window} mean of the change, scaled per image to its largest")
