"""Helpers shared by the complete-classifier namespaces: safe state loading, hashing,
class-name files, importing user callables and inferring the number of outputs."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robench

#: ``package.module:callable`` (the callable may be a dotted attribute path)
CALLABLE_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_info(path: str | Path) -> dict[str, Any]:
    """Provenance of a weights file: absolute path, size and SHA-256."""
    path = Path(path).expanduser().resolve()
    return {"file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def unwrap_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: ``state_dict``/``model``/``state_dict_ema`` entries are
    looked into, a ``module.`` prefix (DataParallel) is dropped, non-tensors are ignored."""
    for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
        inner = state.get(key) if isinstance(state, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Load every tensor of ``module`` from ``state``: a complete classifier must not keep any
    randomly initialised tensor, so missing, unexpected or mis-shaped tensors are refused."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise robench.UsageError(
            f"{what}: the checkpoint does not fit the architecture: of {len(own)} tensors, "
            f"{', '.join(parts)}. Is it a checkpoint of this architecture, built with the same "
            f"num_classes / in_chans?"
        )
    module.load_state_dict(dict(state), strict=True)


def read_class_index(path: str | Path) -> dict[str, int]:
    """``{dataset class name: model output index}`` from a JSON object or a CSV file.

    JSON: ``{"n01440764": 0, "goldfish": 1}`` (a list of names is read as index order).
    CSV: rows ``name,index`` (a header row whose second field is not a number is skipped).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise robench.UsageError(f"class_index file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    pairs: list[tuple[str, Any]]
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise robench.UsageError(f"class_index {str(path)!r} is not valid JSON: {exc}.") \
                from None
        if isinstance(data, list):
            pairs = [(str(n), i) for i, n in enumerate(data)]
        elif isinstance(data, dict):
            pairs = [(str(k), v) for k, v in data.items()]
        else:
            raise robench.UsageError(
                f"class_index {str(path)!r} must hold a JSON object {{name: index}}.")
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r]
        if rows and len(rows[0]) >= 2 and not rows[0][1].strip().lstrip("-").isdigit():
            rows = rows[1:]
        bad = [r for r in rows if len(r) < 2]
        if bad:
            raise robench.UsageError(
                f"class_index {str(path)!r}: every row must be 'name,index'; got {bad[0]!r}.")
        pairs = [(r[0].strip(), r[1].strip()) for r in rows]
    else:
        raise robench.UsageError(
            f"class_index {str(path)!r}: use a .json or .csv file (name -> output index).")
    out: dict[str, int] = {}
    for name, index in pairs:
        try:
            out[name] = int(index)
        except (TypeError, ValueError):
            raise robench.UsageError(
                f"class_index {str(path)!r}: the index of {name!r} is {index!r}, not an integer."
            ) from None
    if not out:
        raise robench.UsageError(f"class_index {str(path)!r} maps no class.")
    return out


def apply_class_index(base: Sequence[str], mapping: Mapping[str, int], num_classes: int,
                      *, source: str) -> tuple[str, ...]:
    """Output class names with ``mapping``'s names put at their indices.

    Other outputs keep their ``base`` name (or ``#i`` without one), renamed ``name#i`` where a
    mapped name would otherwise appear twice.
    """
    names = [str(n) for n in base] if base else [f"#{i}" for i in range(num_classes)]
    taken: dict[int, str] = {}
    for name, index in mapping.items():
        if not 0 <= index < num_classes:
            raise robench.UsageError(
                f"class_index {source!r}: {name!r} -> {index} is outside the model's "
                f"{num_classes} outputs (0 .. {num_classes - 1}).")
        if index in taken:
            raise robench.UsageError(
                f"class_index {source!r}: {taken[index]!r} and {name!r} both map to output "
                f"{index}; each dataset class needs its own output.")
        taken[index] = name
    mapped = set(taken.values())
    for i in range(num_classes):
        if i in taken:
            names[i] = taken[i]
        elif names[i] in mapped:
            names[i] = f"{names[i]}#{i}"
    return tuple(names)


@contextlib.contextmanager
def working_directory_importable() -> Iterator[None]:
    """The working directory first on ``sys.path`` while a user's module is looked up and
    imported, as ``python -m`` and ``python`` put it there: the ``robench`` console script's
    path holds only its own folder, so ``py:train_cnn:small_cnn`` run from the folder holding
    ``train_cnn.py`` would not be found.  The entry is removed afterwards (the imported module
    stays in ``sys.modules``), so no other import of the run is shadowed by the user's files."""
    cwd = os.getcwd()
    if any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        yield
        return
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a file written after the last look at this folder
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def import_callable(target: str, *, what: str) -> Any:
    """The object named by ``package.module:attr`` (UsageError naming the module if not).

    The module is imported with the working directory on the path (see
    :func:`working_directory_importable`); an exception raised while importing it is the
    user's code failing, a :class:`robench.errors.UserCodeError`."""
    from robench.errors import UserCodeError, describe_exception

    if not CALLABLE_RE.match(target):
        raise robench.UsageError(
            f"{what}: {target!r} is not of the form 'package.module:callable'.")
    module_name, _, attr_path = target.partition(":")
    try:
        with working_directory_importable():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        shown = ", ".join(repr(p) for p in [os.getcwd(), *sys.path][:4] if p) or "(empty)"
        raise robench.UsageError(
            f"{what}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}). It "
            f"must be importable from the working directory or the Python path (searched: "
            f"{shown}, ...); install the package, run from the folder that holds it, or add "
            f"that folder to PYTHONPATH."
        ) from None
    except Exception as exc:
        raise UserCodeError(
            f"{what}: importing module {module_name!r} raised {describe_exception(exc)}. "
            f"Fix the module, then rerun."
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise robench.UsageError(
                f"{what}: module {module_name!r} has no attribute {attr_path!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise robench.UsageError(f"{what}: {target!r} is not callable.")
    return obj


def infer_num_classes(module: nn.Module, *, image_size: int | None, in_chans: int | None,
                      what: str, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> int:
    """The number of outputs, from one forward pass on a grey dummy batch of two images."""
    if image_size is None:
        raise robench.UsageError(
            f"{what}: the number of classes is unknown; give num_classes, or image_size (and "
            f"in_chans) so that robench can run the model once on a dummy input to count them."
        )
    chans = int(in_chans or 3)
    x = torch.full((2, chans, int(image_size), int(image_size)), 0.5)
    if mean is not None and std is not None:
        x = (x - torch.tensor(list(mean)).view(1, -1, 1, 1)) / torch.tensor(list(std)).view(
            1, -1, 1, 1)
    was_training = module.training
    try:
        set_mode(module, False)
        with torch.no_grad():
            out = module(x)
    except Exception as exc:
        raise robench.UsageError(
            f"{what}: a forward pass on a dummy input of shape {tuple(x.shape)} failed "
            f"({type(exc).__name__}: {exc}); check image_size / in_chans, or give num_classes."
        ) from None
    finally:
        set_mode(module, was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise robench.UsageError(
            f"{what}: the model should return logits of shape (N, num_classes); on a dummy "
            f"input of shape {tuple(x.shape)} it returned {shape}.")
    return int(out.shape[1])


def set_mode(module: nn.Module, training: bool) -> None:
    """``module.train(training)``, tolerating modules that do not support it (exported
    programs are traced in one mode and refuse ``eval()``)."""
    try:
        module.train(training)
    except (NotImplementedError, RuntimeError):
        pass


class ExportedModule(nn.Module):
    """Holds ``torch.export``'s module; ``train()``/``eval()`` only set the flag, since an
    exported graph has its mode baked in at export time (export models in eval mode)."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def as_str_tuple(value: Any, *, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise robench.UsageError(f"{what}: class_names must be a list of strings.")
    return tuple(str(v) for v in value)


def as_floats(value: Any, *, what: str, key: str) -> list[float] | None:
    if value is None:
        return None
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise robench.UsageError(f"{what}: {key} must be a list of numbers, got {value!r}.") \
            from None
    return out
