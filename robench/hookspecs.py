"""Every hook a robench plugin can implement.

A plugin is a module (or object) with functions marked ``@robench.hookimpl`` whose names
match the specs below.  Each hook returns an iterable of spec objects; the host calls every
implementation through pluggy's hook caller, merges the results and refuses a name
registered twice (naming both plugins).  Plugins are found through the entry-point group
``robench``.

Every hook is called with the keyword argument ``robench_version`` (the running robench's
version, for a plugin that registers differently across versions).  An implementation
declares only the arguments it uses: ``def robench_register_attacks():`` is as valid as
``def robench_register_attacks(robench_version):``.  Hooks may gain keyword arguments in
later versions, and implementations written today keep working, because pluggy passes each
implementation only the arguments it names.

What each factory returns is described by the protocols in :mod:`robench.protocols`
(``Attack``, ``Adaptor``, ``Executor``, ``Reporter``, ...); the host checks a built object
against its protocol and names the plugin when a member is missing.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from robench.specs import (
    AdaptorSpec,
    AttackSpec,
    BackboneSpec,
    DatasetSpec,
    DefenseSpec,
    ExecutorSpec,
    HeadSpec,
    ModelSpec,
    ReporterSpec,
)

PROJECT = "robench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------- data and models


@hookspec
def robench_register_datasets(robench_version: str) -> Iterable[DatasetSpec]:
    """Register datasets.

    Called once per plugin host, when a dataset is first looked up.  Each factory is called
    with the user's parameters and returns a :class:`robench.DatasetBundle` whose splits yield
    ``(image, label)`` with images float ``(C, H, W)`` in [0, 1].
    """


@hookspec
def robench_register_backbones(robench_version: str) -> Iterable[BackboneSpec]:
    """Register feature extractors.

    Each factory is called with ``image_size`` and ``in_chans`` of the dataset besides the
    user's parameters (and ``name`` for a ``prefix:*`` namespace) and returns an ``nn.Module``
    mapping images to pooled features ``(N, D)``, with attribute ``num_features = D`` and
    optionally ``mean``/``std`` applied by the harness inside the evaluated model.
    """


@hookspec
def robench_register_heads(robench_version: str) -> Iterable[HeadSpec]:
    """Register classification heads (``features -> logits``).

    Each factory is called with ``num_features`` and ``num_classes`` besides the user's
    parameters.  ``HeadSpec.backbone_training`` says whether the backbone is fine-tuned,
    frozen or partly trained under the head.
    """


@hookspec
def robench_register_adaptors(robench_version: str) -> Iterable[AdaptorSpec]:
    """Register domain-adaptation objectives used during training.

    Each factory is called with ``num_features`` besides the user's parameters and returns a
    module with ``uses_target`` and ``loss(source_features, target_features, progress)``.
    """


@hookspec
def robench_register_models(robench_version: str) -> Iterable[ModelSpec]:
    """Register complete classifiers (evaluated as they are, never trained by the grid).

    Each factory is called with the user's parameters (and ``name`` for a ``prefix:*``
    namespace) and returns a :class:`robench.Classifier`: the module (images -> logits) and
    what it expects (classes, class names, input size and channels, mean/std).
    """


@hookspec
def robench_register_defenses(robench_version: str) -> Iterable[DefenseSpec]:
    """Register defenses: training objectives (``stage = "training"``: adversarial training
    through robench's attacks) and wrappers of the evaluated model (``stage = "inference"``).
    """


# ---------------------------------------------------------------- evaluation


@hookspec
def robench_register_attacks(robench_version: str) -> Iterable[AttackSpec]:
    """Register adversarial attacks and corruptions.

    Each factory returns an object with ``perturb(model, x, y, eps, target=None) -> x_adv``.
    The model takes images in [0, 1]; the harness orders eps, batches, counts gradient
    evaluations and verifies every returned example, so an attack only perturbs.
    """


# ---------------------------------------------------------------- running and reporting


@hookspec
def robench_register_executors(robench_version: str) -> Iterable[ExecutorSpec]:
    """Register executors that run grid jobs (``local`` in-process, ``ray`` on a cluster)."""


@hookspec
def robench_register_reporters(robench_version: str) -> Iterable[ReporterSpec]:
    """Register report writers (``csv``, ``md``, ``html``, ``json``) fed the results table."""


HOOK_KINDS: dict[str, str] = {
    "dataset": "robench_register_datasets",
    "backbone": "robench_register_backbones",
    "head": "robench_register_heads",
    "adaptor": "robench_register_adaptors",
    "model": "robench_register_models",
    "defense": "robench_register_defenses",
    "attack": "robench_register_attacks",
    "executor": "robench_register_executors",
    "reporter": "robench_register_reporters",
}
