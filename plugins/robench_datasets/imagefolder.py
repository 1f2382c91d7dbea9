"""``imagefolder``: the user's own images, in the folder layouts people already have.

``root/class/image`` is torchvision's ``ImageFolder`` layout; ``root/domain/class/image`` is
how Office-31, PACS, OfficeHome and DomainNet ship, so ``domain=`` picks one domain and two
``imagefolder`` datasets with different domains make a transfer or adaptation pair.  A folder
that already has ``train/`` and ``test/`` (or ``val/``) keeps its split, because published
numbers use it; otherwise a seeded stratified split is made.

The splits are lazy (:class:`robench.ImageFiles`): building the dataset lists the files,
and an image is decoded only when it is read (Pillow; centre-cropped to a square and
resized to ``image_size``, bilinear with antialiasing), so a folder of ImageNet's 50,000
validation images costs its file list, not 60 GB of float32.  A complete model evaluated on
the folder decodes the same files through its own preprocessing instead (timm: resize then
centre crop at its input size), unless ``image_size`` is set here.
"""

from __future__ import annotations

from pathlib import Path

import robench
from robench.data import ImageFiles, folder_files

from .common import (
    Channels,
    FolderPath,
    ImageSize,
    Seed,
    TestFraction,
    check_path,
    stratified_split,
)

