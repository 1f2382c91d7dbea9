"""timm backbones: ``timm:<model>`` builds any timm model with its classifier removed.

"Remove the last layer": the model is created with ``num_classes=0`` so it returns pooled
features; robench puts its own head on top.  Weights come from timm's hub
(``pretrained=true``, when the hub is reachable) or from a local file
(``pretrained_file=``: safetensors, or a torch file loaded with ``weights_only=True``), e.g.
a checkpoint robench trained in an earlier run.  The model's pretrained config supplies the
mean and std that the harness applies inside the evaluated model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import robench


def _strip_prefix(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept a robench checkpoint (keys under ``backbone.``) as well as a plain timm one."""
    own = set(model.state_dict())
    if not (own & set(state)) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model``, ignoring the old classifier; refuse a checkpoint that
    matches too little of the model to be the right one."""
    from robench.models import load_state_file

    state = _strip_prefix(load_state_file(path), model)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < max(1, len(own) // 2):
        raise robench.UsageError(
            f"pretrained_file {str(path)!r} matches only {len(usable)} of {len(own)} tensors "
            f"of this backbone; is it a checkpoint of the same architecture?"
        )
    model.load_state_dict(usable, strict=False)


def check_timm_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting the closest ones."""
    import difflib

    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
        raise robench.UnknownNameError("backbone", f"timm:{name}", [f"timm:{m}" for m in close])


def timm_backbone(
    *,
    name: str,
    image_size: int,
    in_chans: int,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """A timm model with ``num_classes=0`` (pooled features) and its input statistics."""
    import timm

    check_timm_name(name)
    kwargs = {"num_classes": 0, "in_chans": in_chans, **model_kwargs}
    try:
        try:
            model = timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError:  # the model has a fixed or free input size
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained:
            raise robench.UsageError(
                f"timm could not fetch pretrained weights for {name!r} ({type(exc).__name__}: "
                f"{exc}). Without access to the Hugging Face hub, download the weights "
                f"elsewhere and pass pretrained_file = 'path/to/model.safetensors'."
            ) from None
        raise
    if pretrained_file:
        load_backbone_weights(model, pretrained_file)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = list(cfg.get("mean", ())), list(cfg.get("std", ()))
    if in_chans != len(mean) and mean:
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    model.mean, model.std = mean, std
    model.is_pretrained = bool(pretrained or pretrained_file)
    return model


@robench.hookimpl
def robench_register_backbones() -> list[robench.BackboneSpec]:
    return [
        robench.BackboneSpec(
            name="timm:*", factory=timm_backbone, pretrained=True,
            validate_name=check_timm_name,
            description="any timm model, classifier removed (num_classes=0); params: "
                        "pretrained, pretrained_file, and timm's model kwargs",
        )
    ]
