"""Validation: every name, parameter, path and device of a grid is checked before any work.

A grid that passes :func:`validate` can still fail a task (a model that does not learn, an
attack that raises), but never on input the user could have fixed: that is exit code 2 with
a one-paragraph message, before anything is trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from robench.config import PARAM_TABLES, GridConfig
from robench.context import WorkerContext
from robench.errors import PluginCodeError, RobenchError, UsageError, describe_exception
from robench.host import PluginHost, check_params
from robench.params import Check, check_value, table_ref
from robench.planning import AttackPlan, domains
from robench.specs import DatasetBundle

#: parameters the harness passes to factories of each kind (placeholder values for checks)
HARNESS_PARAMS: dict[str, dict[str, int]] = {
    "backbone": {"image_size": 1, "in_chans": 1},
    "head": {"num_features": 1, "num_classes": 1},
    "adaptor": {"num_features": 1},
}
#: what the harness passes to a defense's factory, by stage
DEFENSE_PARAMS: dict[str, dict[str, Any]] = {
    "training": {"build_attack": None},
    "inference": {"model": None},
}
#: keys an ``[attack.NAME]`` table may hold besides its factory's parameters: the harness reads
#: them (a targeted attack's target; forward passes averaged under ``+eot``)
ATTACK_OPTIONS: dict[str, Any] = {
    "target": Annotated[Annotated[int, Check(ge=0)] | Literal["random", "least-likely"],
                        Check(rule="a class index, 'random' or 'least-likely'")],
    "eot_samples": Annotated[int, Check(ge=1)],
}
#: harness-level attack modifiers written after the attack's name (``pgd+bpda``): ``bpda``
#: attacks inference defenses through their straight-through backward, ``eot`` through the
#: average of ``eot_samples`` forward passes (randomised defenses)
ATTACK_MODIFIERS: tuple[str, ...] = ("bpda", "eot")


def attack_base(name: str) -> tuple[str, tuple[str, ...]]:
    """``"pgd+bpda+eot"`` -> ``("pgd", ("bpda", "eot"))``; an unknown modifier is refused."""
    base, *mods = name.split("+")
    for mod in mods:
        if mod not in ATTACK_MODIFIERS:
            raise UsageError(
                f"Attack {name!r}: {mod!r} is not an attack modifier; write an attack name "
                f"optionally followed by +bpda (straight-through gradients through "
                f"inference defenses) and/or +eot (expectation over their randomness).")
    if len(set(mods)) != len(mods):
        raise UsageError(f"Attack {name!r} names a modifier twice.")
    return base, tuple(mods)


@dataclass
class ValidGrid:
    """What validation established: the device, the loaded datasets and the attacks as they
    will run."""

    device: str
    bundles: dict[str, DatasetBundle]
    attacks: dict[str, AttackPlan] = field(default_factory=dict)
    #: each defense's stage (none, training, inference)
    stages: dict[str, str] = field(default_factory=dict)
    #: per dataset, the sha256 of its evaluated subset (8-bit pixels and labels), from the
    #: decode that validation makes of it
    subset_sha256: dict[str, str] = field(default_factory=dict)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch reports it."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"Device {requested!r} was asked for, but torch sees no CUDA GPU here "
                f"(torch {torch.__version__}). Use --device cpu or --device auto."
            )
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"Device {requested!r} does not exist: {torch.cuda.device_count()} GPU(s) seen."
            )
    return requested


#: the dataset parameters that fix the images a dataset serves
FORMAT_PARAMS: tuple[str, ...] = ("channels", "image_size")


def _format_defaults(host: PluginHost, dataset: str) -> dict[str, Any]:
    """The ``channels``/``image_size`` defaults of a dataset's factory ({} when it has none,
    or the name is unknown: validation says so later)."""
    import inspect

    try:
        spec, _ = host.resolve("dataset", dataset, validate=False)
        signature = inspect.signature(spec.factory)
    except (RobenchError, TypeError, ValueError):
        return {}
    return {name: p.default for name, p in signature.parameters.items()
            if name in FORMAT_PARAMS and p.default is not inspect.Parameter.empty}


def with_dataset_formats(config: GridConfig, host: PluginHost) -> GridConfig:
    """The config with the source dataset served in the target's format where it must be.

    Datasets serve their native format by default (``mnist`` 1x28x28 grey).  A grid with a
    target trains one model on both, so where the user set neither ``channels`` nor
    ``image_size`` for the source and the target's format differs from the source's default,
    the source takes the target's (``mnist`` -> ``mnist-m``: 3x32x32 RGB, as MNIST-M is
    made).  The choice is written into the source's ``[data.NAME]`` table, so task keys,
    workers and ``run.json`` all see it.
    """
    if not config.target:
        return config
    source = config.plugin_params("dataset", config.dataset)
    if any(k in source for k in FORMAT_PARAMS):
        return config
    source_format = _format_defaults(host, config.dataset)
    target = {**_format_defaults(host, config.target),
              **{k: v for k, v in config.plugin_params("dataset", config.target).items()
                 if k in FORMAT_PARAMS}}
    wanted = {k: target[k] for k in FORMAT_PARAMS if k in source_format and k in target}
    if not wanted or all(source_format[k] == v for k, v in wanted.items()):
        return config
    params = {table: {name: dict(values) for name, values in entries.items()}
              for table, entries in config.params.items()}
    table = {v: k for k, v in PARAM_TABLES.items()}["dataset"]
    params.setdefault(table, {})[config.dataset] = {**source, **wanted}
    return replace(config, params=params)


def validate(config: GridConfig, context: WorkerContext) -> ValidGrid:
    """Resolve every name and check every parameter, path and device before any work starts."""
    cfg = config
    host = context.host
    run_dir = cfg.run_dir
    if not cfg.backbones and not cfg.models:
        raise UsageError("This grid has no model: give --backbones (models trained by the "
                         "grid) or --models (complete classifiers), or both.")
    names_by_kind = {
        "dataset": [cfg.dataset] + ([cfg.target] if cfg.target else []),
        "backbone": cfg.backbones, "head": cfg.heads, "adaptor": cfg.adaptors,
        "model": cfg.models, "defense": cfg.defenses,
        "attack": cfg.attacks, "reporter": cfg.reporters, "executor": [cfg.executor],
    }
    # every name first (cheap: no plugin code is imported), then every parameter (reads
    # the factories' signatures, which imports them): a mistyped name answers at once
    for kind, names in names_by_kind.items():
        for name in names:
            host.resolve(kind, attack_base(name)[0] if kind == "attack" else name,
                         validate=False)
    for kind, names in names_by_kind.items():
        for name in names:
            plugin_name = attack_base(name)[0] if kind == "attack" else name
            spec, implied = host.resolve(kind, plugin_name)
            params = cfg.plugin_params(kind, name)
            if kind == "attack":
                _check_target(name, spec, params.pop("target", None))
                attack_option(name, "eot_samples", params.pop("eot_samples", 1))
            # what the harness itself passes to the factory, so the check sees its names too
            supplied = HARNESS_PARAMS.get(kind, {})
            if kind == "defense":
                supplied = DEFENSE_PARAMS.get(spec.stage, {})
            with plugin_code(host, kind, plugin_name):  # reading a lazy factory imports it
                check_params(spec, name, {**params, **supplied, **implied},
                             harness=[*supplied, *implied])
    for table, kind in PARAM_TABLES.items():
        used = names_by_kind[kind]
        for name in cfg.params.get(table, {}):
            if kind == "attack" and name.rpartition("/")[0] in used:
                continue  # a preset member's own table: [attack."autoattack/apgd-t"]
            if name not in used:
                raise UsageError(
                    f"Config table [{table}.{name}] sets parameters for {kind} {name!r}, "
                    f"which this grid does not use ({', '.join(used)})."
                )
    for adaptor in cfg.adaptors:
        spec, _ = host.resolve("adaptor", adaptor)
        if spec.uses_target and not cfg.target:
            raise UsageError(
                f"Adaptor {adaptor!r} trains on unlabelled target-domain images, and this "
                f"grid has no target. Pass --target NAME (e.g. digits-m) or use adaptor none."
            )
    device = resolve_device(cfg.device)
    if cfg.precision == "fp16" and not device.startswith("cuda"):
        raise UsageError(
            "precision fp16 needs a CUDA device (CPU autocast supports bf16); use "
            "--precision bf16 or fp32."
        )
    if cfg.precision == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "precision bf16 on a CPU without native bf16 arithmetic (AVX512-BF16 or AMX): "
            "autocast emulates it, about 10x slower than fp32 on the CPU of "
            "benchmarks/RESULTS.md. --precision fp32 is faster here.",
            RuntimeWarning, stacklevel=2)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the run folders.")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"Run folder {str(run_dir)!r} exists and is not a folder.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"Cannot write to the run folder {str(run_dir)!r}: {exc}.") \
            from None
    # Data: load now, so a missing path is exit 2 rather than a failed task.
    bundles: dict[str, DatasetBundle] = {}
    for _, dataset in domains(cfg):
        with plugin_loading(host, "dataset", dataset):
            bundles[dataset] = context.dataset(cfg, dataset)
    if cfg.target:
        src, tgt = bundles[cfg.dataset], bundles[cfg.target]
        if (src.num_classes, src.image_size, src.in_chans) != (
                tgt.num_classes, tgt.image_size, tgt.in_chans):
            raise UsageError(
                f"Target {cfg.target!r} ({tgt.num_classes} classes, {tgt.image_size}px, "
                f"{tgt.in_chans} channels) does not match dataset {cfg.dataset!r} "
                f"({src.num_classes} classes, {src.image_size}px, {src.in_chans} channels); "
                f"set image_size/channels in [data.NAME] so that they agree."
            )

    attacks = _check_values(cfg, host, bundles)
    stages = _check_defenses(cfg, host)
    valid = ValidGrid(device=device, bundles=bundles, attacks=attacks, stages=stages)
    views = _check_complete_models(cfg, context, valid)
    valid.subset_sha256 = _check_subsets(cfg, bundles, views)
    return valid


def _check_subsets(cfg: GridConfig, bundles: dict[str, DatasetBundle],
                   views: dict[str, list[tuple[dict[str, Any], DatasetBundle]]]
                   ) -> dict[str, str]:
    """Decode each dataset's evaluated subset once (only it, never the whole folder), as each
    model will see it: a file that cannot be read is exit 2 naming it, before any work.  A
    file-backed subset is left in the run folder (``subsets/``) for the tasks to map rather
    than decode again.  Returns a hash per dataset (its first view) for provenance."""
    from robench import data
    from robench.worker import subset_hash

    hashes = {}
    for dataset, bundle in bundles.items():
        wanted = [(None, bundle)] if cfg.backbones else []
        for preprocess, view in views.get(dataset, []):
            if preprocess not in [p for p, _ in wanted]:
                wanted.append((preprocess, view))
        for preprocess, view in wanted:
            indices = data.subset_indices(len(view.test), cfg.limit)
            images, labels = data.load_subset(view.test, indices,
                                              batch_size=WorkerContext.eval_batch(view, cfg),
                                              workers=cfg.loader_workers)
            hashes.setdefault(dataset, subset_hash(images, labels))
            if data.is_lazy(view.test):
                data.save_subset(data.subset_file(
                    cfg.run_dir, dataset, cfg.plugin_params("dataset", dataset), preprocess,
                    cfg.limit), images, labels)
    return hashes


def _check_complete_models(cfg: GridConfig, context: WorkerContext, valid: ValidGrid
                           ) -> dict[str, list[tuple[dict[str, Any], DatasetBundle]]]:
    """Load each complete model once and fit it to every evaluated dataset, so a model whose
    classes or input do not fit is exit 2 before any work (the message names both).  Returns,
    per dataset, the views that models with their own preprocessing see (one per distinct
    preprocessing)."""
    views: dict[str, list[tuple[dict[str, Any], DatasetBundle]]] = {}
    from robench.loading import load_complete_on
    from robench.planning import ModelPlan

    for name in cfg.models:
        plan = ModelPlan(name=name, model=name, model_params=cfg.plugin_params("model", name))
        for _, dataset in domains(cfg):
            bundle = valid.bundles[dataset]
            with plugin_loading(context.host, "model", name):
                # as the model will see the data: a folder through its own preprocessing
                _m, _c, preprocess, view = load_complete_on(
                    context.host, plan, bundle, dataset=dataset,
                    dataset_params=cfg.plugin_params("dataset", dataset))
            views.setdefault(dataset, []).append((preprocess, view))
    return views


def fingerprints(host: PluginHost) -> Any:
    """``fingerprint(kind, name)`` of the plugin serving ``name`` (see ``model_plans``)."""
    def fingerprint(kind: str, name: str) -> str:
        return host.fingerprint(host.resolve(kind, name)[0].plugin)
    return fingerprint


def attack_option(name: str, key: str, value: Any) -> Any:
    """``value`` of the harness's own key ``key`` (:data:`ATTACK_OPTIONS`) in the table of
    attack ``name``, checked by the one validator of every config value."""
    return check_value(ATTACK_OPTIONS[key], value, subject=f"{table_ref('attack', name)} {key}")


def _check_target(name: str, spec: Any, target: Any) -> None:
    if target is None:
        return
    if not spec.targeted:
        raise UsageError(
            f"{table_ref('attack', name)} sets target = {target!r}, but attack {name!r} has "
            f"no targeted variant. Remove target, or pick a targeted attack."
        )
    attack_option(name, "target", target)

def _attack_plan(cfg: GridConfig, host: PluginHost, name: str, params: dict[str, Any],
                 recorded: dict[str, Any], **extra: Any) -> AttackPlan:
    """Build the attack once (a bad value is exit 2) and plan it as it will run."""
    base, mods = attack_base(name.rpartition("/")[2])
    eot_samples = attack_option(name, "eot_samples",
                                params.pop("eot_samples", 10 if "eot" in mods else 1))
    built = _build_checked(host, "attack", base, params)
    spec, _ = host.resolve("attack", base)
    return AttackPlan(
        name=name, threat=str(getattr(built, "threat", spec.threat)),
        kind=str(getattr(built, "kind", spec.kind)),
        black_box=bool(getattr(built, "black_box", spec.black_box)),
        targeted_ok=bool(spec.targeted), is_namespace=spec.is_namespace,
        params=recorded, base=base, bpda="bpda" in mods,
        eot_samples=eot_samples if "eot" in mods else 1,
        fingerprint=host.fingerprint(spec.plugin), **extra)


def _preset_members(cfg: GridConfig, host: PluginHost, name: str,
                    spec: Any) -> dict[str, AttackPlan]:
    """A preset's members as attacks of their own (``PRESET/MEMBER``), each run on what
    the one before left robust.  ``[attack.PRESET]`` parameters (``seed``) go to every
    member; ``[attack."PRESET/MEMBER"]`` tables override a member's."""
    shared = cfg.plugin_params("attack", name)
    if "target" in shared:
        raise UsageError(f"{table_ref('attack', name)} sets target, but the preset {name!r} is "
                         f"untargeted (its apgd-t and fab-t pick their targets themselves).")
    plans: dict[str, AttackPlan] = {}
    prior = ""
    for member, fixed in spec.members:
        full = f"{name}/{member}"
        params = {**fixed, **shared, **cfg.plugin_params("attack", full)}
        plans[full] = _attack_plan(cfg, host, full, dict(params), dict(params), preset=name,
                                   ensemble=tuple((m, dict(p)) for m, p in spec.members),
                                   prior=prior)
        prior = full
    return plans


