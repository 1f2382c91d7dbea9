"""Planning: which models a grid builds, which tasks it runs, and the key of each task.

Everything here is a pure function of the config and the plugins' metadata: nothing is
trained, loaded or attacked.  A task key is a hash of everything that determines the task's
result, so a resumed run recomputes exactly the tasks whose inputs changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from robench.config import GridConfig, lr_schedule_of
from robench.store import task_key
from robench.version import __version__


@dataclass(frozen=True)
class ModelPlan:
    """One evaluated model of the grid, and everything that determines it.

    A *trained* model is backbone + head (+ adaptor) trained by the grid, under a training
    defense or none; a *complete* model (``model`` set) is a classifier evaluated as it is.
    Either may be wrapped in an inference defense (``defense_stage == "inference"``).
    """

    name: str
    backbone: str = ""
    head: str = ""
    adaptor: str = ""
    backbone_params: dict[str, Any] = field(default_factory=dict)
    head_params: dict[str, Any] = field(default_factory=dict)
    adaptor_params: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    model_params: dict[str, Any] = field(default_factory=dict)
    defense: str = "none"
    defense_params: dict[str, Any] = field(default_factory=dict)
    defense_stage: str = "none"
    #: fingerprints (distribution, version, source hash) of the plugins that make the
    #: weights, and of the inference defense's plugin: part of the task keys
    plugins: tuple[str, ...] = ()
    defense_plugin: str = ""

    @property
    def complete(self) -> bool:
        return bool(self.model)

    def weights_plan(self) -> dict[str, Any]:
        """What determines the weights: an inference defense does not (it wraps the model
        trained without it), and fields at their defaults are left out, so plans written
        before defenses and complete models existed keep their keys."""
        out = asdict(self)
        for name in ("model", "model_params", "defense", "defense_params", "defense_stage",
                     "plugins", "defense_plugin"):
            out.pop(name)
        if self.complete:
            out = {"name": self.model, "model": self.model, "model_params": self.model_params}
        elif self.defense_stage == "training":
            out.update(defense=self.defense, defense_params=self.defense_params)
        if self.defense_stage == "inference":
            out["name"] = self.name.rsplit("+", 1)[0]
        return out


@dataclass(frozen=True)
class AttackPlan:
    """What the harness needs to know of one attack, resolved once per grid.

    ``threat`` and ``kind`` are those of the *built* attack when it declares them (an attack
    whose ``norm`` parameter makes it an l2 attack runs, is keyed and is grouped as l2), else
    the spec's: this is the one place the two sources are reconciled.
    """

    name: str
    threat: str
    kind: str
    black_box: bool
    targeted_ok: bool
    is_namespace: bool
    params: dict[str, Any] = field(default_factory=dict)
    #: the registered attack run (``name`` without harness modifiers such as ``+bpda``)
    base: str = ""
    #: attack through inference defenses' straight-through backward (BPDA)
    bpda: bool = False
    #: average the attacked model's output over this many forwards (EOT), 1 = off
    eot_samples: int = 1
    #: the attack plugin's fingerprint (distribution, version, source hash): in the key
    fingerprint: str = ""
    #: for a member of a preset (``autoattack/apgd-t``): the preset, every member with its
    #: parameters, and the member that runs before this one (it runs on what that one
    #: left robust)
    preset: str = ""
    ensemble: tuple[tuple[str, dict[str, Any]], ...] = ()
    prior: str = ""

    @property
    def target(self) -> Any:
        return self.params.get("target")


def domains(config: GridConfig) -> list[tuple[str, str]]:
    """``(domain, dataset)`` pairs evaluated: the source, and the target when there is one."""
    out = [("source", config.dataset)]
    if config.target:
        out.append(("target", config.target))
    return out


#: ``fingerprint(kind, name)``: what identifies the code of the plugin serving ``name``
Fingerprint = Callable[[str, str], str]


def model_plans(config: GridConfig, stages: dict[str, str] | None = None,
                fingerprint: Fingerprint | None = None) -> list[ModelPlan]:
    """The grid's models in config order: every backbone x head x adaptor x defense, then
    every complete model x defense (inference defenses only: a complete model is never
    trained).  ``stages`` maps each defense to its stage (``none`` for the undefended);
    ``fingerprint`` identifies each plugin's code for the task keys."""
    stages = stages or {"none": "none"}
    plans = [_with_plugins(plan, config, fingerprint)
             for plan in _plans(config, stages)]
    return plans


def _with_plugins(plan: ModelPlan, config: GridConfig,
                  fingerprint: Fingerprint | None) -> ModelPlan:
    if fingerprint is None:
        return plan
    used = [("dataset", config.dataset)] + ([("dataset", config.target)]
                                            if config.target else [])
    if plan.complete:
        used.append(("model", plan.model))
    else:
        used += [("backbone", plan.backbone), ("head", plan.head), ("adaptor", plan.adaptor)]
        if plan.defense_stage == "training":
            used.append(("defense", plan.defense))
    prints = tuple(sorted({fingerprint(kind, name) for kind, name in used}))
    defense = fingerprint("defense", plan.defense) if plan.defense_stage == "inference" else ""
    return replace(plan, plugins=prints, defense_plugin=defense)


