"""``robustbench:DATASET/THREAT/NAME``: a model of the RobustBench model zoo, loaded by the
``robustbench`` package's own ``robustbench.utils.load_model``.

``DATASET`` is ``cifar10``, ``cifar100`` or ``imagenet``; ``THREAT`` is ``Linf``, ``L2``,
``corruptions`` or ``corruptions_3d`` (any case); ``NAME`` is the zoo entry, e.g.
``robustbench:cifar10/Linf/Standard`` or ``robustbench:cifar10/L2/Ding2020MMA``.

Parameters (table ``[model."robustbench:cifar10/Linf/Standard"]``):

``model_dir`` (path, default ``~/.cache/robench/robustbench``, or the environment variable
``ROBENCH_ROBUSTBENCH_DIR``)
    Where the checkpoints are, in RobustBench's layout:
    ``MODEL_DIR/<dataset>/<threat>/<NAME>.pt`` (``corruptions_3d`` shares ``corruptions``;
    ensembles have ``<NAME>.pt_m0.pt``, ``<NAME>.pt_m1.pt``, ...).  A folder written by
    RobustBench's own ``load_model(model_dir=...)`` works as it is.
``download`` (bool, default false)
    Let RobustBench fetch a missing checkpoint (Google Drive, or timm / torchvision URLs for
    the entries built on them).  Without it, nothing is downloaded: a missing checkpoint is a
    UsageError naming the file expected and how to get it.

The models take images in [0, 1] (normalisation is inside them): CIFAR models 32x32,
ImageNet models at the size of their RobustBench preprocessing (224 for most).  Class names
are CIFAR-10's / CIFAR-100's (torchvision's order) or timm's ImageNet wnids.  Checkpoints are
read with ``torch.load(weights_only=True)`` (torch's default since 2.6; a checkpoint that
needs arbitrary unpickling is refused).

Compatibility: ``robustbench/__init__`` imports ``autoattack``, whose PyPI distribution
(``pyautoattack``) installs the import name ``pyautoattack``; when ``autoattack`` itself is
not importable, the installed ``pyautoattack`` is registered under that name first.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import os
import pickle
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import robench

from .common import file_info

DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
#: CIFAR-100's fine labels in label order (alphabetical, as torchvision's ``classes``)
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())

_LOCK = threading.Lock()


def default_model_dir() -> Path:
    env = os.environ.get("ROBENCH_ROBUSTBENCH_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robench" / "robustbench"


def ensure_autoattack() -> str:
    """Make ``import autoattack`` work: alias the installed ``pyautoattack`` when the name
    ``autoattack`` is not importable.  Returns which module serves it (for provenance)."""
    if "autoattack" in sys.modules:
        return getattr(sys.modules["autoattack"], "__name__", "autoattack")
    if importlib.util.find_spec("autoattack") is not None:
        return "autoattack"
    try:
        pyautoattack = importlib.import_module("pyautoattack")
    except ImportError as exc:
        raise robench.UsageError(
            f"robustbench needs AutoAttack, which is not installed ({exc}); install it with "
            f"`pip install pyautoattack` (or AutoAttack from its git repository)."
        ) from None
    # pyautoattack imports its own parts relatively, so its loaded submodules are the whole
    # package; each is registered under both names (one module object, not a second copy)
    for key, module in list(sys.modules.items()):
        if key == "pyautoattack" or key.startswith("pyautoattack."):
            sys.modules.setdefault("autoattack" + key[len("pyautoattack"):], module)
    return pyautoattack.__name__


def import_robustbench() -> Any:
    """``robustbench``, imported once, with AutoAttack aliased and its timm deprecation
    warnings silenced (robustbench imports timm's old module paths)."""
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench"]
    ensure_autoattack()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import robustbench
            import robustbench.model_zoo
            import robustbench.utils  # noqa: F401
    except ImportError as exc:
        raise robench.UsageError(
            f"The robustbench package could not be imported ({type(exc).__name__}: {exc}). "
            f"Install it with `pip install --no-deps robustbench` plus its requirements "
            f"gdown, requests and pyautoattack."
        ) from None
    return robustbench


def _parse(rest: str) -> tuple[str, str, str]:
    parts = rest.split("/")
    if len(parts) != 3 or not all(parts):
        raise robench.UsageError(
            f"Model 'robustbench:{rest}': the name must be robustbench:DATASET/THREAT/NAME, "
            f"e.g. robustbench:cifar10/Linf/Standard (datasets {', '.join(DATASETS)}; threats "
            f"{', '.join(THREATS)}).")
    dataset, threat, name = parts
    if dataset.lower() not in DATASETS:
        raise robench.UsageError(
            f"Model 'robustbench:{rest}': unknown RobustBench dataset {dataset!r}; use one of "
            f"{', '.join(DATASETS)}.")
    threats = {t.lower(): t for t in THREATS}
    if threat.lower() not in threats:
        raise robench.UsageError(
            f"Model 'robustbench:{rest}': unknown RobustBench threat model {threat!r}; use one "
            f"of {', '.join(THREATS)}.")
    return dataset.lower(), threats[threat.lower()], name


def _zoo(dataset: str, threat: str) -> dict[str, dict[str, Any]]:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    folder = threat.replace("_3d", "")
    return model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(folder), {})


