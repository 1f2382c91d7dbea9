"""White-box, eps-bounded gradient attacks: FGSM, PGD (Linf, L2, SLIDE-L1), APGD and APGD-T.

All of them are batched and pure PyTorch in pixel space, and drop a sample from the working
batch once one of its iterates is adversarial: that iterate is returned, and the sample
costs no further gradient evaluations (dropped at once on the CPU, within
``DEVICE_COMPACT_EVERY`` steps on a GPU: see ``working_set``).  A sample never fooled gets
the last iterate (PGD) or its highest-loss iterate (APGD), always inside the eps ball and
[0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

import robench
from robench import streams
from robench_attacks._core import (
    LOSSES,
    LossFn,
    Rng,
    Tensor,
    choice,
    flat,
    logits_and_grad,
    loss_function,
    normalized,
    per_sample,
    positive_float,
    positive_int,
    predict,
    project,
    random_in_ball,
    success,
)
from robench_attacks.base import BoundedAttack, run_restarts
from robench_attacks.working_set import WorkingSet


def _take(t: Tensor | None, keep: Tensor) -> Tensor | None:
    return None if t is None else t[keep]


# --------------------------------------------------------------------------- FGSM


class FGSM(BoundedAttack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one signed-gradient step of size
    eps, clipped to [0, 1].

    The cheapest white-box baseline: one gradient evaluation per sample.  Untargeted it
    ascends the cross-entropy of the label; targeted it descends the cross-entropy of the
    target.  Identical to foolbox's ``FGSM`` (``LinfFastGradientAttack``).
    """

    name = "fgsm"
    threat = "linf"
    targeted_ok = True

    def __init__(self, *, loss: str = "ce") -> None:
        super().__init__()
        self.loss = choice(loss, LOSSES, name="loss", attack=self.name)
        self.params = {"loss": self.loss}

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, radius: float, target: Tensor | None
    ) -> Tensor:
        _, _, grad = logits_and_grad(model, x, y, target, loss_function(self.loss))
        return project(x + radius * grad.sign(), x, radius, "linf")


# --------------------------------------------------------------------------- PGD


class PGD(BoundedAttack):
    """Projected Gradient Descent (Madry et al. 2018) in the Linf ball.

    Defaults (strong rather than fast, as in Madry et al.'s CIFAR evaluation): ``steps=20``,
    step size ``rel_step_size * eps / steps`` with ``rel_step_size=2.5`` (so the iterates can
    cross the ball more than twice and still settle), a uniform random start, one restart,
    cross-entropy loss.  ``step_size`` overrides the relative rule with an absolute size.
    With ``restarts > 1`` each further restart runs only on samples not yet fooled, at the
    price of one extra plain forward per restart to know which those are.
    """

    name = "pgd"
    threat = "linf"
    targeted_ok = True
    norm = "linf"

    def __init__(
        self,
        *,
        steps: int = 20,
        step_size: float | None = None,
        rel_step_size: float = 2.5,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.steps = positive_int(steps, name="steps", attack=self.name)
        self.step_size = (None if step_size is None
                          else positive_float(step_size, name="step_size", attack=self.name))
        self.rel_step_size = positive_float(rel_step_size, name="rel_step_size",
                                            attack=self.name)
        self.random_start = bool(random_start)
        self.restarts = positive_int(restarts, name="restarts", attack=self.name)
        self.loss = choice(loss, LOSSES, name="loss", attack=self.name)
        self.rng = Rng(seed)
        self.params = {
            "steps": self.steps,
            "step_size": self.step_size,
            "rel_step_size": self.rel_step_size,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "loss": self.loss,
            "seed": seed,
        }

    def direction(self, grad: Tensor, x_adv: Tensor) -> Tensor:
        """The steepest-ascent direction of unit ``norm`` (sign of the gradient for Linf)."""
        return grad.sign()

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, radius: float, target: Tensor | None
    ) -> Tensor:
        step = self.step_size if self.step_size is not None else (
            self.rel_step_size * radius / self.steps)
        out, self.last_success = run_restarts(x, self.restarts, lambda idx, last: self._run(
            model, x[idx], y[idx], _take(target, idx), radius, step, check_end=not last))
        return out

    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, eps: float,
        step: float, *, check_end: bool,
    ) -> tuple[Tensor, Tensor]:
        """One PGD run; returns the iterates and which samples were seen adversarial."""
        loss_fn = loss_function(self.loss)
        x_adv = random_in_ball(x, eps, self.norm, self.rng) if self.random_start else x.clone()
        state = {"x": x, "y": y, "x_adv": x_adv}
        if target is not None:
            state["target"] = target
        ws = WorkingSet(x, state, every=self.compaction(x))
        for i in range(self.steps):
            logits, _, grad = logits_and_grad(model, ws["x_adv"], ws["y"], ws.get("target"),
                                              loss_fn)
            ws.settle(success(logits, ws["y"], ws.get("target")), ws["x_adv"])
            ws["x_adv"] = project(ws["x_adv"] + step * self.direction(grad, ws["x_adv"]),
                                  ws["x"], eps, self.norm)
            ws.compact(i)
            if ws.empty:
                return ws.finish()
        if check_end:
            ws.settle(success(predict(model, ws["x_adv"]), ws["y"], ws.get("target")),
                      ws["x_adv"])
        return ws.finish(ws["x_adv"])


