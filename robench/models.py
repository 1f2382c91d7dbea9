"""The evaluated model: ``Normalize(mean, std) -> backbone -> head``, fed images in [0, 1].

Attacks never see normalised tensors, so eps means the same thing for every backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from robench.errors import UsageError
from robench.memory import is_out_of_memory


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
        self.training = model.training  # report the wrapped model's mode (foolbox checks it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            return self.model(x).float()


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def with_precision(model: nn.Module, precision: str, device: str) -> nn.Module:
    if precision == "fp32":
        return model
    return Autocast(model, device_type=torch.device(device).type,
                    dtype=PRECISION_DTYPES[precision])


def fp32_reference(model: nn.Module) -> nn.Module | None:
    """The evaluated ``model`` without its autocast (and, since a compiled graph belongs to
    the autocast one, eager): the same weights in float32, which re-verifies the adversarial
    examples of a bf16 / fp16 run.  ``None`` when ``model`` does not run under autocast."""
    inner = model.eager if isinstance(model, Compiled) else model
    return inner.model if isinstance(inner, Autocast) else None


class CompileError(RuntimeError):
    """``torch.compile`` could not compile the evaluated model (at its first call)."""


class Compiled(nn.Module):
    """``torch.compile(model, backend=backend, dynamic=True)``, failing readably.

    Dynamo compiles lazily, at the first call of each new input kind (grad mode, batch size
    1, ...), so a backend that cannot work here (inductor without a C++ compiler) fails inside
    a task.  That failure is re-raised as a :class:`CompileError` of one line naming the
    backend and the way out, instead of dynamo's multi-line report, and every later call
    fails at once with the same message rather than paying for the failed compile again.
    Out-of-memory errors pass through unchanged, so the batch-size back-off still sees them.
    """

    def __init__(self, model: nn.Module, backend: str) -> None:
        super().__init__()
        # dynamic=True: attacks shrink the batch as samples fall, and one graph with a
        # symbolic batch size serves them all instead of one recompile per size
        self.compiled = torch.compile(model, backend=backend, dynamic=True)
        self.backend = backend
        self.training = model.training  # report the wrapped model's mode (foolbox checks it)
        self._failure: str | None = None

    @property
    def eager(self) -> nn.Module:
        """The model as it was before compiling (``torch.compile`` keeps it as
        ``_orig_mod``)."""
        return self.compiled._orig_mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._failure is not None:
            raise CompileError(self._failure)
        try:
            return self.compiled(x)
        except Exception as exc:
            from torch._dynamo.exc import TorchDynamoException

            if not isinstance(exc, TorchDynamoException) or is_out_of_memory(exc):
                raise
            self._failure = compile_failure_message(self.backend, exc)
            raise CompileError(self._failure) from exc


def compile_failure_message(backend: str, exc: BaseException) -> str:
    """One line: which backend failed, the first line of why, and what to do instead."""
    inner = getattr(exc, "inner_exception", None)  # what the backend itself raised
    text = f"{type(inner).__name__}: {inner}" if inner is not None else str(exc)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith("Set TORCHDYNAMO_VERBOSE")]
    reason = lines[0].rstrip(".:") if lines else type(exc).__name__
    advice = "Rerun with --compile off"
    if backend != "aot_eager":
        advice += " (or --compile aot_eager, which needs no C++ compiler)"
    return (f"torch.compile backend {backend!r} failed on this model: {reason}. {advice}; "
            f"compile is not part of the task keys, so finished tasks are kept.")


def with_compile(model: nn.Module, backend: str) -> nn.Module:
    """``model`` compiled with the torch.compile ``backend``, or itself for ``"off"``.

    Results are the same as without compiling (to float rounding); only speed changes.
    """
    if backend == "off":
        return model
    return Compiled(model, backend)


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
