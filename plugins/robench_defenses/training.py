"""Adversarial training: ``pgd-at`` (Madry et al. 2018), ``trades`` (Zhang et al. 2019) and
``fgsm-rs`` (Wong et al. 2020).

The inner maximisation is robench's own ``pgd`` / ``pgd-l2`` attack, built through the
harness-supplied ``build_attack`` (the code the evaluation runs), maximising each defense's
loss through ``robench.defenses.maximise``: every step on every sample, from a random start
inside the ball.  Generated in eval mode by default (batch-norm statistics neither used from
nor written by the attack's batches, as in TRADES's and Rice et al.'s code); ``attack_mode =
"train"`` generates in training mode as Madry et al.'s TensorFlow code did.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated, Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

import robench
from robench.defenses import BuildAttack, check_build_attack, eval_mode, maximise

THREAT_ATTACKS = {"linf": "pgd", "l2": "pgd-l2"}


# The training defenses' parameters, declared on their factories and checked by robench's one
# validator (``robench.checked``; the host checks them the same way before a build).
Eps = Annotated[float, robench.Check(gt=0)]
Steps = Annotated[int, robench.Check(gt=0)]
Step = Annotated[float | None, robench.Check(gt=0)]
RelStep = Annotated[float, robench.Check(gt=0)]
Threat = Literal["linf", "l2"]
Warmup = Annotated[float, robench.Check(ge=0, means="epochs over which eps rises from 0")]
Beta = Annotated[float, robench.Check(ge=0)]
AttackMode = Annotated[Literal["eval", "train"], robench.Check(
    rule="'eval' (batch norm in inference mode while attacking) or 'train'")]


class AdversarialTraining:
    """PGD adversarial training (Madry et al. 2018): each batch is replaced by PGD-k
    adversarial examples (random start, ``steps`` steps, then projection onto the ball) and the
    model minimises their cross-entropy.

    ``eps`` (default 8/255, the CIFAR-10 budget; MNIST papers use 0.3) and ``threat``
    (``linf`` or ``l2``) fix the ball; the step is ``step_size`` when given, else
    ``rel_step_size * eps / steps`` (robench's PGD rule; 2.5 * eps / 10 = eps / 4 is Madry's
    CIFAR ratio).  ``warmup_epochs``: eps rises linearly from 0 to ``eps`` over that many
    epochs (counted per optimiser step), then stays (Gowal et al. 2018; helps at MNIST's
    0.3); 0 trains at ``eps`` from the first batch.
    """

    name = "pgd-at"
    needs_clean_logits = False
    default_steps = 10
    default_rel_step = 2.5

    def __init__(self, *, build_attack: BuildAttack, eps: float = 8 / 255,
                 steps: int | None = None, step_size: float | None = None,
                 rel_step_size: float | None = None, threat: str = "linf",
                 warmup_epochs: float = 0.0, attack_mode: str = "eval") -> None:
        # the values were checked by the factory (pgd_at, trades, fgsm_rs)
        self.build_attack = check_build_attack(build_attack, self.name)
        self.eps = float(eps)
        self.steps = int(self.default_steps if steps is None else steps)
        self.step_size = None if step_size is None else float(step_size)
        self.rel_step_size = float(self.default_rel_step if rel_step_size is None
                                   else rel_step_size)
        self.threat = threat
        self.warmup_epochs = float(warmup_epochs)
        self.attack_mode = attack_mode
        self.epochs: int | None = None
        self.steps_per_epoch: int | None = None
        self.attack = self._attack(seed=None)  # refuses bad attack parameters now
        self._reset()

    # ------------------------------------------------------------------ schedule

    def _attack(self, seed: int | None) -> Any:
        params: dict[str, Any] = {"steps": self.steps, "random_start": True, "seed": seed,
                                  "restarts": 1}
        if self.step_size is not None:
            params["step_size"] = self.step_size
        else:
            params["rel_step_size"] = self.rel_step_size
        return self.build_attack(THREAT_ATTACKS[self.threat], params)

    def _reset(self) -> None:
        self._adv_correct: list[torch.Tensor] = []
        self._clean_correct: list[torch.Tensor] = []
        self._seen = 0
        self._batches = 0
        self.last_eps = 0.0

    def begin(self, *, epochs: int, steps_per_epoch: int, seed: int) -> None:
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        if self.warmup_epochs > self.epochs:
            raise robench.UsageError(
                f"defense {self.name!r}: warmup_epochs = {self.warmup_epochs:g} is longer than "
                f"training ({self.epochs} epochs); eps would never reach {self.eps:g}.")
        self.attack = self._attack(seed=seed)
        self._reset()

    def current_eps(self, progress: float) -> float:
        if self.warmup_epochs <= 0:
            return self.eps
        if self.epochs is None:
            raise RuntimeError(f"defense {self.name!r}: eps warm-up needs begin(epochs=...) "
                               f"before the first batch")
        return self.eps * min(1.0, progress * self.epochs / self.warmup_epochs)

    # ------------------------------------------------------------------ protocol

    def sample_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """The per-sample loss the inner maximisation climbs, as a function of logits."""
        return lambda logits: F.cross_entropy(logits, y, reduction="none")

    def inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               progress: float) -> torch.Tensor:
        eps = self.current_eps(progress)
        self.last_eps = eps
        if eps <= 0:
            return x.detach()
        with eval_mode(model) if self.attack_mode == "eval" else nullcontext():
            loss = self.sample_loss(model, x, y)
            return maximise(self.attack, model, x, eps, loss)

    def loss(self, logits_adv: torch.Tensor, y: torch.Tensor,
             logits_clean: torch.Tensor | None = None) -> torch.Tensor:
        self._record(logits_adv, y, logits_clean)
        return F.cross_entropy(logits_adv, y)

    def _record(self, logits_adv: torch.Tensor, y: torch.Tensor,
                logits_clean: torch.Tensor | None) -> None:
        # kept on the device, summed once in metrics(): no host synchronisation per step;
        # counted over the current epoch, as the training loop's own train_acc is
        if self.steps_per_epoch and self._batches == self.steps_per_epoch:
            self._adv_correct, self._clean_correct = [], []
            self._seen = self._batches = 0
        self._batches += 1
        self._adv_correct.append((logits_adv.detach().argmax(1) == y).sum())
        if logits_clean is not None:
            self._clean_correct.append((logits_clean.detach().argmax(1) == y).sum())
        self._seen += len(y)
        if len(self._adv_correct) > 64:  # bounded memory: fold into one tensor
            self._adv_correct = [torch.stack(self._adv_correct).sum()]
            if self._clean_correct:
                self._clean_correct = [torch.stack(self._clean_correct).sum()]

    def metrics(self) -> dict[str, float]:
        """``adv_train_acc``: accuracy on the adversarial batches trained on in the last epoch
        (at the warm-up's eps while it lasts); ``clean_train_acc``, where the loss sees the
        clean logits, on their clean images; ``final_eps``: the last batch's eps."""
        out = {"final_eps": float(self.last_eps)}
        if self._seen:
            out["adv_train_acc"] = float(torch.stack(self._adv_correct).sum()) / self._seen
            if self._clean_correct:
                out["clean_train_acc"] = (float(torch.stack(self._clean_correct).sum())
                                          / self._seen)
        return out


class TRADES(AdversarialTraining):
    """TRADES (Zhang et al. 2019): minimise ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` where
    ``x'`` maximises that KL divergence in the ball (PGD, ``steps`` steps).

    Defaults follow the paper's CIFAR-10 setting: ``beta = 6``, 10 steps of eps / 4
    (``rel_step_size = 2.5``), eps 8/255.  The inner maximisation starts uniformly in the
    ball (robench's PGD start) rather than at ``x + 0.001 N(0, 1)``.
    """

    name = "trades"
    needs_clean_logits = True

    def __init__(self, *, build_attack: BuildAttack, eps: float = 8 / 255,
                 beta: float = 6.0, steps: int | None = None, step_size: float | None = None,
                 rel_step_size: float | None = None, threat: str = "linf",
                 warmup_epochs: float = 0.0, attack_mode: str = "eval") -> None:
        super().__init__(build_attack=build_attack, eps=eps, steps=steps, step_size=step_size,
                         rel_step_size=rel_step_size, threat=threat,
                         warmup_epochs=warmup_epochs, attack_mode=attack_mode)
        self.beta = float(beta)

    def sample_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            clean = torch.log_softmax(model(x).float(), dim=1)

        def kl(logits: torch.Tensor) -> torch.Tensor:
            return F.kl_div(torch.log_softmax(logits, dim=1), clean, reduction="none",
                            log_target=True).sum(1)

        return kl

    def loss(self, logits_adv: torch.Tensor, y: torch.Tensor,
             logits_clean: torch.Tensor | None = None) -> torch.Tensor:
        if logits_clean is None:
            raise ValueError("trades needs the clean logits (needs_clean_logits is true)")
        self._record(logits_adv, y, logits_clean)
        natural = F.cross_entropy(logits_clean, y)
        robust = F.kl_div(torch.log_softmax(logits_adv, dim=1),
                          torch.log_softmax(logits_clean, dim=1), reduction="batchmean",
                          log_target=True)
        return natural + self.beta * robust


class FastAdversarialTraining(AdversarialTraining):
    """"Fast is better than free" (Wong et al. 2020): one signed-gradient (FGSM) step of
    ``alpha = 1.25 * eps`` from a uniform random start in the ball, projected back onto it;
    robench's ``pgd`` with ``steps = 1`` and ``rel_step_size = 1.25`` is exactly that.  With
    ``threat = "l2"`` the step is along the L2-normalised gradient instead."""

    name = "fgsm-rs"
    default_steps = 1
    default_rel_step = 1.25

    def __init__(self, *, build_attack: BuildAttack, eps: float = 8 / 255,
                 alpha: float | None = None, threat: str = "linf",
                 warmup_epochs: float = 0.0, attack_mode: str = "eval") -> None:
        step = None if alpha is None else float(alpha)
        super().__init__(build_attack=build_attack, eps=eps, steps=1, step_size=step,
                         threat=threat, warmup_epochs=warmup_epochs, attack_mode=attack_mode)


@robench.checked("[defense.pgd-at]")
def pgd_at(*, build_attack: BuildAttack, eps: Eps = 8 / 255, steps: Steps = 10,
           step_size: Step = None, rel_step_size: RelStep = 2.5, threat: Threat = "linf",
           warmup_epochs: Warmup = 0.0, attack_mode: AttackMode = "eval") -> AdversarialTraining:
    return AdversarialTraining(build_attack=build_attack, eps=eps, steps=steps,
                               step_size=step_size, rel_step_size=rel_step_size, threat=threat,
                               warmup_epochs=warmup_epochs, attack_mode=attack_mode)


@robench.checked("[defense.trades]")
def trades(*, build_attack: BuildAttack, eps: Eps = 8 / 255, beta: Beta = 6.0,
           steps: Steps = 10, step_size: Step = None, rel_step_size: RelStep = 2.5,
           threat: Threat = "linf", warmup_epochs: Warmup = 0.0,
           attack_mode: AttackMode = "eval") -> TRADES:
    return TRADES(build_attack=build_attack, eps=eps, beta=beta, steps=steps,
                  step_size=step_size, rel_step_size=rel_step_size, threat=threat,
                  warmup_epochs=warmup_epochs, attack_mode=attack_mode)


@robench.checked("[defense.fgsm-rs]")
def fgsm_rs(*, build_attack: BuildAttack, eps: Eps = 8 / 255, alpha: Step = None,
            threat: Threat = "linf", warmup_epochs: Warmup = 0.0,
            attack_mode: AttackMode = "eval") -> FastAdversarialTraining:
    return FastAdversarialTraining(build_attack=build_attack, eps=eps, alpha=alpha,
                                   threat=threat, warmup_epochs=warmup_epochs,
                                   attack_mode=attack_mode)
