"""Attacks that use only model outputs: the ``noise`` baseline and the Square attack.

Neither computes a gradient; every model call is a plain forward under ``torch.no_grad``,
and only samples not yet fooled are queried again.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import robench
from robench import streams
from robench_attacks._core import (
    Rng,
    Tensor,
    choice,
    margin_loss,
    per_sample,
    positive_float,
    positive_int,
    predict,
    project,
    success,
)
from robench_attacks.base import BoundedAttack


class Noise(BoundedAttack):
    """Random noise in the Linf ball: the baseline a gradient attack must beat.

    Each of ``draws`` (default 10) independent draws is uniform in the eps cube
    (``distribution="uniform"``) or on its corners (``"sign"``, ±eps per pixel), clipped to
    [0, 1].  A sample fooled by a draw keeps it and is not queried again; the others get
    the last draw.  One draw costs no model call at all (the harness re-classifies); each
    earlier draw costs one plain forward of the samples still robust.  If a white-box attack
    fools fewer samples than this, its gradients are probably masked.
    """

    name = "noise"
    threat = "linf"

    def __init__(
        self, *, draws: int = 10, distribution: str = "uniform", seed: int | None = None
    ) -> None:
        super().__init__()
        self.draws = positive_int(draws, name="draws", attack=self.name)
        self.distribution = choice(distribution, ("uniform", "sign"), name="distribution",
                                   attack=self.name)
        self.rng = Rng(seed)
        self.params = {"draws": self.draws, "distribution": self.distribution, "seed": seed}

    def _draw(self, x: Tensor, eps: float) -> Tensor:
        u = 2.0 * self.rng.rand(x.shape, x) - 1.0
        if self.distribution == "sign":
            u = torch.where(u < 0, -1.0, 1.0).to(x.dtype)
        return project(x + eps * u, x, eps, "linf")

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, radius: float, target: Tensor | None
    ) -> Tensor:
        out = x.clone()
        seen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        idx = torch.arange(x.shape[0], device=x.device)
        for draw in range(self.draws):
            with streams.rows(idx):
                candidate = self._draw(x[idx], radius)
            out[idx] = candidate
            if draw == self.draws - 1:
                break  # the last draw is not queried: the harness verifies it
            fooled = success(predict(model, candidate), y[idx], None)
            seen[idx] = fooled
            idx = idx[~fooled]
            if idx.numel() == 0:
                break
        self.last_success = seen
        return out


def _square_fraction(p_init: float, iteration: int, budget: int) -> float:
    """Square attack's schedule of the square's area fraction, rescaled to 10,000 queries."""
    it = int(iteration / budget * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                           (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


class Square(BoundedAttack):
    """Square attack (Andriushchenko et al. 2020), score-based black-box, Linf.

    Starts from random vertical stripes at ±eps and, per query, proposes to reset one random
    square window (per sample, per channel ±eps) of the perturbation; a proposal is kept if
    it lowers the margin loss (untargeted: ``z_y - max_{i!=y} z_i``) or the cross-entropy to
    the target (targeted).  The window's area fraction starts at ``p_init=0.8`` and halves
    on AutoAttack's schedule.  ``queries=5000`` (AutoAttack's budget) is the number of model
    evaluations per sample, initialisation included; fooled samples stop querying (at once
    on the CPU, within ``DEVICE_COMPACT_EVERY`` queries on a GPU, where dropping them costs a
    host synchronisation).  No gradients are computed.
    """

    name = "square"
    threat = "linf"
    targeted_ok = True

    def __init__(
        self, *, queries: int = 5000, p_init: float = 0.8, seed: int | None = None
    ) -> None:
        super().__init__()
        self.queries = positive_int(queries, name="queries", attack=self.name)
        self.p_init = positive_float(p_init, name="p_init", attack=self.name)
        if self.p_init > 1:
            raise robench.UsageError(f"square: p_init must be in (0, 1], got {p_init!r}.")
        self.rng = Rng(seed)
        self.params = {"queries": self.queries, "p_init": self.p_init, "seed": seed}

    @staticmethod
    def _scores(logits: Tensor, y: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(margin, loss)``: margin <= 0 means adversarial; the loss is minimised."""
        if target is None:
            margin = -margin_loss(logits, y, None)
            return margin, margin.clone()
        margin = -margin_loss(logits, y, target)
        return margin, torch.nn.functional.cross_entropy(logits, target, reduction="none")

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, radius: float, target: Tensor | None
    ) -> Tensor:
        n, c, h, w = x.shape
        stripes = torch.where(self.rng.rand((n, c, 1, w), x) < 0.5, -radius, radius)
        x_best = project(x + stripes.to(x.dtype), x, radius, "linf")
        logits = predict(model, x_best)
        margin, loss = self._scores(logits, y, target)
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        idx = torch.arange(n, device=x.device)
        every = self.compaction(x)
        for i in range(self.queries - 1):
            if i % every == 0:  # drop fooled samples: one host synchronisation
                idx = idx.index_select(0, (margin.index_select(0, idx) > 0).nonzero()[:, 0])
                if idx.numel() == 0:
                    break
            p = _square_fraction(self.p_init, i, self.queries)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
            # proposals are drawn for the whole batch and taken for the rows still attacked,
            # so each sample's proposals do not depend on which others have fallen
            top = self.rng.randint(0, h - s + 1, (n,), x.device)[idx].view(-1, 1, 1, 1)
            left = self.rng.randint(0, w - s + 1, (n,), x.device)[idx].view(-1, 1, 1, 1)
            window = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
            signs = torch.where(self.rng.rand((n, c, 1, 1), x)[idx] < 0.5, -radius, radius)
            x_cur = x[idx]
            proposal = torch.where(window, x_cur + signs.to(x.dtype), x_best[idx])
            proposal = project(proposal, x_cur, radius, "linf")
            new_margin, new_loss = self._scores(predict(model, proposal), y[idx],
                                                None if target is None else target[idx])
            # a sample fooled since the last compaction stays as it is
            better = (margin[idx] > 0) & ((new_loss < loss[idx]) | (new_margin <= 0))
            x_best[idx] = torch.where(per_sample(better), proposal, x_best[idx])
            loss[idx] = torch.where(better, new_loss, loss[idx])
            margin[idx] = torch.where(better, new_margin, margin[idx])
        self.last_success = margin <= 0
        return x_best