def _plans(config: GridConfig, stages: dict[str, str]) -> list[ModelPlan]:
    plans = []
    for backbone in config.backbones:
        for head in config.heads:
            for adaptor in config.adaptors:
                for defense in config.defenses:
                    name = f"{backbone}+{head}+{adaptor}"
                    plans.append(ModelPlan(
                        name=name if defense == "none" else f"{name}+{defense}",
                        backbone=backbone, head=head, adaptor=adaptor,
                        backbone_params=config.plugin_params("backbone", backbone),
                        head_params=config.plugin_params("head", head),
                        adaptor_params=config.plugin_params("adaptor", adaptor),
                        **_defense_fields(config, defense, stages)))
    for model in config.models:
        for defense in config.defenses:
            if stages.get(defense, "none") == "training":
                continue
            plans.append(ModelPlan(
                name=model if defense == "none" else f"{model}+{defense}", model=model,
                model_params=config.plugin_params("model", model),
                **_defense_fields(config, defense, stages)))
    return plans


def _defense_fields(config: GridConfig, defense: str, stages: dict[str, str]) -> dict[str, Any]:
    if defense == "none":
        return {}
    return {"defense": defense, "defense_params": config.plugin_params("defense", defense),
            "defense_stage": stages.get(defense, "none")}


def _threads(threads: int) -> dict[str, int]:
    """The torch threads of each task, in its key when not 1 (the thread count changes how
    sums are reduced, so the numbers)."""
    return {} if threads == 1 else {"threads": threads}


def model_key(config: GridConfig, plan: ModelPlan, threads: int = 1) -> str:
    """The key of what is evaluated: the trained (or loaded) model, and the inference defense
    around it.  Clean and attack tasks are keyed on it."""
    base = train_key(config, plan, threads)
    if plan.defense_stage != "inference":
        return base
    return task_key({"task": "defended", "model": base, "defense": plan.defense,
                     "params": plan.defense_params, "robench": __version__,
                     **({"plugin": plan.defense_plugin} if plan.defense_plugin else {})})


def train_key(config: GridConfig, plan: ModelPlan, threads: int = 1) -> str:
    """The key of the task that makes the model's weights: training, or for a complete model
    loading it and checking it fits the data."""
    if plan.complete:
        return task_key({
            "task": "load", "plan": plan.weights_plan(), "dataset": config.dataset,
            "dataset_params": config.plugin_params("dataset", config.dataset),
            "target": config.target, "robench": __version__,
            **({"plugins": list(plan.plugins)} if plan.plugins else {}),
        })
    return task_key({
        "task": "train", "plan": plan.weights_plan(), "dataset": config.dataset,
        "dataset_params": config.plugin_params("dataset", config.dataset),
        "target": config.target,
        "target_params": config.plugin_params("dataset", config.target) if config.target else {},
        "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
        "weight_decay": config.weight_decay, "seed": config.seed,
        "lr_schedule": lr_schedule_of(config, plan.defense_stage),
        "precision": config.precision, "robench": __version__,
        "torch": _torch_version(),
        **({"plugins": list(plan.plugins)} if plan.plugins else {}), **_threads(threads),
    })


def clean_key(config: GridConfig, model_key: str, domain: str, dataset: str,
              threads: int = 1) -> str:
    from robench.config import DEFAULT_ALIGNMENT_IMAGES, DEFAULT_CLASS_IMAGES

    # class images and their alignment join the key only when not the defaults, so runs
    # written before these settings existed resume with the same keys
    pictures = {k: v for k, v, default in (
        ("class_images", config.class_images, DEFAULT_CLASS_IMAGES),
        ("alignment_images", config.alignment_images, DEFAULT_ALIGNMENT_IMAGES))
        if v != default}
    return task_key({"task": "clean", "model": model_key, "domain": domain,
                     "dataset": dataset, "limit": config.limit,
                     "precision": config.precision,
                     "seed": config.seed, "robench": __version__, **_threads(threads),
                     **pictures})


def attack_key(config: GridConfig, attack: AttackPlan, model_key: str, domain: str,
               dataset: str, threads: int = 1) -> str:
    return task_key({
        "task": "attack", "model": model_key, "domain": domain, "dataset": dataset,
        "attack": attack.name, "params": attack.params,
        **({"ensemble": [list(m) for m in attack.ensemble]} if attack.ensemble else {}),
        # a namespace (foolbox:*) learns its threat from the built attack: key on all eps
        "eps": {t: config.eps_values(t) for t in (
            sorted({attack.threat, *config.eps}) if attack.is_namespace else [attack.threat])},
        "limit": config.limit, "seed": config.seed, "robench": __version__,
        "eval_batch_size": config.eval_batch_size, "precision": config.precision,
        **({"plugin": attack.fingerprint} if attack.fingerprint else {}), **_threads(threads),
    })


def masks_file(run_dir: str | Path, key: str) -> Path:
    """Where a preset member's task keeps its per-eps robust masks for the next member."""
    return Path(run_dir) / "masks" / f"{key}.npz"


def model_files(key: str) -> tuple[str, str]:
    """What the training task writes for model ``key``, relative to the run folder."""
    return f"models/{key}.safetensors", f"models/{key}.json"


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]