def _check_defenses(cfg: GridConfig, host: PluginHost) -> dict[str, str]:
    """Each defense's stage; a training defense with no trained model is refused."""
    stages = {}
    for name in cfg.defenses:
        spec, _ = host.resolve("defense", name)
        stages[name] = spec.stage
    training = [n for n, s in stages.items() if s == "training"]
    if training and not cfg.backbones:
        raise UsageError(
            f"Defense {training[0]!r} is adversarial training, and this grid trains no model "
            f"(no --backbones): complete models are evaluated as they are. Use an inference "
            f"defense (jpeg, bit-depth, random-resize-pad) or add backbones.")
    return stages


def _check_values(cfg: GridConfig, host: PluginHost,
                  bundles: dict[str, DatasetBundle]) -> dict[str, AttackPlan]:
    """Build the cheap plugins once, so a bad parameter value is exit 2, not a failed task;
    the built attacks say which threat model they run (see ``AttackPlan``)."""
    num_classes = bundles[cfg.dataset].num_classes
    attacks: dict[str, AttackPlan] = {}
    for name in cfg.attacks:
        spec, _ = host.resolve("attack", attack_base(name)[0])
        if spec.members:
            attacks.update(_preset_members(cfg, host, name, spec))
            continue
        params = cfg.plugin_params("attack", name)
        target = params.pop("target", None)
        if isinstance(target, int) and not isinstance(target, bool) and \
                target >= num_classes:
            raise UsageError(
                f"{table_ref('attack', name)} target = {target} is not a class of {cfg.dataset!r} "
                f"(classes 0..{num_classes - 1})."
            )
        attacks[name] = _attack_plan(cfg, host, name, params,
                                     cfg.plugin_params("attack", name))
    for name in cfg.heads:
        _build_checked(host, "head", name, {**cfg.plugin_params("head", name),
                                           "num_features": 8, "num_classes": num_classes})
    for name in cfg.adaptors:
        _build_checked(host, "adaptor", name, {**cfg.plugin_params("adaptor", name),
                                              "num_features": 8})
    return attacks


