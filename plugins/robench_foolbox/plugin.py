"""Every foolbox 3 attack as a robench attack: ``foolbox:LinfPGD``, ``foolbox:EADAttack``, ...

One namespace spec, ``foolbox:*``; the factory receives ``name`` (the foolbox class name, as
listed in ``foolbox.attacks``, aliases such as ``FGSM`` and ``LinfPGD`` included) and passes
every other parameter to the class's constructor.  The built object carries the class's own
``threat`` (``linf``, ``l2``, ``l1``, ``l0``, from its distance) and ``kind`` (``bounded``
for foolbox's ``FixedEpsilonAttack``, ``minimal`` for its ``MinimizationAttack``), which
override the namespace spec's.

foolbox is imported lazily, inside the factory, so robench works without it; a missing
foolbox is a usage error that says ``pip install robench[foolbox]``.  The adapter lives in
:mod:`robench_foolbox.adapter`, imported (with torch) only when a ``foolbox:*`` attack is built
or its name is checked; this module only registers the namespace.

What the adapter adds to plain foolbox:

* the model is wrapped as ``foolbox.PyTorchModel(model, bounds=(0, 1))`` on the images'
  device, and any parameter still trainable is frozen for the duration of the attack:
  foolbox differentiates with ``backward()``, which would otherwise write ``.grad`` on every
  parameter and cost 1.3-1.5x more;
* targeted runs use ``foolbox.criteria.TargetedMisclassification``;
* the result is foolbox's eps-clipped output for a bounded attack, and for a minimal one the
  raw adversarial where foolbox reports success and the unchanged image elsewhere; non-finite
  rows fall back to the clean image, and everything is clipped to [0, 1] (which only shrinks
  a perturbation);
* classes that cannot run as-is on a plain classifier get a sensible default or fail with a
  message saying why (see :data:`~robench_foolbox.adapter.NOT_AN_ATTACK`,
  :data:`~robench_foolbox.adapter.DEFAULT_PARAMS` and
  :class:`~robench_foolbox.adapter.FoolboxAttack`).
"""

from __future__ import annotations

from typing import Any

import robench

#: names this module defined before the adapter moved to :mod:`robench_foolbox.adapter`
_MOVED = frozenset({
    "NOT_AN_ATTACK", "DEFAULT_PARAMS", "UNSUPPORTED", "DISTANCES", "FLEXIBLE_DEFAULT",
    "INSTALL_HINT", "import_foolbox", "attack_classes", "runnable_names", "frozen_parameters",
    "FoolboxAttack", "check_foolbox_name",
})


def __getattr__(name: str) -> Any:
    """``robench_foolbox.plugin.FoolboxAttack`` and the others, from the adapter module."""
    if name in _MOVED:
        from robench_foolbox import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@robench.hookimpl
def robench_register_attacks() -> list[robench.AttackSpec]:
    """The ``foolbox:*`` namespace (listed even without foolbox; it fails when built)."""
    return [
        robench.AttackSpec(
            name="foolbox:*", factory=robench.lazy("robench_foolbox.adapter:FoolboxAttack"),
            threat="linf", kind="bounded", targeted=True,
            validate_name=robench.lazy("robench_foolbox.adapter:check_foolbox_name"),
            description="Any foolbox 3 attack class, e.g. foolbox:LinfPGD; threat and kind "
                        "follow the class; targeted where the class supports it.",
        )
    ]
