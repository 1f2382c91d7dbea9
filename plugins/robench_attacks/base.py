"""The base class of the native attacks: identity, threat model, kind and parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robench import streams
from robench_attacks._core import Tensor, check_batch, check_eps
from robench_attacks.working_set import compact_interval


class NativeAttack:
    """Base of the native attacks: name, threat model, kind and reported parameters.

    ``threat`` and ``kind`` mirror the spec; the harness reads them from the object when
    present, which lets one class serve several threat models.
    """

    name: str = ""
    threat: str = "linf"
    kind: str = "bounded"
    targeted_ok: bool = False
    #: steps between compactions of the working batch (see ``working_set``); ``None``: 1 on
    #: the CPU, ``DEVICE_COMPACT_EVERY`` elsewhere.  Results do not depend on it, so it is
    #: not a reported parameter.
    compact_every: int | None = None

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        #: after ``perturb``: which returned examples this attack's own forward passes saw as
        #: adversarial (``None``: not known).  The harness counts those that its verification
        #: does not confirm (``n_verify_mismatch``) and attacks them once more.
        self.last_success: Tensor | None = None

    def compaction(self, x: Tensor) -> int:
        """Steps between compactions of the working batch for a batch on ``x``'s device."""
        return compact_interval(x.device, self.compact_every)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def _batch(
        self, x: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        return check_batch(x, y, target, attack=self.name, targeted_ok=self.targeted_ok)


class BoundedAttack(NativeAttack):
    """An eps-bounded attack: the batch and eps checks and the trivial cases live here once,
    subclasses implement ``_perturb`` on a non-empty batch with a positive radius."""

    def perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, eps: float | None,
        target: Tensor | None = None,
    ) -> Tensor:
        x, y, target = self._batch(x, y, target)
        radius = check_eps(eps, attack=self.name)
        self.last_success = None  # a subclass's _perturb sets it when it knows
        if radius == 0 or x.shape[0] == 0:
            self.last_success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            return x.clone()
        return self._perturb(model, x, y, radius, target)

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, radius: float, target: Tensor | None
    ) -> Tensor:
        raise NotImplementedError


def run_restarts(
    x: Tensor, restarts: int, run_once: Callable[[Tensor, bool], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Restart an attack on the samples it has not fooled yet.

    ``run_once(indices, last)`` attacks ``x[indices]`` and returns the iterates and which of
    them were seen adversarial; ``last`` says no restart follows (so it need not check).
    Returns the examples and which of them some run saw adversarial.
    """
    out = x.clone()
    seen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    remaining = torch.arange(x.shape[0], device=x.device)
    for restart in range(restarts):
        if remaining.numel() == 0:
            break
        with streams.rows(remaining):  # the per-sample noise of the samples attacked
            adv, fooled = run_once(remaining, restart == restarts - 1)
        out[remaining] = adv
        seen[remaining] = fooled
        remaining = remaining[~fooled]
    return out, seen
