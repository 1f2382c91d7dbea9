"""What each factory returns: the typed extension surface of robench.

A spec (``robench.AttackSpec``, ...) says what a plugin *registers*; the protocols here say
what its factory *builds*.  :func:`check_built` runs on every built object, so a missing
member is a :class:`robench.PluginError` naming the plugin when the grid is validated, not an
``AttributeError`` in the middle of a grid.  Facts that the harness needs before building
anything (an attack's threat model, whether an adaptor needs target images) live on the spec
only; a built object carries behaviour.  The one exception is documented on ``Attack``.

Minimal examples of each are in docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from robench.errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from robench.jobs import Job, JobOutcome


@runtime_checkable
class Attack(Protocol):
    """``perturb(model, x, y, eps, target=None) -> x_adv``.

    ``model`` takes images in [0, 1] and returns logits; ``eps`` is the budget of the spec's
    threat model (None for a ``minimal`` attack, which returns minimally perturbed examples).
    The harness orders eps, batches, counts gradients and verifies every returned example.

    Optional: ``params`` (the parameters as run, recorded in results); ``threat``, ``kind``
    and ``black_box`` when a parameter (or, for a namespace such as ``foolbox:*``, the name)
    decides them (``apgd-ce`` with ``norm = "l2"`` is an l2 attack; ``foolbox:HopSkipJump
    Attack`` is black-box): the harness reads them once, when it plans the grid, and keys,
    labels, groups and flags the attack by them.  Without them, the spec's values hold.
    ``last_success``, set by each ``perturb`` call: a bool tensor (one entry per returned
    example) of those that the attack's own forward passes saw as adversarial, or ``None``.
    The harness still verifies every example; one it claimed but verification refuses (the
    model's output depends on the batch: kernels, precision, randomness) is attacked once
    more on its own and otherwise counted robust, and counted in ``n_verify_mismatch``.
    """

    def perturb(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                eps: float | None, target: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Adaptor(Protocol):
    """A domain-adaptation objective (an ``nn.Module``):
    ``loss(source_features, target_features, progress) -> Tensor`` added to the task loss;
    ``target_features`` is None when the spec's ``uses_target`` is False; ``progress`` runs
    from 0 to 1 over training.  Optional: ``lr_factor(progress)`` and ``metrics()``."""

    def loss(self, source_features: torch.Tensor, target_features: torch.Tensor | None,
             progress: float) -> torch.Tensor: ...


@runtime_checkable
class Backbone(Protocol):
    """An ``nn.Module`` mapping images to pooled features ``(N, num_features)``; optional
    ``mean``/``std`` (per-channel) applied by the harness inside the evaluated model."""

    num_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Head(Protocol):
    """An ``nn.Module`` mapping features to logits.  Optional: ``prepare_backbone(backbone)``
    (freeze what the head's ``backbone_training`` says) and ``backbone_lr_scale``."""

    def __call__(self, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Executor(Protocol):
    """Runs grid jobs: ``run(jobs) -> Iterator[JobOutcome]``, yielding outcomes as jobs
    finish (in any order).  When its spec says ``supports_dependencies = True`` it receives
    the whole grid at once and starts a job only after every job in its ``after`` succeeded
    (:class:`robench.jobs.Dependencies` does the bookkeeping); otherwise the driver calls
    ``run`` twice: all training, then the evaluations of the models that trained.
    Optional: ``parallelism`` (tasks run at once), read right after ``run(jobs)`` is called
    and before its first outcome: the progress display's header and estimate use it."""

    def run(self, jobs: Iterable[Job]) -> Iterator[JobOutcome]: ...


@runtime_checkable
class Reporter(Protocol):
    """``write(results, run_dir, context) -> list[Path]``: files written from the results
    table; ``context`` is built by :func:`robench.leaderboard.report_context`."""

    def write(self, results: pd.DataFrame, run_dir: Path,
              context: dict[str, Any]) -> list[Path]: ...


#: the protocol each plugin kind's factory must satisfy (kinds not listed: no check)
PROTOCOLS: dict[str, type] = {
    "attack": Attack,
    "adaptor": Adaptor,
    "backbone": Backbone,
    "executor": Executor,
    "reporter": Reporter,
}


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` lacks (attributes and methods)."""
    wanted = [name for name in getattr(protocol, "__protocol_attrs__", ())
              if name != "__call__"]
    if not wanted:  # Python < 3.12 keeps the names elsewhere
        wanted = [name for name in vars(protocol) if not name.startswith("_")] + \
            list(getattr(protocol, "__annotations__", {}))
    return sorted({name for name in wanted if not hasattr(obj, name)})


def check_built(kind: str, name: str, plugin: str, obj: Any) -> Any:
    """Return ``obj`` if it has every member its kind's protocol names, else a PluginError."""
    protocol = PROTOCOLS.get(kind)
    if protocol is None or obj is None:
        return obj
    missing = missing_members(obj, protocol)
    if kind in ("backbone",) and not callable(obj):
        missing.append("__call__")
    if missing:
        raise PluginError(
            f"The {kind} {name!r} built by plugin {plugin!r} is a {type(obj).__name__} "
            f"without {', '.join(missing)}, which robench.protocols.{protocol.__name__} "
            f"requires. Fix the plugin's factory, or disable it with "
            f"ROBENCH_DISABLE_PLUGINS={plugin}."
        )
    return obj
