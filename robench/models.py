"""The evaluated model: ``Normalize(mean, std) -> backbone -> head``, fed images in [0, 1].

Attacks never see normalised tensors, so eps means the same thing for every backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from robench.errors import UsageError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``, kept as buffers so it moves with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError("std must be positive")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RobenchModel(nn.Module):
    """Images in [0, 1] -> logits.  ``features`` gives the backbone's pooled output."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, in_chans: int) -> None:
        super().__init__()
        mean = list(getattr(backbone, "mean", None) or [0.0] * in_chans)
        std = list(getattr(backbone, "std", None) or [1.0] * in_chans)
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(
                f"the backbone's mean/std have {len(mean)}/{len(std)} entries, but the images "
                f"have {in_chans} channels: a backbone plugin must match in_chans"
            )
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Autocast(nn.Module):
    """Runs the wrapped model under ``torch.autocast`` and returns float32 logits, so that
    losses, attacks and verification see the same dtype at every precision."""

    def __init__(self, model: nn.Module, *, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            return self.model(x).float()


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def with_precision(model: nn.Module, precision: str, device: str) -> nn.Module:
    if precision == "fp32":
        return model
    return Autocast(model, device_type=torch.device(device).type,
                    dtype=PRECISION_DTYPES[precision])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients: attacks take gradients w.r.t. the input only."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``backbone`` for transfer learning.

    Accepts a plain backbone state dict or a whole robench model (keys under ``backbone.``,
    e.g. ``models/<key>.safetensors`` of an earlier run); the old classifier's tensors are
    ignored ("remove the last layer").  Refuses a checkpoint that matches too little of the
    backbone to be the same architecture.
    """
    state = load_state_file(path)
    own = backbone.state_dict()
    if not (set(own) & set(state)) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < max(1, len(own) // 2):
        raise UsageError(
            f"pretrained_file {str(path)!r} matches only {len(usable)} of {len(own)} tensors "
            f"of this backbone; is it a checkpoint of the same architecture?"
        )
    backbone.load_state_dict(usable, strict=False)
    backbone.is_pretrained = True


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file with ``weights_only=True``.

    Never unpickles arbitrary objects: a checkpoint cannot run code on load.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"Checkpoint {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(
            f"Checkpoint {str(path)!r} could not be loaded safely (weights_only=True): {exc}. "
            f"Convert it to safetensors or save a plain state dict."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"Checkpoint {str(path)!r} does not hold a state dict.")
    return state
