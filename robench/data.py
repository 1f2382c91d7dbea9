"""The data path: which samples are evaluated, how images are decoded, and in what form.

Every task reads its data through this module, so memory grows with the work asked (the
evaluated subset, a batch of training images), never with the size of the folder behind a
dataset:

* **Splits are map-style.**  A dataset's ``train``/``test`` may be an in-memory
  :class:`~robench.specs.TensorSplit` (the small built-ins) or a lazy :class:`ImageFiles`
  that lists files and decodes one on access (a folder of ImageNet's size).  Labels are
  known without decoding (:func:`labels_of`).
* **The evaluated subset is chosen by index** (:func:`subset_indices`: the same fixed rule
  for every dataset and every seed) and only it is decoded, through a
  ``torch.utils.data.DataLoader`` with worker processes (pinned memory on a GPU).
* **Decoded images stay 8-bit.**  Files decode to ``uint8`` pixels; :class:`Images` keeps the
  subset in that form and turns a batch into float32 in [0, 1] on the device when it is
  read (``x / 255``, exactly what torchvision's ``ToTensor`` computes), a quarter of the
  memory of a float subset.
* **A complete model gets its own preprocessing.**  :class:`Preprocess` is what a model
  declares (timm: the config timm resolves for it: input size, interpolation, crop_pct,
  resize then centre crop); a file-backed split decodes through it, so the model sees the
  pixels its own library would give it.  In-memory splits are already decoded and keep
  their pixels.
* **Training streams** the same way (:func:`training_batches`): the step's indices are drawn
  from the seeded generator exactly as for resident data, and a lazy split's batches are
  decoded ahead by loader workers.

This module imports torch lazily where it can; it is used by the tasks and by validation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robench.errors import UsageError
from robench.specs import Preprocess, TensorSplit

#: the evaluated subset is ``randperm(n, seed=SUBSET_SEED)[:limit]``, sorted: fixed for a
#: dataset whatever the run's seed, so two runs (and two seeds) attack the same images
SUBSET_SEED = 0
#: loader worker processes used to decode a lazy split, at most
MAX_LOADER_WORKERS = 4
#: ``eval_batch_size`` counts images of this many values (3x32x32): a batch of larger images
#: holds proportionally fewer, so memory is bounded by the batch whatever the image size.
#: A batch's activations (kept for the input gradient) grow with its pixels: at the default
#: 256, ImageNet's 3x224x224 images go 5 at a time (~0.3 GB for a ResNet-18's backward;
#: 256 of them would need ~15 GB).  On a GPU, raise eval_batch_size for larger batches
BATCH_REFERENCE_VALUES = 3 * 32 * 32


# --------------------------------------------------------------------------- lazy splits


class FitDecode:
    """The default decoding of a file: centre-crop to a square, resize (bilinear, with
    Pillow's antialiasing) to ``size``."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, image: Any) -> Any:
        from PIL import Image, ImageOps

        return ImageOps.fit(image, (self.size, self.size), method=Image.Resampling.BILINEAR)


class ImageFiles(torch.utils.data.Dataset):
    """A split of image files, decoded one at a time on access.

    Listing 50,000 files costs their paths and labels; nothing is decoded until an index is
    read.  ``decode`` turns the opened PIL image (converted to RGB or L) into a ``S x S``
    image: :class:`FitDecode` by default, a model's :class:`Preprocess` through
    :meth:`with_preprocess`.  A file that cannot be decoded raises :class:`UsageError`
    naming it.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], labels: Sequence[int], *,
                 size: int, channels: int, decode: Callable[[Any], Any] | None = None,
                 dataset: str = "imagefolder") -> None:
        if len(files) != len(labels):
            raise ValueError("files and labels must have the same length")
        self.files = [str(f) for f in files]
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.size = int(size)
        self.channels = int(channels)
        self.decode = decode if decode is not None else FitDecode(size)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image, label)``, the image float32 ``(C, S, S)`` in [0, 1] as every split's."""
        return self.pixels(index).float().div_(255.0), int(self.labels[index])

    def pixels(self, index: int) -> torch.Tensor:
        """Image ``index`` as 8-bit pixels ``(C, S, S)``: what the harness keeps in memory."""
        from PIL import Image, UnidentifiedImageError

        file = self.files[index]
        try:
            with Image.open(file) as image:
                image = self.decode(image.convert("RGB" if self.channels == 3 else "L"))
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise UsageError(
                f"Dataset {self.dataset!r}: cannot read image {file!r} ({exc}). Remove or "
                f"replace it; every file with an image suffix under the root is loaded."
            ) from exc
        array = np.asarray(image, dtype=np.uint8)
        if array.shape[:2] != (self.size, self.size):
            raise ValueError(f"decoding {file!r} gave {array.shape[:2]}, not {self.size}px")
        return torch.from_numpy(array.reshape(self.size, self.size, self.channels).copy()
                                ).permute(2, 0, 1)

    def with_preprocess(self, preprocess: Preprocess) -> ImageFiles:
        """The same files, decoded the way a model wants them."""
        return ImageFiles(self.files, self.labels, size=preprocess.size,
                          channels=self.channels, decode=preprocess.pil_transform(),
                          dataset=self.dataset)

    def subset(self, index: np.ndarray) -> ImageFiles:
        return ImageFiles([self.files[i] for i in index], self.labels[torch.as_tensor(index)],
                          size=self.size,
                          channels=self.channels, decode=self.decode, dataset=self.dataset)


def is_lazy(split: Any) -> bool:
    """Whether ``split`` decodes on access (anything but a resident tensor split)."""
    return not isinstance(split, TensorSplit)


def labels_of(split: Any) -> np.ndarray:
    """Every label of ``split`` as int64, without decoding images where the split knows them
    (:class:`TensorSplit`, :class:`ImageFiles`, torchvision's ``targets``)."""
    if isinstance(split, TensorSplit):
        return split.labels.numpy()
    if isinstance(split, ImageFiles):
        return split.labels.numpy()
    targets = getattr(split, "targets", None)  # torchvision's datasets name them so
    if targets is not None:
        return np.asarray(targets, dtype=np.int64)
    return np.asarray([int(split[i][1]) for i in range(len(split))], dtype=np.int64)


# --------------------------------------------------------------------------- subsets


def subset_indices(n: int, limit: int | None) -> torch.Tensor:
    """The evaluated samples of a split of ``n``: all of them, or ``limit`` of them drawn by
    a fixed seeded permutation and sorted (the rule every robench version has used)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))[:limit]
    return order.sort().values


def batch_size_for(batch_size: int, shape: Sequence[int]) -> int:
    """The evaluation batch for images of ``shape`` (C, H, W): ``batch_size`` images of at
    most 3x32x32 values, proportionally fewer of larger ones (:data:`BATCH_REFERENCE_VALUES`).
    The same rule on every machine keeps rows identical."""
    values = int(np.prod([int(s) for s in shape]))
    return max(1, min(int(batch_size), int(batch_size) * BATCH_REFERENCE_VALUES
                      // max(1, values)))


def loader_workers(requested: int | str | None = None) -> int:
    """Loader worker processes for decoding: ``requested``, or (``None``, ``"auto"``) one per
    usable core (at most :data:`MAX_LOADER_WORKERS`, at least one)."""
    if requested is not None and requested != "auto":
        return max(0, int(requested))
    from robench.jobs import usable_cpus

    return max(1, min(MAX_LOADER_WORKERS, usable_cpus()))


class Images:
    """An evaluated subset's images, read as float32 in [0, 1] on ``device`` by index.

    Holds 8-bit pixels (decoded files) or a float tensor (in-memory splits, whose pixels need
    not be multiples of 1/255); indexing returns a float tensor on the device, so the harness
    reads the subset batch by batch and never holds it as float32 when it came from files.
    """

    def __init__(self, data: torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.data = data
        self.device = torch.device(device)
        self.dtype = torch.float32

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, torch.Tensor) and index.device != self.data.device:
            index = index.to(self.data.device)
        rows = self.data[index]
        if rows.dtype == torch.uint8:
            return rows.to(self.device, non_blocking=True).float().div_(255.0)
        return rows.to(self.device).float()

    def rows(self, start: int, stop: int) -> Images:
        """Images ``[start, stop)`` (a view: nothing is copied or decoded)."""
        return Images(self.data[start:stop], self.device)

    def to(self, device: torch.device | str) -> Images:
        """The same images, read on ``device`` (their pixels stay where they are)."""
        return Images(self.data, device)

    def placed(self, device: torch.device | str) -> Images:
        """The pixels moved to ``device`` too (a GPU holds an 8-bit subset easily)."""
        return Images(self.data.to(device), device)

    def pixels_uint8(self) -> torch.Tensor:
        """The images as 8-bit pixels (for hashing), ``(N, C, H, W)``."""
        if self.data.dtype == torch.uint8:
            return self.data
        return (self.data.clamp(0, 1) * 255).round().to(torch.uint8)


class _Decoded(torch.utils.data.Dataset):
    """Items of a split for a loader: ``(pixels, label, error)``.  A file that cannot be
    decoded comes back as its error message, so the main process raises the one-paragraph
    :class:`UsageError` itself (an exception raised in a loader worker would reach it
    wrapped in the worker's traceback)."""

    def __init__(self, split: Any, indices: Sequence[int]) -> None:
        self.split, self.indices = split, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor | None, int, str]:
        index = self.indices[k]
        try:
            return _pixels(self.split, index), int(labels_at(self.split, index)), ""
        except UsageError as exc:
            return None, -1, str(exc)


def labels_at(split: Any, index: int) -> int:
    if isinstance(split, (ImageFiles, TensorSplit)):
        return int(split.labels[index])
    return int(split[index][1])


def _collate(batch: list[tuple[torch.Tensor | None, int, str]]
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    errors = [b[2] for b in batch if b[2]]
    if errors:  # raised by the main process, so the message stays one paragraph
        return None, None, errors[0]
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.long)
    return images, labels, ""


def iterate_subset(split: Any, indices: torch.Tensor, *, batch_size: int,
                   workers: int | str | None = None, device: torch.device | str = "cpu"
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The images ``indices`` of ``split`` in order, batch by batch, as stored: uint8 pixels
    of a lazy split (decoded by loader workers, pinned on a GPU) or the float rows of a
    resident one, with their labels."""
    if not is_lazy(split):
        for chunk in indices.split(batch_size):
            yield split.images[chunk], split.labels[chunk]
        return
    from torch.utils.data import DataLoader

    n_workers = min(loader_workers(workers), -(-len(indices) // max(1, batch_size)))
    loader = DataLoader(_Decoded(split, indices.tolist()), batch_size=batch_size,
                        shuffle=False, num_workers=n_workers, collate_fn=_collate,
                        pin_memory=torch.device(device).type == "cuda")
    for images, labels, error in loader:
        if error:
            raise UsageError(error)
        yield images, labels


def load_subset(split: Any, indices: torch.Tensor, *, batch_size: int = 256,
                workers: int | str | None = None, device: torch.device | str = "cpu",
                on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None
                ) -> tuple[Images, torch.Tensor]:
    """The evaluated subset as :class:`Images` and its labels on ``device``.

    ``on_batch(images_float_on_device, labels)`` sees each batch as it arrives, so a clean
    pass computes while the loader workers decode the next batches."""
    if not is_lazy(split) and on_batch is None:
        return Images(split.images[indices], device), split.labels[indices].to(device)
    store: torch.Tensor | None = None  # filled batch by batch: no second copy of the subset
    labels = torch.empty(len(indices), dtype=torch.long)
    filled = 0
    for xb, yb in iterate_subset(split, indices, batch_size=batch_size, workers=workers,
                                 device=device):
        if store is None:
            store = torch.empty((len(indices), *xb.shape[1:]), dtype=xb.dtype)
        store[filled:filled + len(xb)] = xb
        labels[filled:filled + len(yb)] = yb
        filled += len(xb)
        if on_batch is not None:
            on_batch(Images(xb, device)[:], yb.to(device))
    if store is None:
        raise UsageError("The evaluated subset is empty: the test split has no images.")
    return Images(store, device), labels.to(device)


def subset_file(run_dir: str | os.PathLike[str], dataset: str, dataset_params: dict[str, Any],
                preprocess: dict[str, Any] | None, limit: int | None) -> Path:
    """Where validation leaves the decoded evaluated subset of a file-backed dataset (as the
    model with ``preprocess`` sees it), for the tasks to map instead of decoding it again."""
    import hashlib
    import json

    key = json.dumps({"dataset": dataset, "params": dataset_params, "limit": limit,
                      "preprocess": preprocess}, sort_keys=True, default=str)
    return Path(run_dir) / "subsets" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def save_subset(path: Path, images: Images, labels: torch.Tensor) -> None:
    """Write a decoded subset: 8-bit pixels (``.npy``, memory-mappable) and labels, atomically
    (the pixels file is renamed into place last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = path.with_suffix(".npy")
    tmp = path.with_suffix(".tmp.npy")
    np.save(path.with_suffix(".labels.npy"), labels.cpu().numpy())
    np.save(tmp, images.pixels_uint8().cpu().numpy())
    os.replace(tmp, pixels)


def read_subset(path: Path, n: int, device: torch.device | str
                ) -> tuple[Images, torch.Tensor] | None:
    """A subset written by :func:`save_subset`, memory-mapped (the page cache holds it once
    for every process of the machine), or ``None`` when it is not there (another node, a
    run folder from before)."""
    pixels, labels = path.with_suffix(".npy"), path.with_suffix(".labels.npy")
    if not (pixels.is_file() and labels.is_file()):
        return None
    data = np.load(pixels, mmap_mode="c")  # copy-on-write: never written, pages shared
    if len(data) != n:
        return None
    return (Images(torch.from_numpy(data), device),
            torch.from_numpy(np.load(labels)).long().to(device))


def for_model(bundle: Any, preprocess: Preprocess | dict[str, Any] | None) -> Any:
    """``bundle`` as a model with its own ``preprocess`` sees it: file-backed splits decoded
    through it, at its input size.  In-memory splits (already decoded) are returned as they
    are, and so is a bundle whose splits cannot re-decode."""
    from dataclasses import replace

    if preprocess is None:
        return bundle
    if isinstance(preprocess, dict):
        preprocess = Preprocess(**preprocess)
    if not (isinstance(bundle.train, ImageFiles) and isinstance(bundle.test, ImageFiles)):
        return bundle
    return replace(bundle, train=bundle.train.with_preprocess(preprocess),
                   test=bundle.test.with_preprocess(preprocess), image_size=preprocess.size,
                   info={**bundle.info, "preprocess": preprocess.describe()})


def class_sample(labels: np.ndarray, classes: Sequence[int], per_class: int) -> np.ndarray:
    """Indices of at most ``per_class`` samples of each class in ``classes``: the first ones
    in index order (no randomness, no decoding), sorted."""
    keep = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


def pictured_classes(num_classes: int, most: int) -> list[int]:
    """The classes that get a class image: all of them up to ``most``, else ``most`` spread
    evenly over the class indices (0 and the last included)."""
    if most <= 0:
        return []
    if num_classes <= most:
        return list(range(num_classes))
    return sorted({int(round(i * (num_classes - 1) / (most - 1))) for i in range(most)}) \
        if most > 1 else [0]


def class_sums(split: Any, indices: np.ndarray, *, num_classes: int, batch_size: int = 256,
               workers: int | str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Per-class sums ``(num_classes, C, H, W)`` (float64, images in [0, 1]) and counts of
    ``indices``, decoded batch by batch; and the image shape."""
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    shape: tuple[int, ...] = ()
    for xb, yb in iterate_subset(split, torch.as_tensor(indices, dtype=torch.long),
                                 batch_size=batch_size, workers=workers):
        flat = Images(xb)[:].reshape(len(xb), -1).double()
        if sums is None:
            sums = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64)
            shape = tuple(xb.shape[1:])
        sums.index_add_(0, yb, flat)
        counts += torch.bincount(yb, minlength=num_classes).double()
    if sums is None:
        raise UsageError("No training images to compute class means from.")
    return sums.view(num_classes, *shape), counts, shape


# --------------------------------------------------------------------------- training


class _Steps(torch.utils.data.Dataset):
    """One epoch of training steps over lazy splits: item ``k`` decodes step ``k``'s source
    batch (and target batch)."""

    def __init__(self, source: Any, target: Any, steps: list[tuple[torch.Tensor, Any]]
                 ) -> None:
        self.source, self.target, self.steps = source, target, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
        idx, tidx = self.steps[k]
        try:
            xs = torch.stack([_pixels(self.source, int(i)) for i in idx])
            xt = None if tidx is None else torch.stack([_pixels(self.target, int(i))
                                                        for i in tidx])
        except UsageError as exc:
            return None, None, str(exc)
        return xs, xt, ""


def _pixels(split: Any, index: int) -> torch.Tensor:
    return split.pixels(index) if isinstance(split, ImageFiles) else \
        torch.as_tensor(split[index][0])


def _identity(item: Any) -> Any:
    return item


def as_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class TrainingData:
    """A training split for :func:`robench.training.train_model`: resident tensors (the
    small built-ins, placed on the device by ``BatchSource``) or a lazy split streamed
    through loader workers.  Batches come back as float32 in [0, 1] on the device."""

    def __init__(self, split: Any, *, workers: int | str | None = None) -> None:
        self.lazy = is_lazy(split)
        self.split = split
        self.labels = torch.as_tensor(labels_of(split)) if self.lazy else split.labels
        self.workers = workers

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def of(cls, data: Any) -> TrainingData:
        if isinstance(data, TrainingData):
            return data
        if isinstance(data, tuple):  # (images, labels) tensors
            return cls(TensorSplit(*data))
        return cls(data)


def training_batches(source: TrainingData, target: TrainingData | None,
                     steps: list[tuple[torch.Tensor, torch.Tensor | None]], *,
                     device: torch.device, resident: Any = None, resident_target: Any = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(xs, ys, xt)`` on ``device`` for each step ``(source indices, target indices)``.

    Resident data is indexed in place (``resident``/``resident_target``: ``BatchSource``);
    lazy data is decoded ahead, in order, by loader worker processes."""
    if not source.lazy and (target is None or not target.lazy):
        for idx, tidx in steps:
            xs, ys = resident.take(idx)
            xt = resident_target.take(tidx)[0] if tidx is not None else None
            yield xs, ys, xt
        return
    from torch.utils.data import DataLoader

    workers = loader_workers(source.workers)
    loader = DataLoader(_Steps(source.split, target.split if target is not None else None,
                               [(idx.cpu(), None if t is None else t.cpu()) for idx, t in steps]),
                        batch_size=None, shuffle=False, num_workers=min(workers, len(steps)),
                        collate_fn=_identity, pin_memory=device.type == "cuda")
    for (xs, xt, error), (idx, _t) in zip(loader, steps, strict=True):
        if error:
            raise UsageError(error)
        yield (as_float(xs, device), source.labels[idx.cpu()].to(device),
               None if xt is None else as_float(xt, device))


def check_decodable(split: Any, indices: torch.Tensor, *, batch_size: int = 256,
                    workers: int | str | None = None) -> Images:
    """Decode the evaluated subset once (validation): a corrupt file is a UsageError that
    names it, before any work.  Returns the decoded images."""
    images, _ = load_subset(split, indices, batch_size=batch_size, workers=workers)
    return images


def folder_files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted (one ``scandir``, no per-file ``stat``)."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if not e.name.startswith(".") and Path(e.name).suffix.lower() in suffixes
                      and e.is_file())
