"""Minimal-norm L2 attacks: DeepFool and Carlini-Wagner L2.

Both run once with ``eps=None`` and return, per sample, the smallest adversarial they found
(the unchanged image where they found none); the harness turns the per-sample norms into
the whole robust-accuracy-vs-eps curve.  Given a numeric ``eps`` they return only the
adversarials within it, so they can also serve as bounded attacks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import robench
from robench_attacks._core import (
    Tensor,
    flat,
    lp_norm,
    margin_loss,
    per_sample,
    positive_float,
    positive_int,
    predict,
    success,
)
from robench_attacks.base import NativeAttack
from robench_attacks.working_set import WorkingSet


def _keep_within(best: Tensor, x: Tensor, eps: float | None, attack: str,
                 found: Tensor) -> tuple[Tensor, Tensor]:
    """With a numeric ``eps``, fall back to the clean image where the adversarial is larger.
    Returns the examples and which of them are adversarial as the attack saw them (``found``,
    less those given up for their size)."""
    if eps is None:
        return best, found
    radius = float(eps)
    if not math.isfinite(radius) or radius < 0:
        raise robench.UsageError(f"{attack}: eps must be None or a number >= 0, got {eps!r}.")
    too_far = lp_norm(best - x, "l2") > radius
    return torch.where(per_sample(too_far), x, best), found & ~too_far


class DeepFool(NativeAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016), L2.

    Linearises the classifier around the current iterate and jumps to the nearest linearised
    decision boundary among the ``candidates`` (default 10) classes with the highest initial
    logits, accumulating the steps; the image returned is ``x + (1 + overshoot) * total``
    clipped to [0, 1], with ``overshoot=0.02`` so it lands past the boundary.  At most
    ``steps=50`` iterations; a sample leaves the batch once it is adversarial (see
    ``working_set`` for when, on a GPU).

    Cost per iteration: one forward and ``candidates - 1`` backward passes through it (one
    per linearised boundary), plus a final plain forward to check the last iterate.
    """

    name = "deepfool"
    threat = "l2"
    kind = "minimal"

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02, candidates: int = 10) -> None:
        super().__init__()
        self.steps = positive_int(steps, name="steps", attack=self.name)
        self.overshoot = positive_float(overshoot, name="overshoot", attack=self.name,
                                        allow_zero=True)
        self.candidates = positive_int(candidates, name="candidates", attack=self.name,
                                       minimum=2)
        self.params = {"steps": self.steps, "overshoot": self.overshoot,
                       "candidates": self.candidates}

    def perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, eps: float | None = None,
        target: Tensor | None = None,
    ) -> Tensor:
        x, y, target = self._batch(x, y, target)
        self.last_success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if x.shape[0] == 0:
            return x.clone()
        ws = WorkingSet(x, {"x0": x, "y": y, "total": torch.zeros_like(x), "x_cur": x},
                        every=self.compaction(x))
        for it in range(self.steps + 1):
            if it == self.steps:
                ws.settle(success(predict(model, ws["x_cur"]), ws["y"], None), ws["x_cur"])
                break
            with torch.enable_grad():
                x_req = ws["x_cur"].detach().requires_grad_(True)
                logits = model(x_req)
                if "classes" not in ws.state:
                    ws["classes"] = self._candidate_classes(logits.detach(), ws["y"])
                ws.settle(success(logits.detach(), ws["y"], None), ws["x_cur"])
                chosen = logits.gather(1, ws["classes"])
                gaps = chosen[:, 1:] - chosen[:, :1]  # < 0 while still correctly classified
                grads = []
                for k in range(gaps.shape[1]):
                    (g,) = torch.autograd.grad(gaps[:, k].sum(), x_req,
                                               retain_graph=k < gaps.shape[1] - 1)
                    grads.append(g)
            gaps = gaps.detach()
            grad_stack = torch.stack(grads, dim=1)  # (n, K - 1, C, H, W)
            grad_norms = grad_stack.flatten(2).norm(dim=2)
            distances = gaps.abs() / (grad_norms + 1e-8)
            nearest = distances.argmin(dim=1)
            rows = torch.arange(nearest.shape[0], device=x.device)
            w = grad_stack[rows, nearest]
            w_norm = grad_norms[rows, nearest]
            step = (distances[rows, nearest] + 1e-4) / (w_norm + 1e-8)
            ws["total"] = ws["total"] + per_sample(step) * w
            ws["x_cur"] = (ws["x0"] + (1.0 + self.overshoot) * ws["total"]).clamp(0.0, 1.0)
            ws.compact(it)
            if ws.empty:
                break
        best, fooled = ws.finish()
        out, self.last_success = _keep_within(best, x, eps, self.name, fooled)
        return out

    def _candidate_classes(self, logits: Tensor, y: Tensor) -> Tensor:
        """The label first, then the other classes by decreasing logit."""
        k = min(self.candidates, logits.shape[1])
        others = logits.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices
        return torch.cat([y[:, None], others], dim=1)