def _build_checked(host: PluginHost, kind: str, name: str, params: dict[str, Any]) -> Any:
    try:
        with plugin_code(host, kind, name):
            return host.build(kind, name, **params)
    except PluginCodeError as exc:
        if not isinstance(exc.__cause__, (TypeError, ValueError)):
            raise
        raise UsageError(
            f"The {kind} {name!r} refused its parameters {params!r}: {exc.__cause__}."
        ) from None


@contextmanager
def plugin_loading(host: PluginHost, kind: str, name: str) -> Iterator[None]:
    """:func:`plugin_code` around loading a dataset or a model: a missing or unreadable file
    or folder is the user's input (exit 2, naming it), any other exception the plugin's."""
    try:
        with plugin_code(host, kind, name):
            yield
    except PluginCodeError as exc:
        if not isinstance(exc.__cause__, (FileNotFoundError, NotADirectoryError,
                                          PermissionError)):
            raise
        raise UsageError(f"{kind.capitalize()} {name!r} could not be loaded: "
                         f"{exc.__cause__}.") from None


@contextmanager
def plugin_code(host: PluginHost, kind: str, name: str) -> Iterator[None]:
    """Around a call into a plugin while the grid is checked: an exception that is not
    robench's own becomes one paragraph naming the plugin and the exception (a
    :class:`PluginCodeError`, exit code 1: a fault in the plugin, not in the user's input),
    with the exception as its cause for ``robench grid --debug``.  A plugin that judges the
    user's input at fault says so with a :class:`UsageError` (``py:`` factories raise
    ``UserCodeError``), which passes unchanged."""
    try:
        yield
    except RobenchError:
        raise
    except Exception as exc:
        try:
            plugin = host.resolve(kind, name, validate=False)[0].plugin
        except RobenchError:
            plugin = "?"
        distribution = host.plugin_distribution(plugin)
        raise PluginCodeError(
            f"The {kind} {name!r} (plugin {plugin!r}"
            f"{', from ' + distribution if distribution else ''}) raised "
            f"{describe_exception(exc)} while robench checked the grid, before any work. "
            f"That is a fault in the plugin or in what it depends on, not in the grid: leave "
            f"{name!r} out of the grid, or report it to the plugin's authors.") from exc
