"""AutoAttack-style ensembles: named sequences of robench's own attacks.

A preset is registered as an attack whose spec lists its ``members`` (attack name, fixed
parameters).  In a grid, the harness expands it: each member is a task of its own, keyed and
reported as ``PRESET/MEMBER``, and runs only on the samples that the members before it did not
fool, eps by eps, as AutoAttack runs its attacks.  A member's rows are therefore cumulative
(robust accuracy after it and every member before it), and the last member's row is the
ensemble's robust accuracy; the worst-case rows combine them with the grid's other attacks.

Outside a grid, ``host.build("attack", "autoattack").perturb(model, x, y, eps)`` runs the same
sequence on one batch (:class:`Ensemble`).

Presets (linf; AutoAttack's settings, Croce & Hein 2020):

``autoattack``       standard: apgd-ce, apgd-t (9 targets), fab-t (9 targets), square (5,000
                     queries)
``autoattack-plus``  apgd-ce and apgd-dlr with 5 restarts, fab (5 restarts), square, apgd-t
                     and fab-t (9 targets)
``autoattack-rand``  for randomised models: apgd-ce and apgd-dlr with expectation over 20
                     draws per step (``eot_iter = 20``)
``autoattack-fast``  the cheap ensemble: apgd-ce, then apgd-t over the top-5 target classes
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when an ensemble runs, not when presets are listed
    from torch import Tensor, nn

#: preset -> (member attack, its fixed parameters), in the order they run
PRESETS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "autoattack": (
        ("apgd-ce", {}),
        ("apgd-t", {"n_target_classes": 9}),
        ("fab-t", {"n_target_classes": 9}),
        ("square", {"queries": 5000}),
    ),
    "autoattack-plus": (
        ("apgd-ce", {"restarts": 5}),
        ("apgd-dlr", {"restarts": 5}),
        ("fab", {"restarts": 5}),
        ("square", {"queries": 5000}),
        ("apgd-t", {"n_target_classes": 9}),
        ("fab-t", {"n_target_classes": 9}),
    ),
    "autoattack-rand": (
        ("apgd-ce", {"eot_iter": 20}),
        ("apgd-dlr", {"eot_iter": 20}),
    ),
    "autoattack-fast": (
        ("apgd-ce", {}),
        ("apgd-t", {"n_target_classes": 5}),
    ),
}

DESCRIPTIONS = {
    "autoattack": "AutoAttack standard: apgd-ce, apgd-t, fab-t, square, each on the samples "
                  "still robust.",
    "autoattack-plus": "AutoAttack plus: apgd-ce/apgd-dlr (5 restarts), fab, square, apgd-t, "
                       "fab-t.",
    "autoattack-rand": "AutoAttack rand (randomised models): apgd-ce, apgd-dlr with EOT over "
                       "20 draws.",
    "autoattack-fast": "The cheap ensemble: apgd-ce, then apgd-t over the top-5 targets.",
}


class Ensemble:
    """Runs ``members`` one after another, each on the samples the ones before did not fool;
    a sample keeps the first adversarial found."""

    threat = "linf"
    kind = "bounded"

    def __init__(self, name: str, members: list[tuple[str, Any]]) -> None:
        self.name = name
        self.members = members
        self.params = {"members": [member for member, _ in members]}
        #: after ``perturb``: which examples a member's output was seen adversarial for
        self.last_success: Tensor | None = None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float | None,
                target: Tensor | None = None) -> Tensor:
        import torch

        if target is not None:
            raise ValueError(f"attack {self.name!r} is untargeted")
        x_adv = x.clone()
        seen = torch.zeros(len(y), dtype=torch.bool, device=x.device)
        remaining = torch.arange(len(y), device=x.device)
        for _, attack in self.members:
            if len(remaining) == 0:
                break
            adv = attack.perturb(model, x[remaining], y[remaining], eps)
            with torch.no_grad():
                fooled = model(adv).argmax(1) != y[remaining]
            x_adv[remaining[fooled]] = adv[fooled].detach()
            seen[remaining[fooled]] = True
            remaining = remaining[~fooled]
        self.last_success = seen
        return x_adv


def preset_factory(name: str, builders: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The factory of preset ``name``: an :class:`Ensemble` of its members built with
    ``builders`` (attack name -> factory), all sharing ``seed``."""
    def build(*, seed: int | None = None) -> Ensemble:
        members = [(member, builders[member](**params, seed=seed))
                   for member, params in PRESETS[name]]
        return Ensemble(name, members)

    build.__doc__ = DESCRIPTIONS[name]
    return build
