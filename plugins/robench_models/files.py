"""``file:PATH`` and ``py:package.module:callable``: classifiers from a file or user code.

``file:PATH`` loads, by what the file is (never by unpickling arbitrary objects):

- a ``torch.export`` program (``.pt2``, ``torch.export.load``).  Export it in eval mode and
  with a dynamic batch dimension (``dynamic_shapes={"x": {0: torch.export.Dim("batch")}}``);
  a program exported for one batch size is refused.  Its input shape gives ``image_size``
  and ``in_chans``;
- a TorchScript archive (``torch.jit.save``; any suffix, recognised by its ``code/`` entries);
- weights: ``.safetensors``, or a torch file of tensors (``.pt``/``.pth``/``.bin``, read with
  ``torch.load(weights_only=True)``) with the architecture given by ``arch``:

  - ``arch = "timm:NAME"``: the timm classifier, exactly as ``timm:NAME`` with
    ``pretrained_file = PATH`` (num_classes read from the file; timm's mean/std unless
    ``mean``/``std`` are given);
  - ``arch = "py:package.module:callable"``: the user factory (as ``py:``, called with
    ``arch_params``), then every tensor of the file is loaded into it.

  A file made by ``torch.save(model)`` (a pickled module) is refused with a message saying
  how to re-save it.

Parameters of ``file:`` (table ``[model."file:models/net.pt"]``): ``arch`` (str),
``arch_params`` (table, keyword arguments of a ``py:`` architecture), ``num_classes``
(default: from the file, else one forward pass on a dummy input of ``image_size`` /
``in_chans``), ``mean`` / ``std`` (lists; default none: the model receives [0, 1] images, or
timm's for a timm arch), ``image_size``, ``in_chans`` (the input the model needs; default: the
exported program's, the timm config's, else any size / 3 channels), ``class_names`` (list),
``class_index`` (JSON/CSV, as for ``timm:``).  Relative paths are relative to the working
directory.

``py:package.module:callable`` imports the module (from the working directory, as
``python -m`` does, or the Python path) and calls the callable; an exception it raises is the
user's code failing (:class:`robench.errors.UserCodeError`, exit code 2).  It may return a
``robench.Classifier`` (used as it is) or an ``nn.Module`` mapping images to logits.
Parameters: ``num_classes``, ``image_size``, ``in_chans`` (passed
to the callable when its signature takes them, and used by robench: with an ``nn.Module``
and no ``num_classes``, the outputs are counted with one forward pass on a dummy input of
``image_size`` x ``image_size`` with ``in_chans`` channels, default 3), ``mean`` / ``std``,
``class_names``, ``class_index``, and any other key, passed to the callable.
"""

from __future__ import annotations

import inspect
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robench
from robench.errors import UserCodeError, describe_exception
from robench.models import load_state_file

from .common import (
    CALLABLE_RE,
    ExportedModule,
    apply_class_index,
    as_floats,
    as_str_tuple,
    file_info,
    import_callable,
    infer_num_classes,
    load_strict,
    read_class_index,
    set_mode,
    unwrap_state,
    working_directory_importable,
)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")


# --------------------------------------------------------------------------- py:


def check_py_name(rest: str) -> None:
    """``package.module:callable``, whose top-level package can be found (not imported)."""
    import importlib.util

    if not CALLABLE_RE.match(rest):
        raise robench.UsageError(
            f"Model 'py:{rest}': the name must be py:package.module:callable, e.g. "
            f"py:my_models.zoo:build_net (a callable returning an nn.Module or a "
            f"robench.Classifier).")
    top = rest.split(":")[0].split(".")[0]
    with working_directory_importable():
        found = importlib.util.find_spec(top) is not None
    if not found:
        import os
        import sys

        shown = ", ".join(repr(p) for p in sys.path[:3] if p) or "(empty)"
        raise robench.UsageError(
            f"Model 'py:{rest}': no module {top!r} in the working directory "
            f"({os.getcwd()!r}) or on the Python path (sys.path starts with {shown}); run "
            f"from the folder that holds {top}.py (or the package {top}/), install the "
            f"package, or add that folder to PYTHONPATH.")


def _call_factory(target: str, *, shared: dict[str, Any], extra: dict[str, Any],
                  what: str) -> Any:
    factory = import_callable(target, what=what)
    try:
        signature = inspect.signature(factory)
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD
                        for p in signature.parameters.values())
        accepted = set(signature.parameters)
    except (TypeError, ValueError):
        takes_all, accepted = True, set()
    kwargs = {k: v for k, v in shared.items()
              if v is not None and (takes_all or k in accepted)}
    unknown = sorted(k for k in extra if not takes_all and k not in accepted)
    if unknown:
        raise robench.UsageError(
            f"{what}: {target!r} takes no parameter {', '.join(repr(u) for u in unknown)} "
            f"(it takes {', '.join(sorted(accepted)) or 'none'}).")
    try:
        return factory(**kwargs, **extra)
    except robench.RobenchError:
        raise
    except Exception as exc:  # the user's code: one paragraph, exit 2 (--debug: traceback)
        raise UserCodeError(
            f"{what}: {target} raised {describe_exception(exc)} when robench called it"
            f"{' with ' + _call_text({**kwargs, **extra}) if kwargs or extra else ''}. "
            f"Fix it there, then rerun.") from exc


