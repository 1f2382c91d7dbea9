"""Domain adaptation: ``none`` (source only), ``dann`` (gradient reversal) and ``coral``;
and the backbone ``digits-cnn``, the digit CNN of Ganin & Lempitsky's MNIST -> MNIST-M run.

DANN: "classify classes correctly, agnostic to domains".  A domain classifier learns to tell
source features from target features; a gradient reversal layer in front of it makes the
feature extractor climb the domain classifier's loss, so the features keep what separates
classes and lose what separates domains.

The modules and factories live in :mod:`robench_grl.modules`, imported (with torch) when one
is built or its parameters are checked; this module only registers them.
"""

from __future__ import annotations

from typing import Any

import robench

#: names this module defined before the code moved to :mod:`robench_grl.modules`
_MOVED = frozenset({"SourceOnly", "DANN", "CORAL", "DigitsCNN", "digits_cnn", "none", "dann",
                    "coral"})


def __getattr__(name: str) -> Any:
    """``robench_grl.plugin.DANN`` and the others, from :mod:`robench_grl.modules`."""
    if name in _MOVED:
        from robench_grl import modules

        return getattr(modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy(factory: str) -> Any:
    return robench.lazy(f"robench_grl.modules:{factory}")


@robench.hookimpl
def robench_register_adaptors() -> list[robench.AdaptorSpec]:
    return [
        robench.AdaptorSpec(name="none", factory=_lazy("none"), uses_target=False,
                            description="source only: no adaptation"),
        robench.AdaptorSpec(name="dann", factory=_lazy("dann"), uses_target=True,
                            description="domain classifier behind a gradient reversal layer "
                                        "(Ganin & Lempitsky 2015)"),
        robench.AdaptorSpec(name="coral", factory=_lazy("coral"), uses_target=True,
                            description="match source/target feature covariances "
                                        "(Deep CORAL)"),
    ]


@robench.hookimpl
def robench_register_backbones() -> list[robench.BackboneSpec]:
    return [robench.BackboneSpec(name="digits-cnn", factory=_lazy("digits_cnn"),
                                 description="Ganin & Lempitsky's digit CNN (conv32-pool-"
                                             "conv48-pool, batch norm)")]
