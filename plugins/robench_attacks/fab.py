"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020), Linf and L2, minimal norm.

FAB linearises the classifier at the current iterate, projects both the iterate and the
clean image onto the linearised decision boundary (the hyperplane intersected with the
[0, 1] box, exactly, in the attack's norm), and steps to a convex combination of the two
projections, biased towards the clean image.  Every adversarial iterate is recorded if it is
the smallest so far, and is then pulled back towards the clean image, so the search keeps
shrinking the perturbation instead of stopping at the first success.

As a ``kind="minimal"`` attack it runs once with ``eps=None`` and returns each sample's
smallest adversarial (the clean image where it found none); the harness derives the whole
robust-accuracy curve from their norms.  AutoAttack runs FAB bounded: it accepts an
adversarial only within its eps, and each further target class or restart attacks only the
samples not yet fooled within eps.  Here every target class and restart runs on every sample
and the smallest adversarial over all of them is kept, so at any eps the set of samples
fooled within eps contains the bounded run's (each sample's trajectory does not depend on
the others in its batch): at least as strong at every eps, from one run.
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
    flat,
    lp_norm,
    per_sample,
    positive_float,
    positive_int,
    predict,
)
from robench_attacks.base import NativeAttack

#: the dual norm, in which a hyperplane's distance is measured: |f| / ||w||_dual
_DUAL = {"linf": "l1", "l2": "l2"}
#: AutoAttack's FAB default radius for the random starts of restarts, per norm
_RESTART_RADIUS = {"linf": 0.3, "l2": 1.0}


def _water_level(weight: Tensor, cap: Tensor, need: Tensor) -> Tensor:
    """Per row, the smallest ``lam >= 0`` with ``sum_i weight_i * min(lam, cap_i) >= need``.

    ``weight >= 0`` and ``cap >= 0`` are ``(n, d)``, ``need >= 0`` is ``(n,)``.  The left side
    is piecewise linear and non-decreasing in ``lam`` with kinks at the caps, so after sorting
    the caps it is known at every kink by cumulative sums; the segment where it crosses
    ``need`` gives ``lam`` in closed form.  Where even ``lam = max(cap)`` falls short, that
    maximum is returned (the best the box allows).  No data-dependent shape: no host sync.
    """
    cap_sorted, order = cap.sort(dim=1)
    w_sorted = weight.gather(1, order)
    filled = (w_sorted * cap_sorted).cumsum(dim=1)  # sum over j <= k of w_j * cap_j
    w_below = w_sorted.cumsum(dim=1)
    total = w_below[:, -1:]
    at_kinks = filled + cap_sorted * (total - w_below)  # the left side at lam = cap_k
    k = (at_kinks < need[:, None]).sum(dim=1)  # kinks still short of need
    feasible = k < cap.shape[1]
    prev = (k - 1).clamp_min(0)[:, None]
    has_prev = (k > 0)[:, None]
    filled_prev = torch.where(has_prev, filled.gather(1, prev), torch.zeros_like(total))
    w_prev = torch.where(has_prev, w_below.gather(1, prev), torch.zeros_like(total))
    slope = (total - w_prev).clamp_min(1e-30)
    lam = ((need[:, None] - filled_prev) / slope).clamp_min(0.0)[:, 0]
    return torch.where(feasible, lam, cap_sorted[:, -1])


def boundary_step(t: Tensor, w: Tensor, c: Tensor, norm: str) -> Tensor:
    """The smallest ``d`` (in ``norm``) with ``w . d = c`` and ``t + d`` in [0, 1], per row.

    ``t`` and ``w`` are ``(n, d)``, ``c`` is ``(n,)``: the projection of ``t`` onto the
    hyperplane ``{z : w . z = w . t + c}`` intersected with the box.  Both norms reduce to a
    water level: with ``s = sign(c)`` and the room ``r_i`` each coordinate has towards
    ``sign(s * w_i)`` before it leaves the box, the optimum is ``d_i = s sign(w_i) min(lam,
    r_i)`` (Linf) or ``d_i = s w_i min(lam, r_i / |w_i|)`` (L2, the clipped Lagrangian
    solution).  Where the box does not reach the hyperplane the box corner closest to it is
    returned.
    """
    s = torch.where(c < 0, -1.0, 1.0).to(t.dtype)
    ws = w * s[:, None]  # now w . d must reach |c| >= 0
    room = torch.where(ws > 0, 1.0 - t, t).clamp_min(0.0)
    magnitude = ws.abs()
    active = magnitude > 0
    if norm == "linf":
        weight, cap = magnitude, torch.where(active, room, torch.zeros_like(room))
        lam = _water_level(weight, cap, c.abs())
        return ws.sign() * torch.minimum(lam[:, None], cap)
    weight = magnitude * magnitude
    cap = torch.where(active, room / magnitude.clamp_min(1e-30), torch.zeros_like(room))
    lam = _water_level(weight, cap, c.abs())
    return ws * torch.minimum(lam[:, None], cap)


