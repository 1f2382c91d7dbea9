"""Defenses: what a defense plugin builds, and the helpers the harness uses with them.

A :class:`robench.DefenseSpec` has a ``stage``:

``"training"``
    ``factory(build_attack=..., **params)`` returns a :class:`TrainingDefense`: an
    objective that replaces each labelled batch by adversarial examples (the inner
    maximisation) and says how to score them (the outer minimisation).  ``build_attack`` is
    supplied by the harness, never by the user: ``build_attack(name, params) -> attack``
    builds one of robench's registered attacks through the plugin host (the very code the
    evaluation runs), so a defense plugin needs no other plugin's internals.  A typical one
    is ``lambda name, params: host.build("attack", name, **params)``.

``"inference"``
    ``factory(model=..., **params)`` returns an :class:`InferenceDefense`: an ``nn.Module``
    wrapping the evaluated model (images in [0, 1] -> logits) with a preprocessing step in
    front of it.  A step that is not differentiable (JPEG, quantisation) gives an all-zero
    input gradient by default, exactly what a gradient attack on the deployed defense sees;
    that is gradient masking, and the ``zero-gradients`` sanity flag reports it.  Inside
    :func:`bpda` the step's backward becomes the identity (Athalye et al. 2018, Backward
    Pass Differentiable Approximation), so an adaptive attack gets useful gradients.  A
    randomised step (``randomised = True``) calls for Expectation over Transformation:
    :func:`eot` wraps a model so each forward averages its prediction over several draws.

``"none"``
    the undefended model; the factory returns ``None``.

Training defenses use robench's attacks to maximise their own per-sample loss through
:class:`AttackObjective`; see its docstring for how, and why the attack then runs all its
steps on every sample (the inner maximisation of adversarial training must not stop at the
first misclassified iterate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from robench.errors import UsageError

#: ``build_attack(name, params) -> attack``: the harness-supplied builder of robench attacks
BuildAttack = Callable[[str, dict[str, Any]], Any]
#: a per-sample loss of logits, ``(N, classes) -> (N,)``, to be maximised, >= 0
SampleLoss = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class TrainingDefense(Protocol):
    """An adversarial-training objective, applied by ``robench.training.train_model`` per batch.

    Per optimiser step the loop calls ``inputs`` on the labelled source batch, runs the model
    (in training mode) on what it returned, and minimises ``loss``.  With a domain adaptor the
    adversarial source images and the unlabelled target images go through the backbone in one
    forward pass, and the adaptor's loss is added on those features as without a defense:
    target images are never perturbed (they have no labels).

    ``needs_clean_logits``: ``loss`` also needs the logits of the clean batch (TRADES); the
    loop then forwards clean and adversarial images together.
    """

    needs_clean_logits: bool

    def begin(self, *, epochs: int, steps_per_epoch: int, seed: int) -> None:
        """Called once before training (and again if training restarts): reset metrics,
        seed the attack's randomness, learn the schedule's length for eps warm-up."""

    def inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               progress: float) -> torch.Tensor:
        """The images to train on for this batch (the inner maximisation).

        ``model`` maps images in [0, 1] to logits; ``progress`` runs from 0 to 1 over
        training.  Must leave every parameter's ``.grad`` and every module's ``training``
        flag as it found them, and return a detached tensor shaped like ``x``.
        """

    def loss(self, logits_adv: torch.Tensor, y: torch.Tensor,
             logits_clean: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar training loss (the outer minimisation)."""

    def metrics(self) -> dict[str, float]:
        """The defense's own numbers for the training report (read once, at the end)."""


@runtime_checkable
class InferenceDefense(Protocol):
    """A wrapper of the evaluated model: ``forward(x) = model(transform(x))``.

    ``randomised``: two forwards of the same image may differ (attack with :func:`eot`).
    ``differentiable``: the transform has a true gradient; when false, the plain backward is
    zero (the masked gradient an unaware attack sees) and, while ``bpda`` is true (set it
    with :func:`bpda`), the identity (straight-through).
    """

    model: nn.Module
    randomised: bool
    differentiable: bool
    bpda: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def transform(self, x: torch.Tensor) -> torch.Tensor: ...


# --------------------------------------------------------------------------- inference


class _Preprocess(torch.autograd.Function):
    """``transform(x)`` computed without a graph; backward zero or straight-through."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
                straight_through: bool) -> torch.Tensor:
        ctx.straight_through = straight_through
        with torch.no_grad():
            out = transform(x.detach())
        if out.shape != x.shape:
            raise ValueError(f"a non-differentiable transform must keep the shape "
                             f"{tuple(x.shape)}, got {tuple(out.shape)}")
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        return (grad if ctx.straight_through else torch.zeros_like(grad)), None, None


def preprocess(x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor], *,
               differentiable: bool, straight_through: bool) -> torch.Tensor:
    """Apply ``transform``; a non-differentiable one gets a zero backward, or the identity
    when ``straight_through`` (BPDA)."""
    if differentiable:
        return transform(x)
    return _Preprocess.apply(x, transform, straight_through)


class InferenceWrapper(nn.Module):
    """Base of inference defenses: subclasses set ``randomised``/``differentiable`` and
    implement ``transform(x)`` (images in [0, 1], same shape out)."""

    randomised: bool = False
    differentiable: bool = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.bpda = False
        self.training = model.training

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(preprocess(x, self.transform, differentiable=self.differentiable,
                                     straight_through=self.bpda))


def inference_defenses(model: nn.Module) -> list[nn.Module]:
    """Every inference-defense module inside ``model`` (itself included)."""
    return [m for m in model.modules() if isinstance(m, InferenceDefense)]


@contextmanager
def bpda(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every non-differentiable inference defense inside ``model``
    back-propagates straight through its transform (the identity); restored on exit."""
    wrappers = inference_defenses(model)
    before = [w.bpda for w in wrappers]
    try:
        for w in wrappers:
            w.bpda = bool(enabled)
        yield model
    finally:
        for w, state in zip(wrappers, before, strict=True):
            w.bpda = state