class PGDL2(PGD):
    """PGD in the L2 ball: steps along the L2-normalised gradient, projection by rescaling.

    Same defaults as ``pgd`` (20 steps of ``2.5 * eps / steps``, random start uniform in the
    L2 ball, one restart, cross-entropy).
    """

    name = "pgd-l2"
    threat = "l2"
    norm = "l2"

    def direction(self, grad: Tensor, x_adv: Tensor) -> Tensor:
        return normalized(grad, "l2")


class PGDL1(PGD):
    """Sparse L1 descent (SLIDE, Tramèr & Boneh 2019) in the L1 ball.

    A dense L1-normalised gradient step barely moves any pixel, so plain L1-PGD is weak.
    SLIDE steps only along the coordinates whose gradient magnitude is in the top
    ``1 - quantile`` fraction (default ``quantile=0.99``: the top 1%), ignoring coordinates
    already pinned at 0 or 1 in the gradient's direction, then projects exactly onto the L1
    ball (Duchi et al. 2008) and clips to [0, 1].  Defaults otherwise as ``pgd``.
    """

    name = "pgd-l1"
    threat = "l1"
    norm = "l1"

    def __init__(
        self,
        *,
        steps: int = 20,
        step_size: float | None = None,
        rel_step_size: float = 2.5,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        quantile: float = 0.99,
        seed: int | None = None,
    ) -> None:
        super().__init__(steps=steps, step_size=step_size, rel_step_size=rel_step_size,
                         random_start=random_start, restarts=restarts, loss=loss, seed=seed)
        self.quantile = float(quantile)
        if not 0.0 <= self.quantile < 1.0:
            raise robench.UsageError(f"pgd-l1: quantile must be in [0, 1), got {quantile!r}.")
        self.params["quantile"] = self.quantile

    def direction(self, grad: Tensor, x_adv: Tensor) -> Tensor:
        g = grad.masked_fill(((x_adv <= 0) & (grad < 0)) | ((x_adv >= 1) & (grad > 0)), 0.0)
        mag = flat(g).abs()
        k = max(1, round((1.0 - self.quantile) * mag.shape[1]))
        threshold = mag.topk(k, dim=1).values[:, -1:]
        mask = (mag >= threshold) & (mag > 0)
        e = flat(g).sign() * mask
        e = e / e.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
        return e.reshape(grad.shape)


# --------------------------------------------------------------------------- APGD