class FAB(NativeAttack):
    """FAB (Croce & Hein 2020), untargeted: minimal Linf or L2 adversarials.

    Each step linearises the gaps ``z_k - z_y`` to every other class at the iterate, picks
    the class whose linearised boundary is nearest (``|gap| / ||grad||_dual``), projects the
    iterate and the clean image onto that boundary within [0, 1], and moves to
    ``(1 - a) (x_k + eta d_k) + a (x_0 + eta d_0)`` with ``a = min(|d_k| / (|d_k| + |d_0|),
    alpha_max)``.  An adversarial iterate is kept when it is the smallest so far and then
    pulled back to ``x_0 + beta (x_k - x_0)``.  Defaults as AutoAttack: ``steps=100``,
    ``alpha_max=0.1``, ``eta=1.05`` (overshoot), ``beta=0.9``, ``restarts=1``; a further
    restart starts at random at half the sample's best norm so far (half of
    ``restart_radius``, default the ``eps`` given or 0.3 Linf / 1.0 L2, where none was found).
    ``norm="linf"`` (default) or ``"l2"``; ``threat`` follows it.

    Cost per step and sample: one forward, ``classes - 1`` backward passes through it (one
    per linearised boundary) and a plain forward to check the new iterate.  Every sample
    runs every step (the search shrinks adversarials, it does not stop at the first).
    """

    name = "fab"
    threat = "linf"
    kind = "minimal"

    def __init__(
        self,
        *,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        restart_radius: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.norm = choice(norm, ("linf", "l2"), name="norm", attack=self.name)
        self.threat = self.norm
        self.steps = positive_int(steps, name="steps", attack=self.name)
        self.restarts = positive_int(restarts, name="restarts", attack=self.name)
        self.alpha_max = positive_float(alpha_max, name="alpha_max", attack=self.name,
                                        allow_zero=True)
        if self.alpha_max > 1:
            raise robench.UsageError(
                f"{self.name}: parameter alpha_max must be in [0, 1] (the largest weight of "
                f"the clean image's projection in a step), got {alpha_max!r}.")
        self.eta = positive_float(eta, name="eta", attack=self.name)
        self.beta = positive_float(beta, name="beta", attack=self.name)
        if self.beta >= 1:
            raise robench.UsageError(
                f"{self.name}: parameter beta must be in (0, 1) (how far an adversarial "
                f"iterate is pulled back towards the clean image), got {beta!r}.")
        self.restart_radius = (None if restart_radius is None else positive_float(
            restart_radius, name="restart_radius", attack=self.name))
        self.rng = Rng(seed)
        self.params = {
            "norm": self.norm,
            "steps": self.steps,
            "restarts": self.restarts,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
            "restart_radius": self.restart_radius,
            "seed": seed,
        }

    # ------------------------------------------------------------------ protocol

    def perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, eps: float | None = None,
        target: Tensor | None = None,
    ) -> Tensor:
        x, y, target = self._batch(x, y, target)
        radius = self._check_eps(eps)
        out = x.clone()
        self.last_success = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if x.shape[0] == 0:
            return out
        logits = predict(model, x)
        # only samples classified correctly are attacked: the others are adversarial as they are
        todo = (logits.argmax(dim=1) == y).nonzero()[:, 0]  # one host sync per call
        if todo.numel() == 0:
            return out
        x0, y0, logits0 = x[todo], y[todo], logits[todo]
        best = x0.clone()
        best_norm = torch.full((x0.shape[0],), math.inf, device=x.device, dtype=x.dtype)
        start_radius = (self.restart_radius if self.restart_radius is not None
                        else radius if radius is not None else _RESTART_RADIUS[self.norm])
        for aim in self._aims(logits0, y0):
            for restart in range(self.restarts):
                if restart == 0:
                    x_start = x0
                else:
                    with streams.rows(todo):
                        x_start = self._random_start(x0, best_norm, start_radius)
                self._run(model, x0, y0, aim, x_start, best, best_norm)
        if radius is not None:  # a numeric eps: keep only the adversarials within it
            best = torch.where(per_sample(best_norm > radius), x0, best)
        out[todo] = best
        self.last_success[todo] = (torch.isfinite(best_norm) if radius is None
                                   else best_norm <= radius)
        return out

    def _check_eps(self, eps: float | None) -> float | None:
        if eps is None:
            return None
        try:
            radius = float(eps)
        except (TypeError, ValueError):
            radius = math.nan
        if not math.isfinite(radius) or radius < 0:
            raise robench.UsageError(
                f"{self.name}: eps must be None (minimal adversarials) or a number >= 0, "
                f"got {eps!r}.")
        return radius

    def _aims(self, logits: Tensor, y: Tensor) -> list[Tensor | None]:
        """What each run aims at: ``None`` is every other class (the untargeted FAB)."""
        return [None]

    def _random_start(self, x0: Tensor, best_norm: Tensor, radius: float) -> Tensor:
        """A random point at half the best norm so far (half ``radius`` where none yet)."""
        r = 0.5 * best_norm.clamp_max(radius)
        if self.norm == "linf":
            t = 2.0 * self.rng.rand(x0.shape, x0) - 1.0
        else:
            t = self.rng.randn(x0.shape, x0)
        t = t / per_sample(lp_norm(t, self.norm).clamp_min(1e-12))
        return (x0 + per_sample(r) * t).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ one run

    def _gaps_and_grads(
        self, model: nn.Module, x: Tensor, y: Tensor, aim: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Gaps ``z_k - z_y`` (negative while classified ``y``) to the classes aimed at, and
        their input gradients: ``(n, m)`` and ``(n, m, *x.shape[1:])``."""
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            logits = model(x_req)
            n, classes = logits.shape
            if aim is None:  # every class but y: column j is class j, or j + 1 from y on
                cols = torch.arange(classes - 1, device=x.device).expand(n, -1)
                others = cols + (cols >= y[:, None]).long()
            else:
                others = aim[:, None]
            gaps = logits.gather(1, others) - logits.gather(1, y[:, None])
            grads = []
            for k in range(gaps.shape[1]):
                (g,) = torch.autograd.grad(gaps[:, k].sum(), x_req,
                                           retain_graph=k < gaps.shape[1] - 1)
                grads.append(g)
        return gaps.detach(), torch.stack(grads, dim=1)

    def _run(
        self, model: nn.Module, x0: Tensor, y: Tensor, aim: Tensor | None, x_start: Tensor,
        best: Tensor, best_norm: Tensor,
    ) -> None:
        """One FAB run from ``x_start``; updates ``best`` and ``best_norm`` in place."""
        n = x0.shape[0]
        rows = torch.arange(n, device=x0.device)
        x0_flat = flat(x0)
        x1 = x_start.clone()
        for _ in range(self.steps):
            gaps, grads = self._gaps_and_grads(model, x1, y, aim)
            grad_flat = grads.flatten(2)
            dual = grad_flat.abs().sum(dim=2) if self.norm == "linf" else grad_flat.norm(dim=2)
            nearest = (gaps.abs() / (dual + 1e-12)).argmin(dim=1)
            w = grad_flat[rows, nearest]
            f = gaps[rows, nearest]
            x1_flat = flat(x1)
            # the linearised boundary {z : f + w . (z - x1) = 0}, reached from x1 and from x0
            d1 = boundary_step(x1_flat, w, -f, self.norm)
            d0 = boundary_step(x0_flat, w, -f - (w * (x0_flat - x1_flat)).sum(dim=1),
                               self.norm)
            a1 = lp_norm(d1, self.norm).clamp_min(1e-8)
            a0 = lp_norm(d0, self.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a0)).clamp(0.0, self.alpha_max)[:, None]
            x1_flat = ((x1_flat + self.eta * d1) * (1.0 - alpha)
                       + (x0_flat + self.eta * d0) * alpha).clamp(0.0, 1.0)
            x1 = x1_flat.reshape(x0.shape)
            is_adv = predict(model, x1).argmax(dim=1) != y
            dist = lp_norm(x1 - x0, self.norm)
            better = is_adv & (dist < best_norm)
            best.copy_(torch.where(per_sample(better), x1, best))
            best_norm.copy_(torch.where(better, dist, best_norm))
            x1 = torch.where(per_sample(is_adv), x0 + self.beta * (x1 - x0), x1)


class FABT(FAB):
    """FAB-T: targeted FAB over the top non-true classes (AutoAttack's FAB-T), minimal norm.

    One run per target among the ``n_target_classes`` (default 9) non-true classes with the
    highest clean logits; each run linearises only the gap to its target, so a step costs one
    backward pass instead of ``classes - 1``.  Any misclassification counts as success (an
    untargeted attack in robench's sense), and the smallest adversarial over all targets and
    restarts is returned.  Other parameters and defaults as ``fab``.
    """

    name = "fab-t"

    def __init__(
        self,
        *,
        n_target_classes: int = 9,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        restart_radius: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(norm=norm, steps=steps, restarts=restarts, alpha_max=alpha_max,
                         eta=eta, beta=beta, restart_radius=restart_radius, seed=seed)
        self.n_target_classes = positive_int(n_target_classes, name="n_target_classes",
                                             attack=self.name)
        self.params = {"n_target_classes": self.n_target_classes, **self.params}

    def _aims(self, logits: Tensor, y: Tensor) -> list[Tensor | None]:
        k = min(self.n_target_classes, logits.shape[1] - 1)
        ranked = logits.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices
        return [ranked[:, j] for j in range(k)]
