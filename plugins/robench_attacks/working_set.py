"""Early exit that does not stall an asynchronous device.

An iterative attack drops a sample as soon as one of its iterates is adversarial, so that the
sample costs no further model evaluations.  Dropping rows is a data-dependent shape: the host
has to learn how many rows remain, which on a GPU means waiting for every queued kernel (a
host synchronisation).  Doing that at every step would idle the GPU once per step.

:class:`WorkingSet` separates the two halves of early exit:

* ``settle`` records newly adversarial iterates with device-side operations only
  (``torch.where`` and integer-index writes): no host synchronisation, at every step;
* ``compact`` drops the finished rows (one synchronisation), but only every ``every`` steps.

On the CPU there is no queue to drain, so ``every`` is 1 and rows leave at once (exactly the
cost of per-step early exit).  On other devices rows leave every :data:`DEVICE_COMPACT_EVERY`
steps; in between a finished row keeps being computed (and counted as a gradient evaluation
by the harness, so ``grad_evals`` on a GPU can exceed the CPU's by up to ``every - 1`` steps per
fooled sample), but what it returns is already fixed.  Results do not depend on ``every``:
rows never interact, and the first adversarial iterate of each sample is the one returned.
"""

from __future__ import annotations

import torch

from robench_attacks._core import Tensor, per_sample

#: steps between two compactions of the working batch on a device other than the CPU
DEVICE_COMPACT_EVERY = 4


def compact_interval(device: torch.device, override: int | None = None) -> int:
    """Steps between compactions: ``override`` when given, else 1 on the CPU and
    :data:`DEVICE_COMPACT_EVERY` on other devices."""
    if override is not None:
        return max(1, int(override))
    return 1 if device.type == "cpu" else DEVICE_COMPACT_EVERY


class WorkingSet:
    """The rows of a batch still under attack, and what the attack returns for the others.

    ``state`` holds the per-sample tensors of the rows still worked on (first dimension: those
    rows); ``idx`` maps each row back to its position in the batch; ``done`` marks rows already
    settled but not yet dropped.  ``out`` and ``fooled`` are batch-sized: the example to return
    and whether it was seen adversarial.
    """

    def __init__(self, x: Tensor, state: dict[str, Tensor], *, every: int) -> None:
        n = x.shape[0]
        self.out = x.clone()
        self.fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.idx = torch.arange(n, device=x.device)
        self.done = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.state = state
        self.every = max(1, int(every))

    def __getitem__(self, key: str) -> Tensor:
        return self.state[key]

    def __setitem__(self, key: str, value: Tensor) -> None:
        self.state[key] = value

    def get(self, key: str) -> Tensor | None:
        return self.state.get(key)

    @property
    def empty(self) -> bool:
        """No row left (a host-side shape: no synchronisation)."""
        return self.idx.numel() == 0

    def settle(self, is_adv: Tensor, x_adv: Tensor) -> None:
        """Record ``x_adv`` for the rows adversarial now and not before (device-side only)."""
        new = is_adv & ~self.done
        self.out[self.idx] = torch.where(per_sample(new), x_adv, self.out[self.idx])
        self.fooled[self.idx] = self.fooled[self.idx] | new
        self.done = self.done | is_adv

    def compact(self, step: int) -> None:
        """Drop the settled rows if ``step`` is a compaction step: one synchronisation (the
        indices of the rows kept), then index-based gathers that need none."""
        if (step + 1) % self.every:
            return
        keep = (~self.done).nonzero().squeeze(1)
        if keep.numel() == self.done.numel():
            return
        self.state = {key: value.index_select(0, keep) for key, value in self.state.items()}
        self.idx = self.idx.index_select(0, keep)
        self.done = self.done.index_select(0, keep)

    def finish(self, x_last: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(out, fooled)``; rows never settled return ``x_last`` (or stay the input)."""
        if x_last is not None and not self.empty:
            self.out[self.idx] = torch.where(per_sample(self.done), self.out[self.idx], x_last)
        return self.out, self.fooled
