"""Shared machinery of the native attacks: argument checks, losses, norms and projections.

Every native attack follows the same rules, so they live here once:

* inputs are pixel-space images in [0, 1]; the model normalises internally;
* gradients are taken with respect to the input only, with ``torch.autograd.grad``, so a
  model whose parameters were left trainable still gets no ``.grad`` written on them;
* samples that are already adversarial leave the working batch (early exit, see
  ``working_set``): the harness counts gradient evaluations on the model input, so cost
  follows the samples still robust;
* randomness comes from the harness's per-sample streams (:mod:`robench.streams`: a
  sample's noise does not depend on its batch or shard), from the global torch RNG (seeded
  per batch by the harness) for draws not shaped per sample, or from a private generator
  when the attack was built with ``seed=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import robench
from robench import streams

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]

LOSSES: tuple[str, ...] = ("ce", "dlr", "margin")


# --------------------------------------------------------------------------- arguments


def check_batch(
    x: Tensor, y: Tensor, target: Tensor | None, *, attack: str, targeted_ok: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate a batch and return it detached, labels as int64 on the images' device.

    A targeted request to an attack without a targeted variant is refused rather than
    silently run untargeted, which would report the wrong success criterion.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise robench.UsageError(f"{attack}: images must be a (N, C, H, W) tensor, got {shape}.")
    if not x.is_floating_point():
        raise robench.UsageError(f"{attack}: images must be float in [0, 1], got {x.dtype}.")
    y = torch.as_tensor(y, device=x.device).long().reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise robench.UsageError(
            f"{attack}: {x.shape[0]} images but {y.shape[0]} labels; they must match."
        )
    if target is not None:
        if not targeted_ok:
            raise robench.UsageError(
                f"{attack} has no targeted variant; run it without a target "
                f"(untargeted) or choose a targeted attack."
            )
        target = torch.as_tensor(target, device=x.device).long().reshape(-1)
        if target.shape[0] != x.shape[0]:
            raise robench.UsageError(
                f"{attack}: {x.shape[0]} images but {target.shape[0]} targets; they must match."
            )
    return x.detach(), y, target


def check_eps(eps: float | None, *, attack: str) -> float:
    """A finite, non-negative float budget (bounded attacks must receive one)."""
    if eps is None:
        raise robench.UsageError(
            f"{attack} is an eps-bounded attack and needs a numeric eps, got None."
        )
    try:
        value = float(eps)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise robench.UsageError(f"{attack}: eps must be a finite number >= 0, got {eps!r}.")
    return value


def positive_int(value: Any, *, name: str, attack: str, minimum: int = 1) -> int:
    """Parse an integer parameter, refusing bools, fractions and values below ``minimum``."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise robench.UsageError(
            f"{attack}: parameter {name} must be an integer >= {minimum}, got {value!r}."
        )
    return int(value)