NAME = "imagefolder"
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
TEST_FOLDERS = ("test", "val")


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted so class indices are the same on every machine."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted.

    Not recursive, unlike torchvision's ImageFolder: walking down would silently read a
    ``root/domain/class/image`` tree as one class per domain.
    """
    return folder_files(folder, IMAGE_SUFFIXES)


def _class_tree(folder: Path) -> dict[str, list[Path]]:
    """``{class name: image files}`` for a ``folder/class/image`` tree; empty classes dropped."""
    classes = {sub.name: _images_in(sub) for sub in _subfolders(folder)}
    return {name: files for name, files in classes.items() if files}


def _unwrap(folder: Path) -> Path:
    """Step through lone wrapper folders such as Office-31's ``amazon/images/``.

    A folder with no images of its own and a single subfolder that has none either cannot
    be the class level (one class is not a classification task), so the classes are below.
    """
    while not _images_in(folder):
        subfolders = _subfolders(folder)
        if len(subfolders) != 1 or _images_in(subfolders[0]):
            break
        folder = subfolders[0]
    return folder


def _too_few_classes(folder: Path, *, found: int, domain: str | None) -> robench.UsageError:
    """Say why nothing was found, and spot the commonest cause: a domain layout without
    ``domain=``."""
    subfolders = [p.name for p in _subfolders(folder)]
    nested = bool(subfolders) and all(_subfolders(folder / sub) for sub in subfolders)
    hint = ""
    if nested and domain is None:
        hint = (f" It looks like a root/domain/class/image tree: pass domain= one of "
                f"{', '.join(subfolders)}.")
    elif nested:
        hint = " Its subfolders hold folders, not images: point at the level above the images."
    return robench.UsageError(
        f"Dataset {NAME!r}: found {found} class folder(s) with images under {str(folder)!r}; "
        f"at least two classes are needed. Expected root/class/image files (suffixes "
        f"{', '.join(sorted(IMAGE_SUFFIXES))}), or root/domain/class/image with domain=, "
        f"optionally with train/ and test/ (or val/) subfolders.{hint}"
    )


def _split(files: dict[str, list[Path]], classes: list[str], *, image_size: int,
           channels: int) -> ImageFiles:
    paths = [p for name in classes for p in files.get(name, [])]
    labels = [index for index, name in enumerate(classes) for _ in files.get(name, [])]
    return ImageFiles(paths, labels, size=image_size, channels=channels, dataset=NAME)


@robench.checked(robench.table_ref("data", "imagefolder"))
def imagefolder(
    *,
    path: FolderPath = None,
    domain: str | None = None,
    image_size: ImageSize = 32,
    channels: Channels = 3,
    test_fraction: TestFraction = 0.2,
    split_seed: Seed = 0,
) -> robench.DatasetBundle:
    """Images from ``path/[domain/]class/image``; the folder's own train/test split if it has
    one, else a stratified ``test_fraction`` split seeded by ``split_seed``."""
    root = check_path(path, dataset=NAME, name="path")

    if domain is not None:
        domains = [p.name for p in _subfolders(root)]
        if not isinstance(domain, str) or domain not in domains:
            raise robench.UsageError(
                f"Dataset {NAME!r}: unknown domain {domain!r} under {str(root)!r}. Available "
                f"domains (its subfolders): {', '.join(domains) or '(none)'}."
            )
        root = root / domain

    root = _unwrap(root)
    train_folder = root / "train"
    test_folder = next((root / t for t in TEST_FOLDERS if (root / t).is_dir()), None)
    if train_folder.is_dir() and test_folder is not None:
        train_files, test_files = _class_tree(train_folder), _class_tree(test_folder)
        if len(train_files) < 2:
            raise _too_few_classes(train_folder, found=len(train_files), domain=domain)
        classes = sorted(train_files)
        extra = sorted(set(test_files) - set(train_files))
        if extra:
            raise robench.UsageError(
                f"Dataset {NAME!r}: {str(test_folder)!r} has classes that "
                f"{str(train_folder)!r} lacks: {', '.join(extra)}. Both splits must use the "
                f"same class folders."
            )
        if not test_files:
            raise robench.UsageError(
                f"Dataset {NAME!r}: {str(test_folder)!r} holds no class folders with images. "
                f"Fill it, or remove train/ and {test_folder.name}/ to get a stratified split."
            )
        train = _split(train_files, classes, image_size=image_size, channels=channels)
        test = _split(test_files, classes, image_size=image_size, channels=channels)
        split_info: dict[str, object] = {"split": f"folders train/ and {test_folder.name}/"}
    else:
        files = _class_tree(root)
        if len(files) < 2:
            raise _too_few_classes(root, found=len(files), domain=domain)
        classes = sorted(files)
        every = _split(files, classes, image_size=image_size, channels=channels)
        train_idx, test_idx = stratified_split(every.labels.numpy(),
                                               test_fraction=test_fraction, seed=split_seed)
        if len(test_idx) == 0:
            raise robench.UsageError(
                f"Dataset {NAME!r}: {str(root)!r} has too few images to hold any out for "
                f"testing (each class needs at least 2). Add images, or provide train/ and "
                f"test/ subfolders."
            )
        train, test = every.subset(train_idx), every.subset(test_idx)
        split_info = {"split": "stratified", "test_fraction": test_fraction,
                      "split_seed": split_seed}

    return robench.DatasetBundle(
        name=NAME,
        num_classes=len(classes),
        image_size=image_size,
        in_chans=channels,
        train=train,
        test=test,
        class_names=tuple(classes),
        domain=domain or root.name,
        info={"path": str(root), **split_info},
    )


@robench.checked(robench.table_ref("data", "imagefolder:*"))
def imagefolder_domain(
    *,
    name: str,
    path: FolderPath = None,
    image_size: ImageSize = 32,
    channels: Channels = 3,
    test_fraction: TestFraction = 0.2,
    split_seed: Seed = 0,
) -> robench.DatasetBundle:
    """``imagefolder:DOMAIN`` is ``imagefolder`` with ``domain=DOMAIN``.

    A grid names its source and target datasets, and they must differ, so two domains of
    one tree need two names: ``--dataset imagefolder:photo --target imagefolder:sketch``
    (the host passes the part after the colon as ``name``).
    """
    return imagefolder(path=path, domain=name, image_size=image_size, channels=channels,
                       test_fraction=test_fraction, split_seed=split_seed)
