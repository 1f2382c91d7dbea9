"""Registers the built-in defenses.

Training defenses (``stage = "training"``) receive ``build_attack`` from the harness besides
the user's parameters; inference defenses (``stage = "inference"``) receive ``model``, the
evaluated model they wrap.  See ``robench.defenses`` for both protocols.  The factories are
:func:`robench.lazy` references: torch loads when a defense is built, not when it is listed.
"""

from __future__ import annotations

from typing import Any

import robench

#: the factories and the module that defines each: imported when a defense is built or its
#: parameters are checked (``robench.lazy``), never when the defenses are listed
_FACTORIES: dict[str, str] = {
    "pgd_at": "robench_defenses.training",
    "trades": "robench_defenses.training",
    "fgsm_rs": "robench_defenses.training",
    "jpeg": "robench_defenses.inference",
    "bit_depth": "robench_defenses.inference",
    "random_resize_pad": "robench_defenses.inference",
}


def _lazy(factory: str) -> Any:
    return robench.lazy(f"{_FACTORIES[factory]}:{factory}")


#: The factories under the names this module exported before it became lazy
#: (``robench_defenses.plugin.pgd_at``), imported on first use.
__getattr__ = robench.lazy_module_getattr(__name__, _FACTORIES)


def _none() -> None:
    return None


@robench.hookimpl
def robench_register_defenses() -> list[robench.DefenseSpec]:
    return [
        robench.DefenseSpec(name="none", factory=_none, stage="none",
                            description="no defense: the model as trained"),
        robench.DefenseSpec(
            name="pgd-at", factory=_lazy("pgd_at"), stage="training",
            description="PGD adversarial training (Madry et al. 2018): PGD-10 from a random "
                        "start, eps 8/255 (linf) by default, optional eps warm-up."),
        robench.DefenseSpec(
            name="trades", factory=_lazy("trades"), stage="training",
            description="TRADES (Zhang et al. 2019): CE + beta KL(clean || adversarial), "
                        "beta 6, KL maximised by PGD-10."),
        robench.DefenseSpec(
            name="fgsm-rs", factory=_lazy("fgsm_rs"), stage="training",
            description="Fast adversarial training (Wong et al. 2020): one FGSM step of "
                        "1.25 eps from a uniform random start."),
        robench.DefenseSpec(
            name="jpeg", factory=_lazy("jpeg"), stage="inference",
            description="JPEG compression (quality 75) before the model; not differentiable: "
                        "zero gradient, identity under BPDA."),
        robench.DefenseSpec(
            name="bit-depth", factory=_lazy("bit_depth"), stage="inference",
            description="bit-depth reduction (4 bits) before the model; not differentiable: "
                        "zero gradient, identity under BPDA."),
        robench.DefenseSpec(
            name="random-resize-pad", factory=_lazy("random_resize_pad"), stage="inference",
            description="random resize and pad (Xie et al. 2018); randomised: attack with "
                        "EOT."),
    ]
