"""Transfer-learning heads: a new last layer trained on the task's labels.

``linear`` fine-tunes the whole model, ``linear-probe`` freezes the backbone, ``partial``
fine-tunes only its last ``trainable_stages`` stages, ``mlp`` is a hidden layer with dropout.
A pretrained backbone trains at ``backbone_lr_scale`` (default 0.1) times the head's learning
rate, as in Transfer-Learning-Library: its weights are already a good start.

The modules and factories live in :mod:`robench_heads.heads`, imported (with torch) when a head
is built or its parameters are checked; this module only registers them.
"""

from __future__ import annotations

from typing import Any

import robench

#: names this module defined before the heads moved to :mod:`robench_heads.heads`
_MOVED = frozenset({"PRETRAINED_LR_SCALE", "Head", "ProbeHead", "PartialHead", "linear",
                    "linear_probe", "partial", "mlp"})


def __getattr__(name: str) -> Any:
    """``robench_heads.plugin.linear`` and the others, from :mod:`robench_heads.heads`."""
    if name in _MOVED:
        from robench_heads import heads

        return getattr(heads, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy(factory: str) -> Any:
    return robench.lazy(f"robench_heads.heads:{factory}")


@robench.hookimpl
def robench_register_heads() -> list[robench.HeadSpec]:
    return [
        robench.HeadSpec(name="linear", factory=_lazy("linear"), backbone_training="fine-tune",
                         description="new linear layer; whole model fine-tuned"),
        robench.HeadSpec(name="linear-probe", factory=_lazy("linear_probe"),
                         backbone_training="frozen",
                         description="new linear layer on a frozen backbone"),
        robench.HeadSpec(name="partial", factory=_lazy("partial"), backbone_training="partial",
                         description="new linear layer; last trainable_stages stages trained"),
        robench.HeadSpec(name="mlp", factory=_lazy("mlp"), backbone_training="fine-tune",
                         description="hidden layer (hidden, dropout) + linear; fine-tuned"),
    ]