def check_robustbench_name(rest: str) -> None:
    """Refuse a malformed name or an entry the installed zoo does not have."""
    dataset, threat, name = _parse(rest)
    zoo = _zoo(dataset, threat)
    if name not in zoo:
        known = [f"robustbench:{dataset}/{threat}/{n}" for n in zoo]
        close = difflib.get_close_matches(name, list(zoo), n=8, cutoff=0.5)
        raise robench.UnknownNameError(
            "model", f"robustbench:{dataset}/{threat}/{name}",
            [f"robustbench:{dataset}/{threat}/{n}" for n in close] or known)


def _timm_name(dataset: str, threat: str, name: str) -> str:
    return f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"


def expected_files(dataset: str, threat: str, name: str, model_dir: Path) -> list[Path]:
    """The checkpoint files ``load_model`` reads for this entry (where it would download)."""
    import timm

    timm_name = _timm_name(dataset, threat, name)
    if timm.is_model(timm_name):  # RobustBench registers these in timm; timm caches by URL
        cfg = timm.models.get_pretrained_cfg(timm_name)
        url = getattr(cfg, "url", "") if cfg is not None else ""
        if url:
            return [Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)]
        return []
    entry = _zoo(dataset, threat)[name]
    base = model_dir / dataset / threat.replace("_3d", "") / f"{name}.pt"
    if isinstance(entry.get("gdrive_id"), list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(entry["gdrive_id"]))]
    if dataset == "imagenet" and "Standard" in name:  # torchvision weights, fetched by torch
        return []
    return [base]


class _DownloadBlocked(Exception):
    def __init__(self, target: str, source: str) -> None:
        super().__init__(target)
        self.target = target
        self.source = source


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """Make every download RobustBench could start (Google Drive via gdown, URLs via
    torch.hub, which timm and torchvision use) raise instead."""
    import robustbench.utils as rb_utils
    import timm.models._hub as timm_hub

    def blocked_url(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise _DownloadBlocked(str(dst), url)

    def blocked_gdrive(gdrive_id: str, fname_save: Any) -> None:
        raise _DownloadBlocked(str(fname_save), f"Google Drive id {gdrive_id}")

    patches = [(torch.hub, "download_url_to_file", blocked_url),
               (timm_hub, "download_url_to_file", blocked_url),
               (rb_utils, "download_gdrive_new", blocked_gdrive),
               (rb_utils, "download_gdrive", blocked_gdrive)]
    with _LOCK:
        saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches if hasattr(obj, attr)]
        try:
            for obj, attr, new in patches:
                if hasattr(obj, attr):
                    setattr(obj, attr, new)
            yield
        finally:
            for obj, attr, old in saved:
                setattr(obj, attr, old)


