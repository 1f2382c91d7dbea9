"""timm backbones: ``timm:<model>`` builds any timm model with its classifier removed.

"Remove the last layer": the model is created with ``num_classes=0`` so it returns pooled
features; robench puts its own head on top.  Weights come from timm's hub
(``pretrained=true``, when the hub is reachable) or from a local file
(``pretrained_file=``: safetensors, or a torch file loaded with ``weights_only=True``), e.g.
a checkpoint robench trained in an earlier run.  The model's pretrained config supplies the
mean and std that the harness applies inside the evaluated model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import robench

if TYPE_CHECKING:  # torch and timm are imported when a backbone is built, not when listed
    from torch import nn


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
        robench.load_backbone_weights(model, pretrained_file)
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
