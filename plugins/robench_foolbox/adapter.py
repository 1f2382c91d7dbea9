"""The foolbox adapter: :class:`FoolboxAttack` and the checks behind ``foolbox:*``.

What it adds to plain foolbox, and why, is described in :mod:`robench_foolbox.plugin`.  This
module imports torch; it is imported when a ``foolbox:*`` attack is built or its name is
checked, not when the attacks are listed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from torch import nn

import robench

#: module-level names of ``foolbox.attacks`` that are classes but not runnable attacks
NOT_AN_ATTACK: dict[str, str] = {
    "Attack": "it is foolbox's abstract base class of all attacks, not an attack",
}

#: parameters that foolbox requires but gives no default, filled in when the user doesn't
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    # one power iteration, as in Miyato et al.'s virtual adversarial training
    "VirtualAdversarialAttack": {"steps": 1},
}

#: classes that need something a plain classifier and a batch cannot provide
UNSUPPORTED: dict[str, str] = {
    "BinarizationRefinementAttack": (
        "it refines adversarials found by another attack against a model that binarises its "
        "inputs at a known threshold; it needs `starting_points` and such a model, neither of "
        "which a robustness grid on a plain classifier has"
    ),
}

#: names for the ``distance`` parameter of foolbox's flexible-distance attacks
DISTANCES: tuple[str, ...] = ("linf", "l2", "l1", "l0")

#: the distance a flexible-distance attack measures in when the user names none: L2, except
#: the Pointwise attack, which minimises the number of changed pixels (Schott et al. 2019)
FLEXIBLE_DEFAULT: dict[str, str] = {"PointwiseAttack": "l0"}

INSTALL_HINT = "pip install robench[foolbox]"


def import_foolbox() -> ModuleType:
    """foolbox, or a usage error telling how to install it."""
    try:
        import foolbox
    except ImportError as exc:
        raise robench.UsageError(
            f"foolbox:* attacks need the foolbox package, which is not installed "
            f"({exc}). Install it with `{INSTALL_HINT}`."
        ) from exc
    return foolbox


def attack_classes(fb: ModuleType) -> dict[str, type]:
    """Every class ``foolbox.attacks`` exports, by the name it is exported under."""
    return {
        name: obj
        for name, obj in vars(fb.attacks).items()
        if inspect.isclass(obj) and not name.startswith("_")
        and issubclass(obj, fb.attacks.base.Attack)
    }


def runnable_names(fb: ModuleType) -> list[str]:
    """Class names that build into an attack (the base class and unsupported ones excluded)."""
    return sorted(n for n in attack_classes(fb) if n not in NOT_AN_ATTACK and n not in UNSUPPORTED)


def _threat_of(distance: Any) -> str:
    p = float(distance.p)
    if math.isinf(p):
        return "linf"
    return {2.0: "l2", 1.0: "l1", 0.0: "l0"}[p]


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Freeze every trainable parameter for the duration, then restore it as it was.

    foolbox (via eagerpy) differentiates with ``loss.backward()``; with parameters frozen that
    only reaches the input, so no ``.grad`` appears on parameters and no time is spent on them.
    """
    thawed = [p for p in model.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)