def _image_size(dataset: str, threat: str, name: str) -> int:
    if dataset != "imagenet":
        return 32
    import timm

    timm_name = _timm_name(dataset, threat, name)
    if timm.is_model(timm_name):
        cfg = timm.models.get_pretrained_cfg(timm_name)
        size = tuple(getattr(cfg, "input_size", ()) or ())
        if len(size) == 3:
            return int(size[-1])
    prep = str(_zoo(dataset, threat)[name].get("preprocessing") or "Res256Crop224")
    found = re.search(r"(\d+)$", prep)
    return int(found.group(1)) if found else 224


def _class_names(dataset: str) -> tuple[str, ...]:
    if dataset == "cifar10":
        return CIFAR10_CLASSES
    if dataset == "cifar100":
        return CIFAR100_CLASSES
    from .timm_models import imagenet_class_names

    return imagenet_class_names(1000)


def _weights_only_guaranteed() -> bool:
    """Whether a bare ``torch.load`` (RobustBench's) uses ``weights_only=True``."""
    major, minor = (int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    forced = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").lower() in ("1", "true",
                                                                                "yes")
    return (major, minor) >= (2, 6) and not forced


def robustbench_classifier(
    *,
    name: str,
    model_dir: str | None = None,
    download: bool = False,
) -> robench.Classifier:
    """The RobustBench zoo model ``name`` = ``DATASET/THREAT/NAME`` (see the module
    docstring for the parameters)."""
    check_robustbench_name(name)
    dataset, threat, entry = _parse(name)
    what = f"Model 'robustbench:{name}'"
    root = Path(model_dir).expanduser() if model_dir else default_model_dir()
    if not _weights_only_guaranteed():
        raise robench.UsageError(
            f"{what}: RobustBench reads checkpoints with a bare torch.load, which is safe only "
            f"with torch >= 2.6 and without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; this is torch "
            f"{torch.__version__}.")
    files = expected_files(dataset, threat, entry, root)
    missing = [f for f in files if not f.is_file()]
    how = (f"pass download = true in [model.\"robustbench:{name}\"] to let RobustBench fetch it, "
           f"or copy the checkpoint there (e.g. from a machine where RobustBench's "
           f"load_model(model_name={entry!r}, model_dir=..., dataset={dataset!r}, "
           f"threat_model={threat!r}) has run)")
    if missing and not download:
        raise robench.UsageError(
            f"{what}: checkpoint {str(missing[0])!r} is missing"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; nothing is "
            f"downloaded unless asked: {how}. model_dir is {str(root)!r}.")
    robustbench = import_robustbench()
    from robustbench.utils import load_model

    blocker = contextlib.nullcontext() if download else _no_downloads()
    try:
        with blocker, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = load_model(model_name=entry, model_dir=str(root), dataset=dataset,
                                threat_model=threat)
    except _DownloadBlocked as blocked:
        raise robench.UsageError(
            f"{what}: RobustBench needs {blocked.target!r} (from {blocked.source}), which is "
            f"missing; nothing is downloaded unless asked: {how}.") from None
    except pickle.UnpicklingError as exc:
        raise robench.UsageError(
            f"{what}: a checkpoint under {str(root)!r} cannot be read with "
            f"torch.load(weights_only=True) ({str(exc).splitlines()[0]}); robench never "
            f"unpickles arbitrary objects.") from None
    except RuntimeError as exc:  # strict state-dict loading inside RobustBench
        raise robench.UsageError(
            f"{what}: RobustBench could not load the checkpoint under {str(root)!r}: "
            f"{str(exc).splitlines()[0]}") from None
    module.eval()
    info: dict[str, Any] = {
        "source": "robustbench",
        "entry": f"{dataset}/{threat}/{entry}",
        "robustbench_version": getattr(robustbench, "__version__", "")
        or _dist_version("robustbench"),
        "weights": [file_info(f) for f in files if f.is_file()],
    }
    return robench.Classifier(
        module=module,
        num_classes=DATASET_CLASSES[dataset],
        class_names=_class_names(dataset),
        image_size=_image_size(dataset, threat, entry),
        in_chans=3,
        info=info,
    )


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""
