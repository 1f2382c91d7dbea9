"""robench's native attacks, registered through the ``robench`` entry-point group.

Gradient attacks (``fgsm``, ``pgd``, ``pgd-l2``, ``pgd-l1``, ``apgd-ce``, ``apgd-dlr``,
``apgd-t``), minimal-norm attacks (``deepfool``, ``cw-l2``, ``fab``, ``fab-t``), black-box
``square``, the ``noise`` baseline, and common corruptions (``gaussian-noise``,
``gaussian-blur``, ``contrast``, ``brightness``, ``jpeg``; eps = severity 1..5).
``apgd-ce``, ``apgd-t``, ``fab-t`` and ``square`` are AutoAttack's standard ensemble.  All
are batched and pure PyTorch in pixel space [0, 1]; the bounded ones stop working on a
sample once it is adversarial, the minimal ones keep shrinking it.  Each factory takes
keyword-only parameters (see the classes' docstrings for what they mean and why the
defaults are what they are); the built object exposes ``params``, ``threat`` and ``kind``.

This module imports no torch: every factory is a :func:`robench.lazy` reference (or a function
that imports inside), so the attack modules load only when an attack is built or its
parameters are checked, never when ``robench plugins`` lists them or a name is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import robench
from robench_attacks.catalog import CORRUPTIONS
from robench_attacks.presets import DESCRIPTIONS, PRESETS, preset_factory

if TYPE_CHECKING:
    from robench_attacks.gradient import APGD

#: where each attack class lives: the factories import it when an attack is built or its
#: parameters are checked, never when the attacks are listed (``robench plugins``)
_CLASSES: dict[str, str] = {
    "FGSM": "robench_attacks.gradient",
    "PGD": "robench_attacks.gradient",
    "PGDL2": "robench_attacks.gradient",
    "PGDL1": "robench_attacks.gradient",
    "APGD": "robench_attacks.gradient",
    "APGDT": "robench_attacks.gradient",
    "DeepFool": "robench_attacks.minimal",
    "CarliniWagnerL2": "robench_attacks.minimal",
    "FAB": "robench_attacks.fab",
    "FABT": "robench_attacks.fab",
    "Square": "robench_attacks.blackbox",
    "Noise": "robench_attacks.blackbox",
}


def _lazy(cls: str) -> Callable[..., Any]:
    return robench.lazy(f"{_CLASSES[cls]}:{cls}")


def __getattr__(name: str) -> Any:
    """The attack classes under the names this module exported before it became lazy
    (``robench_attacks.plugin.PGD``), imported on first use."""
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def apgd_ce(
    *,
    steps: int = 100,
    restarts: int = 1,
    norm: str = "linf",
    rho: float = 0.75,
    momentum: float = 0.75,
    eot_iter: int = 1,
    seed: int | None = None,
) -> APGD:
    """APGD on the cross-entropy loss (AutoAttack's first attack)."""
    from robench_attacks.gradient import APGD

    return APGD(loss="ce", steps=steps, restarts=restarts, norm=norm, rho=rho,
                momentum=momentum, eot_iter=eot_iter, seed=seed)


def apgd_dlr(
    *,
    steps: int = 100,
    restarts: int = 1,
    norm: str = "linf",
    rho: float = 0.75,
    momentum: float = 0.75,
    eot_iter: int = 1,
    seed: int | None = None,
) -> APGD:
    """APGD on the DLR loss, invariant to logit shift and scale (needs >= 3 classes)."""
    from robench_attacks.gradient import APGD

    return APGD(loss="dlr", steps=steps, restarts=restarts, norm=norm, rho=rho,
                momentum=momentum, eot_iter=eot_iter, seed=seed)


def _specs() -> list[robench.AttackSpec]:
    specs = [
        robench.AttackSpec(
            name="fgsm", factory=_lazy("FGSM"), threat="linf", kind="bounded", targeted=True,
            description="Fast Gradient Sign Method: one signed-gradient step of size eps.",
        ),
        robench.AttackSpec(
            name="pgd", factory=_lazy("PGD"), threat="linf", kind="bounded", targeted=True,
            description="Linf PGD (Madry): 20 steps of 2.5*eps/steps, random start, CE loss.",
        ),
        robench.AttackSpec(
            name="pgd-l2", factory=_lazy("PGDL2"), threat="l2", kind="bounded", targeted=True,
            description="L2 PGD: 20 normalised-gradient steps of 2.5*eps/steps, random start.",
        ),
        robench.AttackSpec(
            name="pgd-l1", factory=_lazy("PGDL1"), threat="l1", kind="bounded", targeted=True,
            description="L1 PGD as SLIDE: sparse top-1% gradient steps, exact L1 projection.",
        ),
        robench.AttackSpec(
            name="apgd-ce", factory=apgd_ce, threat="linf", kind="bounded", targeted=True,
            description="Auto-PGD (AutoAttack) on CE: 100 steps, step-size halving, momentum.",
        ),
        robench.AttackSpec(
            name="apgd-dlr", factory=apgd_dlr, threat="linf", kind="bounded", targeted=True,
            description="Auto-PGD on the scale-invariant DLR loss; needs >= 3 classes.",
        ),
        robench.AttackSpec(
            name="apgd-t", factory=_lazy("APGDT"), threat="linf", kind="bounded",
            description="Auto-PGD on the targeted DLR loss (AutoAttack's APGD-T): 100 steps "
                        "per target, top-9 classes; any misclassification counts. norm=l2 too.",
        ),
        robench.AttackSpec(
            name="deepfool", factory=_lazy("DeepFool"), threat="l2", kind="minimal",
            description="DeepFool L2 minimal adversarials: 50 steps, overshoot 0.02.",
        ),
        robench.AttackSpec(
            name="cw-l2", factory=_lazy("CarliniWagnerL2"), threat="l2", kind="minimal",
            targeted=True,
            description="Carlini-Wagner L2 minimal adversarials: 6 binary-search rounds x 100 "
                        "Adam steps.",
        ),
        robench.AttackSpec(
            name="fab", factory=_lazy("FAB"), threat="linf", kind="minimal",
            description="FAB minimal adversarials (fast adaptive boundary): 100 steps "
                        "projecting onto the linearised nearest boundary. norm=l2 too.",
        ),
        robench.AttackSpec(
            name="fab-t", factory=_lazy("FABT"), threat="linf", kind="minimal",
            description="Targeted FAB over the top-9 classes (AutoAttack's FAB-T), smallest "
                        "adversarial over all targets; 100 steps each. norm=l2 too.",
        ),
        robench.AttackSpec(
            name="square", factory=_lazy("Square"), threat="linf", kind="bounded",
            black_box=True, targeted=True,
            description="Square attack, score-based black-box Linf: 5000 queries, p_init 0.8.",
        ),
        robench.AttackSpec(
            name="noise", factory=_lazy("Noise"), threat="linf", kind="bounded",
            black_box=True,
            description="Uniform noise in the Linf ball, best of 10 draws: the baseline.",
        ),
    ]
    for name, cls, summary in CORRUPTIONS:
        specs.append(robench.AttackSpec(
            name=name, factory=robench.lazy(f"robench_attacks.corruptions:{cls}"),
            threat="corruption", kind="bounded",
            description=f"Common corruption, eps = severity 1..5. {summary}",
        ))
    factories = {spec.name: spec.factory for spec in specs}
    for preset, members in PRESETS.items():
        specs.append(robench.AttackSpec(
            name=preset, factory=preset_factory(preset, factories), threat="linf",
            kind="bounded", members=tuple((m, dict(p)) for m, p in members),
            description=f"{DESCRIPTIONS[preset]} = "
                        + " -> ".join(m for m, _ in members),
        ))
    return specs


@robench.hookimpl
def robench_register_attacks() -> list[robench.AttackSpec]:
    """The native attacks and corruptions."""
    return _specs()