def positive_float(value: Any, *, name: str, attack: str, allow_zero: bool = False) -> float:
    """Parse a float parameter that must be finite and positive (or zero if allowed)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (
            number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise robench.UsageError(
            f"{attack}: parameter {name} must be a finite number {bound}, got {value!r}."
        )
    return number


def choice(value: str, options: tuple[str, ...], *, name: str, attack: str) -> str:
    """Parse a string option against the accepted ones."""
    if value not in options:
        raise robench.UsageError(
            f"{attack}: parameter {name} must be one of {', '.join(options)}; got {value!r}."
        )
    return value


# --------------------------------------------------------------------------- randomness


class Rng:
    """Where a native attack's random numbers come from.

    Built with a seed: a private generator per device, which keeps its state across calls
    (successive batches draw different noise; the numbers depend on batch order).  Without
    one, inside the harness: a draw whose first dimension is the current batch's row count
    comes from the rows' per-sample streams (:mod:`robench.streams`), so a sample's noise is
    the same in any batch or shard; other draws, and draws outside the harness, come from
    the global torch generator (which the harness seeds per batch).  An attack working on
    a part of its batch narrows the streams to it with :func:`robench.streams.rows`.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(int(self.seed))
        return self._generators[key]

    def _streams(self, shape: tuple[int, ...] | torch.Size) -> streams.SampleStreams | None:
        if self.seed is not None or not len(shape):
            return None
        current = streams.current()
        return current if current is not None and len(current) == int(shape[0]) else None

    def rand(self, shape: tuple[int, ...] | torch.Size, like: Tensor) -> Tensor:
        if (rows := self._streams(shape)) is not None:
            return rows.rand(shape, device=like.device, dtype=like.dtype)
        return torch.rand(shape, generator=self.generator(like.device), device=like.device,
                          dtype=like.dtype)

    def randn(self, shape: tuple[int, ...] | torch.Size, like: Tensor) -> Tensor:
        if (rows := self._streams(shape)) is not None:
            return rows.randn(shape, device=like.device, dtype=like.dtype)
        return torch.randn(shape, generator=self.generator(like.device), device=like.device,
                           dtype=like.dtype)

    def randint(self, low: int, high: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
        if (rows := self._streams(shape)) is not None:
            return rows.randint(low, high, shape, device=device)
        return torch.randint(low, high, shape, generator=self.generator(device), device=device)


# --------------------------------------------------------------------------- model calls


def success(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Adversarial by the harness's criterion: misclassified, or classified as the target."""
    pred = logits.argmax(dim=1)
    return pred == target if target is not None else pred != y


def logits_and_grad(
    model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, loss_fn: LossFn
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward and one backward: ``(logits, per-sample loss, d loss / d x)``.

    The loss is maximised by the attacks.  ``enable_grad`` makes the attack work even when the
    caller evaluates under ``torch.no_grad()``; ``autograd.grad`` on the input alone never
    touches parameter ``.grad``.
    """
    with torch.enable_grad():
        x_req = x.detach().requires_grad_(True)
        logits = model(x_req)
        loss = loss_fn(logits, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), x_req)
    return logits.detach(), loss.detach(), grad.detach()


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Logits without a graph (a plain forward, not a gradient evaluation)."""
    with torch.no_grad():
        return model(x.detach())


# --------------------------------------------------------------------------- losses


def ce_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Cross-entropy to increase (untargeted) or the negated CE to the target (targeted)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def margin_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Carlini-Wagner margin: best other logit minus the true one (or target minus best other).

    Positive exactly when the sample is adversarial, so maximising it aims at the boundary.
    """
    if target is None:
        true = logits.gather(1, y[:, None])[:, 0]
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return other - true
    tgt = logits.gather(1, target[:, None])[:, 0]
    other = logits.scatter(1, target[:, None], float("-inf")).amax(dim=1)
    return tgt - other


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), to maximise.

    Untargeted: ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``, shift- and scale-invariant in
    the logits, so a model that only rescales its logits cannot hide from it; needs >= 3
    classes.  Targeted: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; needs >= 4 classes.
    """
    classes = logits.shape[1]
    needed = 3 if target is None else 4
    if classes < needed:
        kind = "untargeted" if target is None else "targeted"
        raise robench.UsageError(
            f"The {kind} DLR loss needs at least {needed} classes (it normalises by the gap "
            f"between the largest and the {needed - 1 if target is None else '3rd/4th'} "
            f"largest logit); this model has {classes}. Use the CE loss (apgd-ce) instead."
        )
    ordered, _ = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        top_is_y = (logits.argmax(dim=1) == y).to(logits.dtype)
        best_other = ordered[:, -2] * top_is_y + ordered[:, -1] * (1.0 - top_is_y)
        return -(z_y - best_other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)
    z_t = logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


def loss_function(name: str) -> LossFn:
    return {"ce": ce_loss, "dlr": dlr_loss, "margin": margin_loss}[name]


# --------------------------------------------------------------------------- norms


def per_sample(t: Tensor) -> Tensor:
    """Reshape a per-sample ``(N,)`` tensor to ``(N, 1, 1, 1)`` to broadcast over images."""
    return t.reshape(-1, 1, 1, 1)


def flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def lp_norm(delta: Tensor, p: str) -> Tensor:
    """Per-sample norm of a perturbation: ``linf``, ``l2``, ``l1`` or ``l0``."""
    d = flat(delta)
    if p == "linf":
        return d.abs().amax(dim=1)
    if p == "l2":
        return d.norm(p=2, dim=1)
    if p == "l1":
        return d.abs().sum(dim=1)
    if p == "l0":
        return (d != 0).sum(dim=1).to(delta.dtype)
    raise ValueError(f"unknown norm {p!r}")


def project_l1_ball(delta: Tensor, eps: float) -> Tensor:
    """Euclidean projection of each sample onto the L1 ball of radius ``eps`` (Duchi et al.
    2008, sort-based); samples inside the ball are returned unchanged."""
    d = flat(delta)
    outside = d.abs().sum(dim=1) > eps
    v = d  # every row is projected and the inside ones kept: no data-dependent shape
    u = v.abs()
    mu, _ = u.sort(dim=1, descending=True)
    cumsum = mu.cumsum(dim=1)
    ranks = torch.arange(1, u.shape[1] + 1, device=u.device, dtype=u.dtype)
    cond = mu - (cumsum - eps) / ranks > 0
    rho = (cond.sum(dim=1) - 1).clamp_min(0)  # cond holds on a prefix; rho: its last index
    theta = (cumsum.gather(1, rho[:, None])[:, 0] - eps) / (rho + 1).to(u.dtype)
    projected = v.sign() * (u - theta[:, None]).clamp_min(0)
    return torch.where(outside[:, None], projected, d).reshape(delta.shape)


def project(x_adv: Tensor, x: Tensor, eps: float, p: str) -> Tensor:
    """Project into the ``p``-ball of radius ``eps`` around ``x``, then into [0, 1].

    Clipping to the box after the ball projection can only shrink each coordinate of the
    perturbation, so the result stays inside the ball (for linf, l2 and l1 alike).
    """
    delta = x_adv - x
    if p == "linf":
        delta = delta.clamp(-eps, eps)
    elif p == "l2":
        norms = flat(delta).norm(p=2, dim=1)
        factor = torch.where(norms > eps, eps / norms.clamp_min(1e-12), torch.ones_like(norms))
        delta = delta * per_sample(factor)
    elif p == "l1":
        delta = project_l1_ball(delta, eps)
    else:
        raise ValueError(f"unknown norm {p!r}")
    return (x + delta).clamp(0.0, 1.0)


def random_in_ball(x: Tensor, eps: float, p: str, rng: Rng) -> Tensor:
    """A random start inside the ``p``-ball around ``x`` and inside [0, 1].

    linf: uniform in the cube.  l2: uniform in the ball (Gaussian direction, radius
    ``eps * u^(1/d)``).  l1: uniform in the ball (normalised exponential spacings, random
    signs).
    """
    n, dim = x.shape[0], x[0].numel()
    if p == "linf":
        delta = (2.0 * rng.rand(x.shape, x) - 1.0) * eps
    elif p == "l2":
        direction = flat(rng.randn(x.shape, x))
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        radius = eps * rng.rand((n, 1), x).pow(1.0 / dim)
        delta = (direction * radius).reshape(x.shape)
    elif p == "l1":
        spacings = -torch.log(rng.rand((n, dim + 1), x).clamp_min(1e-12))
        magnitudes = spacings[:, :dim] / spacings.sum(dim=1, keepdim=True)
        signs = torch.where(rng.rand((n, dim), x) < 0.5, -1.0, 1.0).to(x.dtype)
        delta = (eps * magnitudes * signs).reshape(x.shape)
    else:
        raise ValueError(f"unknown norm {p!r}")
    return project(x + delta, x, eps, p)


def normalized(grad: Tensor, p: str) -> Tensor:
    """Unit-``p``-norm version of ``grad`` per sample (zero stays zero)."""
    norms = lp_norm(grad, p).clamp_min(1e-12)
    return grad / per_sample(norms)
