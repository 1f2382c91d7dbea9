"""Example images for the reports: the one place their file format is defined.

Tasks write what they already computed (``examples/tasks/<task key>.npz``): an attack task
its first adversarial examples with the clean images, labels and both predictions; a clean
task the class images of the model.  After a run, :func:`assemble` combines them into one
file per model and domain, ``examples/<model>__<domain>.npz``, which the HTML report reads.
Reports never load a model.

Per-model file keys (all arrays; text as 0-d unicode arrays, images uint8 ``(k, H, W, C)``):
``model``, ``domain``, ``dataset``, ``class_names``, optionally ``class_images`` and, when an
attack found adversarials, ``attack``, ``threat``, ``eps``, ``images_clean``, ``images_adv``,
``labels``, ``pred_clean``, ``pred_adv``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robench.io import atomic_write_bytes

TEXT_KEYS = ("model", "domain", "dataset", "attack", "threat")
IMAGE_KEYS = ("images_clean", "images_adv", "class_images")
INT_KEYS = ("labels", "pred_clean", "pred_adv", "class_labels")


def _uint8_hwc(images: Any) -> np.ndarray:
    """``(k, C, H, W)`` floats in [0, 1] (tensor or array) -> ``(k, H, W, C)`` uint8."""
    array = images.detach().cpu().float().numpy() if hasattr(images, "detach") else \
        np.asarray(images, dtype=np.float32)
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def _save(path: Path, arrays: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def task_file(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / "examples" / "tasks" / f"{key}.npz"


def write_task_examples(run_dir: str | Path, key: str, **arrays: Any) -> Path:
    """Save a task's examples: images as float ``(k, C, H, W)`` in [0, 1], the rest as is."""
    out: dict[str, Any] = {}
    for name, value in arrays.items():
        if name in IMAGE_KEYS:
            out[name] = _uint8_hwc(value)
        elif name in INT_KEYS:
            out[name] = np.asarray(value.cpu() if hasattr(value, "cpu") else value,
                                   dtype=np.int64)
        else:
            out[name] = np.asarray(value)
    path = task_file(run_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(path, out)
    return path


def read_task_examples(run_dir: str | Path, key: str) -> dict[str, np.ndarray] | None:
    path = task_file(run_dir, key)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def slug(model: str, domain: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}__{domain}")


def assemble(run_dir: str | Path, *, model: str, domain: str, dataset: str,
             class_names: Sequence[str], class_images_key: str | None,
             attack_keys: Sequence[str]) -> Path:
    """Write ``examples/<model>__<domain>.npz`` from the task files: the class images of
    ``class_images_key`` and the first of ``attack_keys`` (in the order given) that found
    adversarials."""
    arrays: dict[str, Any] = {"model": np.asarray(model), "domain": np.asarray(domain),
                              "dataset": np.asarray(dataset),
                              "class_names": np.asarray([str(c) for c in class_names])}
    pictures = read_task_examples(run_dir, class_images_key) if class_images_key else None
    if pictures and "class_images" in pictures:
        arrays["class_images"] = pictures["class_images"]
        if "class_labels" in pictures:  # a subset of the classes was pictured
            arrays["class_image_names"] = np.asarray(
                [str(class_names[int(i)]) for i in pictures["class_labels"]])
    for key in attack_keys:
        found = read_task_examples(run_dir, key)
        if found and "images_adv" in found:
            arrays.update(found)
            break
    path = Path(run_dir) / "examples" / f"{slug(model, domain)}.npz"
    _save(path, arrays)
    return path