class CarliniWagnerL2(NativeAttack):
    """Carlini-Wagner L2 (2017): minimise ``||x' - x||_2^2 + c * f(x')`` in tanh space.

    ``f`` is the hinge on the logit margin (``max(z_y - max_{i!=y} z_i, -confidence)``, or to
    the target when targeted), optimised with Adam (``step_size=0.01``) for ``steps=100``
    iterations per constant; ``c`` starts at ``initial_const=0.1`` and is binary-searched per
    sample over ``binary_search_steps=6`` rounds (times 10 until a first success).  Every
    adversarial iterate is recorded and the smallest one is returned.  With
    ``abort_early=True`` a sample whose objective stopped improving (less than 0.01% over
    ``steps/10`` iterations) leaves the batch for the rest of the round, so cost follows the
    samples still moving.  Fewer rounds and steps than the paper's 9 x 10,000 to stay usable
    on a CPU; raise them for a tighter bound.
    """

    name = "cw-l2"
    threat = "l2"
    kind = "minimal"
    targeted_ok = True

    def __init__(
        self,
        *,
        binary_search_steps: int = 6,
        steps: int = 100,
        step_size: float = 0.01,
        initial_const: float = 0.1,
        confidence: float = 0.0,
        abort_early: bool = True,
    ) -> None:
        super().__init__()
        self.binary_search_steps = positive_int(binary_search_steps,
                                                name="binary_search_steps", attack=self.name)
        self.steps = positive_int(steps, name="steps", attack=self.name)
        self.step_size = positive_float(step_size, name="step_size", attack=self.name)
        self.initial_const = positive_float(initial_const, name="initial_const",
                                            attack=self.name)
        self.confidence = positive_float(confidence, name="confidence", attack=self.name,
                                         allow_zero=True)
        self.abort_early = bool(abort_early)
        self.params = {
            "binary_search_steps": self.binary_search_steps,
            "steps": self.steps,
            "step_size": self.step_size,
            "initial_const": self.initial_const,
            "confidence": self.confidence,
            "abort_early": self.abort_early,
        }

    def perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, eps: float | None = None,
        target: Tensor | None = None,
    ) -> Tensor:
        x, y, target = self._batch(x, y, target)
        n = x.shape[0]
        best = x.clone()
        self.last_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        if n == 0:
            return best
        best_norm = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        lower = torch.zeros(n, device=x.device, dtype=x.dtype)
        upper = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)
        w0 = torch.atanh((2.0 * x - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6))
        for _ in range(self.binary_search_steps):
            found = self._round(model, x, y, target, w0, const, best, best_norm)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            bounded = torch.isfinite(upper)
            const = torch.where(bounded, (lower + upper) / 2.0, const * 10.0)
        out, self.last_success = _keep_within(best, x, eps, self.name,
                                               torch.isfinite(best_norm))
        return out

    def _round(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, w0: Tensor,
        const: Tensor, best: Tensor, best_norm: Tensor,
    ) -> Tensor:
        """One Adam run at fixed constants; updates ``best`` in place, returns successes."""
        beta1, beta2 = 0.9, 0.999
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        idx = torch.arange(x.shape[0], device=x.device)
        w, x_a, y_a, t_a, c_a = w0.clone(), x, y, target, const
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        previous = torch.full_like(const, float("inf"))
        check_every = max(self.steps // 10, 1)
        for t in range(1, self.steps + 1):
            with torch.enable_grad():
                w_req = w.detach().requires_grad_(True)
                x_adv = (torch.tanh(w_req) + 1.0) / 2.0
                logits = model(x_adv)
                # margin_loss > 0 iff adversarial; the hinge pushes it past `confidence`
                hinge = (self.confidence - margin_loss(logits, y_a, t_a)).clamp_min(0.0)
                dist = flat(x_adv - x_a).pow(2).sum(dim=1)
                objective = dist + c_a * hinge
                (grad,) = torch.autograd.grad(objective.sum(), w_req)
            x_adv, logits, objective = x_adv.detach(), logits.detach(), objective.detach()
            is_adv = success(logits, y_a, t_a)
            if self.confidence > 0:
                is_adv &= margin_loss(logits, y_a, t_a) >= self.confidence
            norms = dist.detach().sqrt()
            better = is_adv & (norms < best_norm[idx])
            best[idx] = torch.where(per_sample(better), x_adv, best[idx])
            best_norm[idx] = torch.where(better, norms, best_norm[idx])
            found[idx] = found[idx] | is_adv

            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            m_hat = m / (1 - beta1**t)
            v_hat = v / (1 - beta2**t)
            w = w - self.step_size * m_hat / (v_hat.sqrt() + 1e-8)

            if self.abort_early and t % check_every == 0:
                # the one host synchronisation of the loop, every steps // 10 steps
                keep = (objective <= 0.9999 * previous).nonzero()[:, 0]
                previous = objective
                if keep.numel() < idx.numel():
                    idx, w, m, v, x_a, y_a, c_a, previous = (
                        t.index_select(0, keep) for t in (idx, w, m, v, x_a, y_a, c_a, previous))
                    t_a = None if t_a is None else t_a.index_select(0, keep)
                    if idx.numel() == 0:
                        break
        return found
