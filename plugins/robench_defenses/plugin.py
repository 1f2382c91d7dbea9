"""Registers the built-in defenses.

Training defenses (``stage = "training"``) receive ``build_attack`` from the harness besides
the user's parameters; inference defenses (``stage = "inference"``) receive ``model``, the
evaluated model they wrap.  See ``robench.defenses`` for both protocols.
"""

from __future__ import annotations

import robench
from robench_defenses.inference import bit_depth, jpeg, random_resize_pad
from robench_defenses.training import fgsm_rs, pgd_at, trades


def _none() -> None:
    return None


@robench.hookimpl
def robench_register_defenses() -> list[robench.DefenseSpec]:
    return [
        robench.DefenseSpec(name="none", factory=_none, stage="none",
                            description="no defense: the model as trained"),
        robench.DefenseSpec(
            name="pgd-at", factory=pgd_at, stage="training",
            description="PGD adversarial training (Madry et al. 2018): PGD-10 from a random "
                        "start, eps 8/255 (linf) by default, optional eps warm-up."),
        robench.DefenseSpec(
            name="trades", factory=trades, stage="training",
            description="TRADES (Zhang et al. 2019): CE + beta KL(clean || adversarial), "
                        "beta 6, KL maximised by PGD-10."),
        robench.DefenseSpec(
            name="fgsm-rs", factory=fgsm_rs, stage="training",
            description="Fast adversarial training (Wong et al. 2020): one FGSM step of "
                        "1.25 eps from a uniform random start."),
        robench.DefenseSpec(
            name="jpeg", factory=jpeg, stage="inference",
            description="JPEG compression (quality 75) before the model; not differentiable: "
                        "zero gradient, identity under BPDA."),
        robench.DefenseSpec(
            name="bit-depth", factory=bit_depth, stage="inference",
            description="bit-depth reduction (4 bits) before the model; not differentiable: "
                        "zero gradient, identity under BPDA."),
        robench.DefenseSpec(
            name="random-resize-pad", factory=random_resize_pad, stage="inference",
            description="random resize and pad (Xie et al. 2018); randomised: attack with "
                        "EOT."),
    ]