class _Calls(nn.Module):
    """Calls a model without owning it: what foolbox's ``PyTorchModel`` gets to wrap.

    foolbox warns when the module it wraps is in training mode and moves it with ``.to``.  The
    harness wraps models in counting modules whose own flag may say "training" while every
    layer is in eval mode; this wrapper reports the mode of the model's leaf layers (the ones
    whose mode changes behaviour), and, not registering the model as a submodule, makes
    ``.to`` a no-op on it.  The model's own mode is never touched.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["target"] = model
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        self.training = any(m.training for m in leaves) if leaves else model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.__dict__["target"](x)


#: foolbox classes that use only the model's outputs (decisions or scores), never its
#: gradients: their rows count as black-box (the ``black-box-stronger`` flag compares them
#: with the gradient attacks of the same threat).  GenAttack is score-based.
BLACK_BOX_CLASSES: frozenset[str] = frozenset({
    "BoundaryAttack", "HopSkipJumpAttack", "PointwiseAttack", "GenAttack", "DatasetAttack",
    "InversionAttack", "SpatialAttack", "SaltAndPepperNoiseAttack", "GaussianBlurAttack",
    "BinarySearchContrastReductionAttack", "LinearSearchContrastReductionAttack",
    "L2ContrastReductionAttack", "LinearSearchBlendedUniformNoiseAttack",
})


def is_black_box(class_name: str) -> bool:
    """Whether a foolbox attack class needs no gradient (noise attacks included)."""
    return class_name in BLACK_BOX_CLASSES or "NoiseAttack" in class_name


class FoolboxAttack:
    """A foolbox attack class behind robench's ``perturb`` interface.

    Special cases, each for a reason a user would otherwise hit as an obscure error:

    * ``DatasetAttack`` is fed the batch it attacks (each image's candidates are the other
      images of the batch classified differently), since a grid has no separate pool;
    * ``SpatialAttack`` (rotations and translations) has no norm: threat ``none``, and it runs
      once (``kind="minimal"``), ignoring eps;
    * ``init_attack`` may be given as a foolbox class name (a config file cannot hold an
      object), e.g. ``init_attack="LinearSearchBlendedUniformNoiseAttack"``;
    * flexible-distance attacks (``GaussianBlurAttack``, ``LinearSearchBlendedUniformNoise
      Attack``, ...) measure in ``distance="l2"`` unless told ``"linf"``, ``"l1"``, ``"l0"``;
    * ``BinarizationRefinementAttack`` and the base class ``Attack`` are refused with why;
    * foolbox errors raised while running (an init attack that found no starting point, a
      criterion the class does not support, numba missing for Brendel-Bethge) become
      ``robench.UsageError`` naming the class and the cause.
    """

    def __init__(self, *, name: str, **params: Any) -> None:
        fb = import_foolbox()
        self.fb = fb
        self.name = f"foolbox:{name}"
        classes = attack_classes(fb)
        if name in NOT_AN_ATTACK:
            raise robench.UsageError(
                f"foolbox:{name} cannot be used: {NOT_AN_ATTACK[name]}. Pick one of "
                f"{', '.join(runnable_names(fb)[:8])}, ..."
            )
        if name not in classes:
            # UnknownNameError suggests the closest names (difflib) and lists the others
            known = [f"foolbox:{n}" for n in runnable_names(fb)]
            raise robench.UnknownNameError("attack", f"foolbox:{name}", known)
        if name in UNSUPPORTED:
            raise robench.UsageError(f"foolbox:{name} cannot run in robench: {UNSUPPORTED[name]}.")
        self.cls = classes[name]
        call = {**DEFAULT_PARAMS.get(name, {}), **params}
        base = fb.attacks.base
        distance = None
        if issubclass(self.cls, base.FlexibleDistanceMinimizationAttack):
            chosen = call.pop("distance", FLEXIBLE_DEFAULT.get(name, "l2"))
            if chosen not in DISTANCES:
                raise robench.UsageError(
                    f"{self.name}: distance must be one of {', '.join(DISTANCES)}; "
                    f"got {chosen!r}."
                )
            distance = getattr(fb.distances, chosen)
            if "distance" in self._accepted():
                call["distance"] = distance
        self._check_params(call)
        if isinstance(call.get("init_attack"), str):  # from a config file: a class name
            call["init_attack"] = FoolboxAttack(name=call["init_attack"]).attack
        try:
            self.attack = self.cls(**call)
        except (ImportError, ModuleNotFoundError) as exc:
            raise robench.UsageError(
                f"{self.name} needs a package that is not installed: {exc}. "
                f"(Brendel-Bethge attacks need numba: `pip install numba`.)"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise robench.UsageError(f"{self.name}: bad parameters {params}: {exc}") from exc
        if distance is not None and "distance" not in call:
            # PointwiseAttack is flexible-distance but its constructor forgets the distance
            self.attack._distance = distance
        if isinstance(self.attack, base.AttackWithDistance):
            self.threat = _threat_of(self.attack.distance)
        else:
            self.threat = "none"
        self.kind = "bounded" if isinstance(self.attack, base.FixedEpsilonAttack) else "minimal"
        self.black_box = is_black_box(self.cls.__name__)
        given = {**DEFAULT_PARAMS.get(name, {}), **params}
        self.params = {"class": self.cls.__name__,
                       **{k: v for k, v in given.items() if k != "distance"}}
        if distance is not None:
            self.params["distance"] = self.threat
        #: after ``perturb``: which returned examples foolbox's criterion saw as adversarial
        #: (the harness counts those its verification does not confirm)
        self.last_success: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"FoolboxAttack({self.attack!r})"

    def _accepted(self) -> list[str]:
        signature = inspect.signature(self.cls.__init__)
        return [n for n, p in signature.parameters.items()
                if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def _check_params(self, call: dict[str, Any]) -> None:
        accepted = self._accepted()
        unknown = sorted(set(call) - set(accepted))
        if unknown:
            raise robench.UsageError(
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}. Accepted "
                f"parameters: {', '.join(accepted) or '(none)'}."
            )

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        fb = self.fb
        x = x.detach()
        y = torch.as_tensor(y, device=x.device).long().reshape(-1)
        self.last_success = None
        if x.shape[0] == 0:
            return x.clone()
        if self.kind == "bounded":
            if eps is None:
                raise robench.UsageError(f"{self.name} is eps-bounded and needs a numeric eps.")
            if float(eps) == 0:
                return x.clone()
        epsilons = None if self.threat == "none" else (None if eps is None else float(eps))
        if target is not None:
            target = torch.as_tensor(target, device=x.device).long().reshape(-1)
            criterion: Any = fb.criteria.TargetedMisclassification(target)
        else:
            criterion = fb.criteria.Misclassification(y)
        fmodel = fb.PyTorchModel(_Calls(model), bounds=(0, 1), device=x.device)
        attack = self.attack
        if isinstance(attack, fb.attacks.DatasetAttack):
            attack = self.cls(distance=attack.distance)  # a fresh pool per batch
            attack.feed(fmodel, x)
        with frozen_parameters(model):
            try:
                raw, clipped, success = attack(fmodel, x, criterion, epsilons=epsilons)
            except (ValueError, NotImplementedError, AssertionError, TypeError) as exc:
                raise robench.UsageError(self._explain(exc, targeted=target is not None)) from exc
        out = clipped if epsilons is not None else torch.where(
            success.reshape(-1, 1, 1, 1), raw, x)
        out = out.detach().to(x.dtype)
        finite = torch.isfinite(out).flatten(1).all(dim=1).reshape(-1, 1, 1, 1)
        self.last_success = success.reshape(-1).to(torch.bool) & finite.reshape(-1)
        return torch.where(finite, out, x).clamp(0.0, 1.0)

    def _explain(self, exc: BaseException, *, targeted: bool) -> str:
        message = str(exc) or type(exc).__name__
        if "unsupported criterion" in message or "criterion" in message.lower():
            kind = "targeted" if targeted else "untargeted"
            return (f"{self.name} does not support {kind} attacks (foolbox: {message}); run it "
                    f"{'without' if targeted else 'with'} a target.")
        if "init_attack failed" in message or "starting_points" in message:
            return (f"{self.name} needs an adversarial starting point for every image and its "
                    f"init attack found none for some (foolbox: {message}). Pass "
                    f"init_attack=... or use it on a model that noise can fool.")
        return f"{self.name} failed: {type(exc).__name__}: {message}"


def check_foolbox_name(name: str) -> None:
    """Refuse an unknown foolbox class before the grid starts (suggesting close names)."""
    fb = import_foolbox()
    if name not in attack_classes(fb):
        known = [f"foolbox:{n}" for n in runnable_names(fb)]
        raise robench.UnknownNameError("attack", f"foolbox:{name}", known)