class APGD(BoundedAttack):
    """Auto-PGD (Croce & Hein 2020), the step-size-free PGD at the core of AutoAttack.

    Starts at step size ``2 * eps`` and halves it, per sample, at checkpoints
    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` when the loss rose in fewer than
    ``rho = 0.75`` of the steps since the last checkpoint, or when the step was not reduced
    last time and the best loss did not improve; on a reduction the iterate restarts from the
    best point.  Steps use momentum 0.75.  Defaults follow AutoAttack: ``steps=100``, one
    restart (each further restart only on samples not yet fooled), ``norm="linf"``
    (``"l2"`` also supported; ``threat`` follows it).  Cost: ``steps + 1`` gradient
    evaluations for a sample that is never fooled.

    ``loss="ce"`` (``apgd-ce``) or ``"dlr"`` (``apgd-dlr``, needs >= 3 classes untargeted and
    >= 4 targeted).  Returns the first adversarial iterate, else the highest-loss one.

    ``eot_iter`` (default 1) averages every gradient over that many forward/backward passes
    (expectation over transformation, AutoAttack's "rand" version), for models with random
    components; the loss and logits used are the averages over those passes too, so a point
    counts as adversarial when the mean logits misclassify it.  Each pass is one gradient
    evaluation, so a sample never fooled costs ``eot_iter * (steps + 1)``.
    """

    name = "apgd"
    targeted_ok = True

    def __init__(
        self,
        *,
        loss: str = "ce",
        steps: int = 100,
        restarts: int = 1,
        norm: str = "linf",
        rho: float = 0.75,
        momentum: float = 0.75,
        eot_iter: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.loss = choice(loss, LOSSES, name="loss", attack=self.name)
        self.name = self._name()
        self.steps = positive_int(steps, name="steps", attack=self.name)
        self.restarts = positive_int(restarts, name="restarts", attack=self.name)
        self.norm = choice(norm, ("linf", "l2"), name="norm", attack=self.name)
        self.threat = self.norm
        self.rho = positive_float(rho, name="rho", attack=self.name)
        self.momentum = positive_float(momentum, name="momentum", attack=self.name,
                                       allow_zero=True)
        self.eot_iter = positive_int(eot_iter, name="eot_iter", attack=self.name)
        self.rng = Rng(seed)
        self.params = {
            "loss": self.loss,
            "steps": self.steps,
            "restarts": self.restarts,
            "norm": self.norm,
            "rho": self.rho,
            "momentum": self.momentum,
            "eot_iter": self.eot_iter,
            "seed": seed,
        }

    def _name(self) -> str:
        return f"apgd-{self.loss}"

    def _logits_and_grad(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, loss_fn: LossFn
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``logits_and_grad``, averaged over ``eot_iter`` passes (exactly it for one)."""
        logits, loss, grad = logits_and_grad(model, x, y, target, loss_fn)
        if self.eot_iter == 1:
            return logits, loss, grad
        for _ in range(self.eot_iter - 1):
            more = logits_and_grad(model, x, y, target, loss_fn)
            logits, loss, grad = logits + more[0], loss + more[1], grad + more[2]
        return logits / self.eot_iter, loss / self.eot_iter, grad / self.eot_iter

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, radius: float, target: Tensor | None
    ) -> Tensor:
        out, self.last_success = run_restarts(x, self.restarts, lambda idx, _last: self._run(
            model, x[idx], y[idx], _take(target, idx), radius))
        return out

    def _start(self, x: Tensor, eps: float) -> Tensor:
        """AutoAttack's start: a random direction scaled to norm eps, clipped to [0, 1]."""
        if self.norm == "linf":
            t = 2.0 * self.rng.rand(x.shape, x) - 1.0
            scale = flat(t).abs().amax(dim=1).clamp_min(1e-12)
        else:
            t = self.rng.randn(x.shape, x)
            scale = flat(t).norm(dim=1).clamp_min(1e-12)
        return (x + eps * t / per_sample(scale)).clamp(0.0, 1.0)

    def _direction(self, grad: Tensor) -> Tensor:
        return grad.sign() if self.norm == "linf" else normalized(grad, "l2")

    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, eps: float,
        loss_target: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One APGD run; returns the iterates and which samples were seen adversarial.

        ``target`` decides success (the target class reached, or any misclassification when
        ``None``); ``loss_target``, when given, is the class the loss aims at instead (APGD-T:
        a targeted loss, untargeted success).
        """
        loss_fn = loss_function(self.loss)
        aim = target if loss_target is None else loss_target
        n_iter = self.steps
        window = max(int(0.22 * n_iter), 1)
        window_min = max(int(0.06 * n_iter), 1)
        window_decr = max(int(0.03 * n_iter), 1)

        x_adv = self._start(x, eps)
        logits, loss, grad = self._logits_and_grad(model, x_adv, y, aim, loss_fn)
        s = WorkingSet(x, {
            "x": x, "y": y, "x_adv": x_adv, "x_old": x_adv.clone(), "grad": grad,
            "x_best": x_adv.clone(), "grad_best": grad.clone(), "loss_best": loss.clone(),
            "prev_loss": loss.clone(), "n_incr": torch.zeros_like(loss),
            "loss_best_last": loss.clone(),
            "reduced_last": torch.ones_like(loss, dtype=torch.bool),
            "step": torch.full_like(loss, 2.0 * eps),
        }, every=self.compaction(x))
        if target is not None:
            s["target"] = target
        if loss_target is not None:
            s["loss_target"] = loss_target
        s.settle(success(logits, y, target), x_adv)
        s.compact(0)
        counter = 0
        for i in range(n_iter):
            if s.empty:
                break
            a = self.momentum if i > 0 else 1.0
            x_adv, x_c = s["x_adv"], s["x"]
            step = per_sample(s["step"])
            grad2 = x_adv - s["x_old"]
            s["x_old"] = x_adv
            z = project(x_adv + step * self._direction(s["grad"]), x_c, eps, self.norm)
            z = project(x_adv + (z - x_adv) * a + grad2 * (1.0 - a), x_c, eps, self.norm)
            tgt = s.get("target")
            aim = tgt if loss_target is None else s["loss_target"]
            logits, loss, grad = self._logits_and_grad(model, z, s["y"], aim, loss_fn)
            s["x_adv"], s["grad"] = z, grad
            improved = loss > s["loss_best"]
            s["x_best"] = torch.where(per_sample(improved), z, s["x_best"])
            s["grad_best"] = torch.where(per_sample(improved), grad, s["grad_best"])
            s["loss_best"] = torch.where(improved, loss, s["loss_best"])
            s["n_incr"] = s["n_incr"] + (loss > s["prev_loss"]).to(loss.dtype)
            s["prev_loss"] = loss
            s.settle(success(logits, s["y"], tgt), z)

            counter += 1
            if counter == window:
                oscillating = s["n_incr"] <= window * self.rho
                stalled = (~s["reduced_last"]) & (s["loss_best_last"] >= s["loss_best"])
                reduce = oscillating | stalled
                s["reduced_last"] = reduce
                s["loss_best_last"] = s["loss_best"].clone()
                s["step"] = torch.where(reduce, s["step"] / 2.0, s["step"])
                s["x_adv"] = torch.where(per_sample(reduce), s["x_best"], s["x_adv"])
                s["grad"] = torch.where(per_sample(reduce), s["grad_best"], s["grad"])
                s["n_incr"] = torch.zeros_like(s["n_incr"])
                counter = 0
                window = max(window - window_decr, window_min)
            s.compact(i + 1)
        return s.finish(s["x_best"])


class APGDT(APGD):
    """APGD-T: APGD on the targeted DLR loss, one run per target class (Croce & Hein 2020).

    AutoAttack's second attack.  The targets are the ``n_target_classes`` (default 9) non-true
    classes with the highest clean logits, tried in that order; each target's run (and each
    further restart, ``restarts=1`` by default) attacks only the samples no earlier run has
    fooled.  The loss is the targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``
    (needs >= 4 classes), but success is ANY misclassification, so in robench's sense this
    is an untargeted attack.  Step machinery, defaults (``steps=100``, ``norm="linf"`` or
    ``"l2"``, ``rho=0.75``, momentum 0.75) and ``eot_iter`` are APGD's.  Cost: one plain
    forward to rank the classes, then up to ``n_target_classes * restarts * (steps + 1)``
    gradient evaluations for a sample never fooled, far fewer once samples fall.
    """

    name = "apgd-t"
    targeted_ok = False

    def __init__(
        self,
        *,
        n_target_classes: int = 9,
        steps: int = 100,
        restarts: int = 1,
        norm: str = "linf",
        rho: float = 0.75,
        momentum: float = 0.75,
        eot_iter: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(loss="dlr", steps=steps, restarts=restarts, norm=norm, rho=rho,
                         momentum=momentum, eot_iter=eot_iter, seed=seed)
        self.n_target_classes = positive_int(n_target_classes, name="n_target_classes",
                                             attack=self.name)
        del self.params["loss"]  # always the targeted DLR loss: not a parameter here
        self.params = {"n_target_classes": self.n_target_classes, **self.params}

    def _name(self) -> str:
        return "apgd-t"

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, radius: float, target: Tensor | None
    ) -> Tensor:
        logits = predict(model, x)
        k = min(self.n_target_classes, logits.shape[1] - 1)
        # the non-true classes by decreasing clean logit: the k most promising targets
        targets = logits.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices
        out = x.clone()
        seen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.last_success = seen
        remaining = torch.arange(x.shape[0], device=x.device)
        for j in range(k):
            for _ in range(self.restarts):
                if remaining.numel() == 0:
                    return out
                with streams.rows(remaining):
                    adv, fooled = self._run(model, x[remaining], y[remaining], None, radius,
                                            loss_target=targets[remaining, j])
                out[remaining] = adv
                seen[remaining] = fooled
                remaining = remaining[~fooled]
        return out