def is_randomised(model: nn.Module) -> bool:
    """Whether ``model`` contains a randomised inference defense (attack it with EOT)."""
    return any(bool(getattr(w, "randomised", False)) for w in inference_defenses(model))


def needs_bpda(model: nn.Module) -> bool:
    """Whether ``model`` contains a non-differentiable inference defense."""
    return any(not bool(getattr(w, "differentiable", True)) for w in inference_defenses(model))


class ExpectationOverTransformation(nn.Module):
    """``log(mean_t softmax(model(x)))`` over ``samples`` forwards: the expected prediction of
    a randomised model as logits (Athalye, Engstrom et al. 2018).  Its cross-entropy gradient
    is the gradient of the expected loss's usual EOT surrogate; give it to the attack, and
    verify the attack's examples on the randomised model itself."""

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        if isinstance(samples, bool) or int(samples) != samples or samples < 1:
            raise UsageError(f"EOT needs an integer number of samples >= 1, got {samples!r}.")
        self.model = model
        self.samples = int(samples)
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        logits = self.model(x.repeat(self.samples, *([1] * (x.ndim - 1)))).float()
        logp = torch.log_softmax(logits, dim=1).view(self.samples, n, -1)
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(self.samples)))


def eot(model: nn.Module, samples: int = 10) -> nn.Module:
    """``model`` averaged over ``samples`` draws of its randomness (one batched forward)."""
    return ExpectationOverTransformation(model, samples)


# --------------------------------------------------------------------------- training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` in eval mode within the block; each one's own mode restored
    on exit (a frozen backbone kept in eval mode stays so)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


class AttackObjective(nn.Module):
    """A view of ``model`` through which any robench attack maximises ``loss`` on a batch.

    Built for one batch: ``loss(logits) -> (N,)`` is a per-sample loss of the model's logits
    on that batch (cross-entropy to the labels for PGD-AT, the KL divergence from the clean
    prediction for TRADES), finite and >= 0.  The view returns two logits per sample,
    ``[0, -1 / (1 + L)]``, whose cross-entropy for class 0, ``softplus(-1 / (1 + L))``, rises
    strictly with ``L``: the attack's CE gradient is a positive multiple of ``dL/dx`` (the same
    sign, the same direction: what PGD steps along), and its loss comparisons (APGD) order
    iterates as ``L`` does.  Class 0 always has the larger logit, so no iterate ever counts as
    adversarial: an attack that stops early on a sample it has fooled runs all its steps here,
    as adversarial training needs.  Attack it untargeted with labels :meth:`labels`.

    The rows the attack passes must be the whole batch, in order (robench's PGD with one
    restart does exactly that here); anything else is refused rather than mismatched.
    """

    def __init__(self, model: nn.Module, loss: SampleLoss, batch: int) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.batch = int(batch)
        self.training = model.training

    def labels(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.batch, dtype=torch.long, device=like.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.batch:
            raise RuntimeError(
                f"AttackObjective was built for a batch of {self.batch} and called on "
                f"{x.shape[0]} rows; use an attack that keeps every row (one restart)")
        value = self.loss(self.model(x).float())
        margin = -1.0 / (1.0 + value.clamp_min(0.0))
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def maximise(attack: Any, model: nn.Module, x: torch.Tensor, eps: float,
             loss: SampleLoss) -> torch.Tensor:
    """``attack`` (a robench attack object) maximising the per-sample ``loss`` of
    ``model``'s logits in the eps ball around ``x``, all of its steps on every sample."""
    objective = AttackObjective(model, loss, len(x))
    return attack.perturb(objective, x.detach(), objective.labels(x), eps).detach()


def check_build_attack(build_attack: Any, defense: str) -> BuildAttack:
    """Refuse a training defense built without the harness's attack builder."""
    if not callable(build_attack):
        raise UsageError(
            f"The training defense {defense!r} needs build_attack, a callable "
            f"(name, params) -> attack that the harness supplies (for example "
            f"lambda name, params: robench.PluginHost.create().build('attack', name, **params)); "
            f"got {type(build_attack).__name__}. It is not a user parameter."
        )
    return build_attack


__all__ = [
    "AttackObjective",
    "BuildAttack",
    "ExpectationOverTransformation",
    "InferenceDefense",
    "InferenceWrapper",
    "SampleLoss",
    "TrainingDefense",
    "bpda",
    "check_build_attack",
    "eot",
    "eval_mode",
    "inference_defenses",
    "is_randomised",
    "maximise",
    "needs_bpda",
    "preprocess",
]
