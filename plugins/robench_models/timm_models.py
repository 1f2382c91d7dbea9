"""``timm:<model>``: a timm classifier with its own head, evaluated as it is.

Parameters (table ``[model."timm:resnet18"]``):

``pretrained`` (bool, default false)
    Weights from timm's hub (Hugging Face) for the model name, tag included
    (``timm:resnet18.a1_in1k``).  Without hub access this is a UsageError that says to use
    ``pretrained_file``.
``pretrained_file`` (path)
    Local weights of the whole classifier: ``.safetensors``, or ``.pth``/``.bin``/``.pt`` read
    with ``torch.load(weights_only=True)`` (a ``state_dict``/``model``/``state_dict_ema``
    entry and a ``module.`` prefix are handled; checkpoints in an original repository's
    layout go through the model's own timm ``checkpoint_filter_fn``).  Every tensor must
    load: a missing head is an error, not a random head.  Takes precedence over
    ``pretrained``.
``num_classes`` (int)
    Outputs of the head.  Default: read from ``pretrained_file``'s classifier tensor, else
    the pretrained config's (1000 for ImageNet-1k models).
``in_chans`` (int, default 3)
    Input channels, passed to timm (which adapts the first convolution of pretrained
    weights).  Grey data on a 3-channel model needs no change: the harness repeats it.
``image_size`` (int)
    The input size the model is evaluated at.  Default: the pretrained config's
    ``input_size`` (224 for most ImageNet models); the harness refuses data of another size
    rather than resize it.  Models that take ``img_size`` (ViTs) are built at this size;
    for the others (CNNs) it only declares that this size is intended.
``class_names`` (list of str)
    Names of the outputs.  Default: timm's ImageNet label names (wnids such as
    ``n01440764``, from ``timm.data.ImageNetInfo``) when the head has 1000 (or 11821 /
    21841) outputs.
``class_index`` (path)
    A ``.json`` object ``{"dataset class name": output index}`` or a ``.csv`` with rows
    ``name,index``: names dataset classes (for example ImageFolder folder names) by model
    output, so a 1000-class model is evaluated on a dataset with some of its classes.
any other key
    Passed to ``timm.create_model`` (``drop_rate``, ...).

Without ``pretrained`` and ``pretrained_file`` the weights are random (a warning says so):
useful for smoke tests only.  Images read from files (``imagefolder``) are decoded with
timm's own eval preprocessing for the model (``resolve_data_config``: resize to
``input_size / crop_pct`` with its interpolation, then centre crop), unless the dataset's
``image_size`` is set.  Mean and std come from timm's pretrained config and are
applied inside the evaluated model (averaged over channels when ``in_chans`` differs).
"""

from __future__ import annotations

import difflib
import sys
import warnings
from typing import Any

import torch

import robench
from robench.models import load_state_file

from .common import (
    apply_class_index,
    as_str_tuple,
    file_info,
    read_class_index,
    unwrap_state,
)


def check_timm_model_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting the closest ones."""
    import timm

    arch = name.split(".")[0]
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
        raise robench.UnknownNameError("model", f"timm:{name}", [f"timm:{m}" for m in close])


def _classifier_keys(cfg: dict[str, Any]) -> list[str]:
    keys = cfg.get("classifier") or ()
    return [keys] if isinstance(keys, str) else list(keys)


def _num_classes_in(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> int | None:
    """The head's output count in a checkpoint (the classifier's weight rows)."""
    for key in _classifier_keys(cfg):
        for suffix in (".weight", ".bias"):
            tensor = state.get(key + suffix)
            if tensor is not None and tensor.ndim >= 1:
                return int(tensor.shape[0])
    return None


def imagenet_class_names(num_classes: int) -> tuple[str, ...]:
    """timm's ImageNet label names (wnids) for a 1k / 12k / 22k head, else ``()``."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return ()
    info = ImageNetInfo(subset)
    if info.num_classes() != num_classes:
        return ()
    return tuple(info.label_names())


def _create(name: str, *, pretrained: bool, image_size: int | None,
            kwargs: dict[str, Any]) -> torch.nn.Module:
    import timm

    try:
        if image_size is not None:
            try:
                return timm.create_model(name, pretrained=pretrained, img_size=image_size,
                                         **kwargs)
            except TypeError:  # a model with a free input size (CNN): nothing to set
                pass
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise robench.UsageError(
            f"Model 'timm:{name}': timm.create_model does not accept the parameters "
            f"{sorted(kwargs)} ({exc}). robench's own parameters are pretrained, "
            f"pretrained_file, num_classes, in_chans, image_size, class_names and class_index; "
            f"the others go to timm."
        ) from None
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained:
            raise robench.UsageError(
                f"timm could not fetch pretrained weights for {name!r} ({type(exc).__name__}: "
                f"{exc}). Without access to the Hugging Face hub, download the weights "
                f"elsewhere and pass pretrained_file = 'path/to/model.safetensors'."
            ) from None
        raise robench.UsageError(
            f"timm could not build {name!r} with {kwargs}: {type(exc).__name__}: {exc}"
        ) from None


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    from .common import load_strict

    own = model.state_dict()
    if set(state) != set(own):  # an original repository's layout: timm's own converter
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn",
                            None)
        if filter_fn is not None:
            try:
                converted = filter_fn(dict(state), model)
            except Exception:  # the converter does not apply; report the plain mismatch
                converted = None
            if converted is not None and set(converted) == set(own):
                state = converted
    load_strict(model, state, what=what)