def _call_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _finish(
    obj: Any,
    *,
    what: str,
    num_classes: int | None,
    image_size: int | None,
    in_chans: int | None,
    mean: Any,
    std: Any,
    class_names: Any,
    class_index: str | None,
    info: dict[str, Any],
) -> robench.Classifier:
    """A Classifier from a module or Classifier plus the user's overrides."""
    mean_f, std_f = as_floats(mean, what=what, key="mean"), as_floats(std, what=what, key="std")
    if (mean_f is None) != (std_f is None):
        raise robench.UsageError(f"{what}: give mean and std together.")
    names = as_str_tuple(class_names, what=what)
    if isinstance(obj, robench.Classifier):
        clf = obj
        module = clf.module
        num_classes = num_classes or clf.num_classes
        names = names or tuple(clf.class_names)
        image_size = image_size or clf.image_size
        in_chans = in_chans or clf.in_chans
        if mean_f is None:
            mean_f = None if clf.mean is None else list(clf.mean)
            std_f = None if clf.std is None else list(clf.std)
        info = {**clf.info, **info}
    elif isinstance(obj, nn.Module):
        module = obj
    else:
        raise robench.UsageError(
            f"{what} returned {type(obj).__name__}; expected an nn.Module (images -> logits) "
            f"or a robench.Classifier.")
    if num_classes is None:
        num_classes = infer_num_classes(module, image_size=image_size, in_chans=in_chans,
                                        what=what, mean=mean_f, std=std_f)
    num_classes = int(num_classes)
    if names and len(names) != num_classes:
        raise robench.UsageError(
            f"{what}: class_names has {len(names)} names but the model has {num_classes} "
            f"outputs.")
    if class_index:
        names = apply_class_index(names, read_class_index(class_index), num_classes,
                                  source=str(class_index))
        info["class_index"] = file_info(class_index)
    set_mode(module, False)
    return robench.Classifier(module=module, num_classes=num_classes, class_names=names,
                              image_size=image_size, in_chans=in_chans, mean=mean_f,
                              std=std_f, info=info)


def py_classifier(
    *,
    name: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    class_names: list[str] | None = None,
    class_index: str | None = None,
    **factory_params: Any,
) -> robench.Classifier:
    """The classifier a user callable builds (see the module docstring)."""
    what = f"Model 'py:{name}'"
    check_py_name(name)
    shared = {"num_classes": num_classes, "image_size": image_size, "in_chans": in_chans}
    obj = _call_factory(name, shared=shared, extra=factory_params, what=what)
    module = getattr(obj, "module", obj)
    info = {"source": "python", "factory": name,
            "module_file": getattr(inspect.getmodule(type(module)), "__file__", None)}
    return _finish(obj, what=what, num_classes=num_classes, image_size=image_size,
                   in_chans=in_chans, mean=mean, std=std, class_names=class_names,
                   class_index=class_index, info=info)


# --------------------------------------------------------------------------- file:


def check_file_name(rest: str) -> None:
    """The file exists (relative paths from the working directory)."""
    path = Path(rest).expanduser()
    if not path.is_file():
        raise robench.UsageError(
            f"Model 'file:{rest}': no file {str(path.resolve())!r}. file: takes a TorchScript "
            f"archive, a torch.export program (.pt2) or a weights file (.safetensors, .pt, "
            f".pth, .bin) with arch = 'timm:NAME' or 'py:package.module:callable'.")


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with ``code/`` and ``constants.pkl`` entries."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n or n.startswith("code/") for n in names) and any(
        n.endswith("constants.pkl") for n in names)


def _exported(path: Path, what: str) -> tuple[nn.Module, int | None, int | None]:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise robench.UsageError(
            f"{what}: {str(path)!r} is not a torch.export program ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).") from None
    user_inputs = list(program.graph_signature.user_inputs)
    holders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    image_size = in_chans = None
    if len(holders) != 1:
        raise robench.UsageError(
            f"{what}: the exported program takes {len(holders)} inputs; a classifier takes "
            f"one batch of images.")
    value = holders[0].meta.get("val")
    if value is not None and value.ndim == 4:
        batch, chans, height, width = value.shape
        if isinstance(batch, int):
            raise robench.UsageError(
                f"{what}: the program was exported for batch size {batch} only; attacks use "
                f"other batch sizes. Export with dynamic_shapes={{'x': {{0: "
                f"torch.export.Dim('batch')}}}} (the input's name in place of 'x').")
        if isinstance(chans, int):
            in_chans = chans
        if isinstance(height, int) and isinstance(width, int) and height == width:
            image_size = height
    return ExportedModule(program.module()), image_size, in_chans