def timm_classifier(
    *,
    name: str,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    image_size: int | None = None,
    class_names: list[str] | None = None,
    class_index: str | None = None,
    **model_kwargs: Any,
) -> robench.Classifier:
    """timm's complete classifier ``name`` (see the module docstring for the parameters)."""
    import timm

    check_timm_model_name(name)
    what = f"Model 'timm:{name}'"
    pretrained_cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    state = None
    info: dict[str, Any] = {"source": "timm", "architecture": name,
                            "timm_version": timm.__version__}
    if pretrained_file:
        state = unwrap_state(load_state_file(pretrained_file))
        if num_classes is None:
            num_classes = _num_classes_in(state, cfg)
        info["weights"] = file_info(pretrained_file)
    elif pretrained:
        info["weights"] = {"hub": cfg.get("hf_hub_id") or cfg.get("url") or name}
    else:
        info["weights"] = "random (no pretrained weights)"
        warnings.warn(f"{what} has random weights: set pretrained = true or pretrained_file.",
                      stacklevel=2)
    kwargs: dict[str, Any] = {"in_chans": int(in_chans), **model_kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if pretrained and not pretrained_file and num_classes is not None \
            and cfg.get("num_classes") not in (None, int(num_classes)):
        raise robench.UsageError(
            f"{what}: the pretrained head has {cfg.get('num_classes')} outputs, not "
            f"num_classes = {num_classes}; a resized head would be random. Train a head with "
            f"the backbone 'timm:{name}' instead, or load your fine-tuned weights with "
            f"pretrained_file.")
    model = _create(name, pretrained=bool(pretrained and not pretrained_file),
                    image_size=image_size, kwargs=kwargs)
    if state is not None:
        _load_into(model, state, what=f"{what} with pretrained_file {pretrained_file!r}")
    model.eval()
    outputs = int(getattr(model, "num_classes", 0) or 0)
    if outputs <= 0:
        raise robench.UsageError(f"{what} has no classifier head (num_classes = {outputs}).")
    model_cfg = dict(getattr(model, "pretrained_cfg", None) or cfg)
    mean, std = list(model_cfg.get("mean", ())), list(model_cfg.get("std", ()))
    if mean and len(mean) != in_chans:
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    size = image_size
    if size is None:
        input_size = tuple(model_cfg.get("input_size", ()))
        if len(input_size) == 3 and input_size[1] == input_size[2]:
            size = int(input_size[1])
    preprocess = _preprocess(model, size)
    if preprocess is not None:
        info["preprocess"] = preprocess.describe()
    names = as_str_tuple(class_names, what=what) or imagenet_class_names(outputs)
    if names and len(names) != outputs:
        raise robench.UsageError(
            f"{what}: class_names has {len(names)} names but the model has {outputs} outputs.")
    if class_index:
        names = apply_class_index(names, read_class_index(class_index), outputs,
                                  source=str(class_index))
        info["class_index"] = file_info(class_index)
    return robench.Classifier(
        module=model,
        num_classes=outputs,
        class_names=names,
        image_size=size,
        in_chans=int(in_chans),
        mean=mean or None,
        std=std or None,
        info=info,
        preprocess=preprocess,
    )


def _preprocess(model: torch.nn.Module, size: int | None) -> robench.Preprocess | None:
    """timm's own eval preprocessing of ``model`` (``resolve_data_config``: interpolation,
    crop_pct, crop_mode; resize then centre crop), at ``size`` when the model is evaluated at
    another size than its config's.  ``None`` for a crop mode robench does not reproduce."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    input_size = tuple(config.get("input_size", ()))
    side = size if size is not None else (int(input_size[-1]) if len(input_size) == 3
                                          and input_size[1] == input_size[2] else None)
    crop_mode = config.get("crop_mode", "center")
    if side is None or crop_mode not in ("center", "squash"):
        return None
    return robench.Preprocess.from_crop_pct(
        side, float(config.get("crop_pct") or 0.875),
        interpolation=str(config.get("interpolation") or "bilinear"), crop_mode=crop_mode)