def _weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return unwrap_state(load_state_file(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()
        detail = next((line.strip() for line in first if "Unsupported global" in line), "")
        raise robench.UsageError(
            f"{what}: {str(path)!r} holds pickled Python objects, not just tensors (a model "
            f"saved with torch.save(model)?){f' [{detail}]' if detail else ''}. robench "
            f"never unpickles arbitrary objects (that can run code). Re-save it as "
            f"TorchScript (torch.jit.script(model).save(path)), as a torch.export program "
            f"(.pt2), or as a state dict (safetensors or torch.save(model.state_dict())) with "
            f"arch = 'timm:NAME' or 'py:package.module:callable'.") from None
    except Exception as exc:
        raise robench.UsageError(
            f"{what}: {str(path)!r} could not be read as TorchScript, a torch.export program "
            f"or a torch weights file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).") from None
    if not isinstance(state, dict):
        raise robench.UsageError(
            f"{what}: {str(path)!r} holds a {type(state).__name__}, not a state dict.")
    tensors = unwrap_state(state)
    if not tensors:
        raise robench.UsageError(f"{what}: {str(path)!r} holds no tensors.")
    return tensors


def file_classifier(
    *,
    name: str,
    arch: str | None = None,
    arch_params: dict[str, Any] | None = None,
    num_classes: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    class_names: list[str] | None = None,
    class_index: str | None = None,
) -> robench.Classifier:
    """The classifier in the file ``name`` (see the module docstring)."""
    what = f"Model 'file:{name}'"
    check_file_name(name)
    path = Path(name).expanduser()
    info: dict[str, Any] = {"weights": file_info(path)}
    common = {"num_classes": num_classes, "image_size": image_size, "in_chans": in_chans,
              "mean": mean, "std": std, "class_names": class_names,
              "class_index": class_index}
    if path.suffix == ".pt2" or (zipfile.is_zipfile(path) and _is_export_archive(path)):
        module, size, chans = _exported(path, what)
        common["image_size"] = image_size or size
        common["in_chans"] = in_chans or chans
        _no_arch(arch, what, "a torch.export program")
        return _finish(module, what=what, info={"source": "torch.export", **info}, **common)
    if is_torchscript(path):
        _no_arch(arch, what, "a TorchScript archive")
        try:
            with warnings.catch_warnings():  # torch marks TorchScript deprecated; it loads
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise robench.UsageError(
                f"{what}: the TorchScript archive could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}).") from None
        return _finish(module, what=what, info={"source": "torchscript", **info}, **common)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise robench.UsageError(
            f"{what}: unknown kind of file {path.suffix!r}; file: takes .pt2 (torch.export), "
            f"TorchScript archives and weights ({', '.join(WEIGHT_SUFFIXES)}).")
    state = _weights(path, what)
    if not arch:
        raise robench.UsageError(
            f"{what}: the file holds weights ({len(state)} tensors) but no architecture; set "
            f"arch = 'timm:NAME' (e.g. 'timm:resnet18') or arch = "
            f"'py:package.module:callable' in [model.\"file:{name}\"].")
    prefix, _, target = arch.partition(":")
    if prefix == "timm" and target:
        from .timm_models import check_timm_model_name, timm_classifier

        check_timm_model_name(target)
        clf = timm_classifier(name=target, pretrained_file=str(path), num_classes=num_classes,
                              in_chans=in_chans or 3, image_size=image_size,
                              class_names=class_names, **(arch_params or {}))
        common["class_names"] = None  # already applied
        return _finish(clf, what=what, info={"source": "file", "arch": arch, **info},
                       **common)
    if prefix == "py" and target:
        check_py_name(target)
        shared = {"num_classes": num_classes, "image_size": image_size, "in_chans": in_chans}
        obj = _call_factory(target, shared=shared, extra=dict(arch_params or {}),
                            what=f"{what} (arch {arch!r})")
        module = obj.module if isinstance(obj, robench.Classifier) else obj
        if not isinstance(module, nn.Module):
            raise robench.UsageError(
                f"{what}: arch {arch!r} returned {type(module).__name__}, not an nn.Module.")
        load_strict(module, state, what=f"{what} with arch {arch!r}")
        return _finish(obj, what=what, info={"source": "file", "arch": arch, **info},
                       **common)
    raise robench.UsageError(
        f"{what}: arch {arch!r} is not 'timm:NAME' or 'py:package.module:callable'.")


def _is_export_archive(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("archive_format") or n.endswith("models/model.json")
                   for n in archive.namelist())


def _no_arch(arch: str | None, what: str, kind: str) -> None:
    if arch:
        raise robench.UsageError(
            f"{what}: the file is {kind}, which carries its own architecture; remove arch.")
