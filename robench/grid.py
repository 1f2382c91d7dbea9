"""The grid: models (backbone x head x adaptor) x domains x attacks x eps.

The driver validates everything first (names, parameters, data paths, device), then runs the
jobs through an executor: each model's training job, then its clean and attack jobs, which
depend on it (``Job.after``; an executor that ignores dependencies gets two phases, all
training and then all evaluation).  Every finished job is one transaction in the store; the
results table, worst-case rows and flags are derived from the store, so a resumed run and an
uninterrupted run write the same ``results.csv``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import robench
from robench import jobs as jobs_mod
from robench.config import PARAM_TABLES, GridConfig
from robench.errors import UsageError
from robench.evaluation import (
    class_images,
    logits_of,
    make_targets,
    model_diagnostics,
    run_attack_cascade,
)
from robench.flags import add_flags
from robench.host import PluginHost, check_params
from robench.io import atomic_write_text
from robench.memory import run_with_backoff
from robench.models import (
    Compiled,
    RobenchModel,
    count_parameters,
    freeze,
    with_compile,
    with_precision,
)
from robench.results import coerce_results
from robench.specs import DatasetBundle, as_tensors
from robench.store import Store, task_key
from robench.training import TrainSettings, train_model

#: examples kept per attack for the report's image strips
EXAMPLES_PER_ATTACK = 6
_ACTIVE_HOST: PluginHost | None = None


# --------------------------------------------------------------------------- small helpers


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch reports it."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_device(requested: str) -> str:
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


def _pack(mask: torch.Tensor) -> str:
    return np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes().hex()


def _unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def _to_uint8(images: torch.Tensor) -> list:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy().tolist()


def versions() -> dict[str, str]:
    out = {"robench": robench.__version__, "torch": torch.__version__,
           "python": platform.python_version(), "numpy": np.__version__,
           "pandas": pd.__version__}
    for module in ("timm", "foolbox", "torchvision", "pluggy"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # optional dependency not installed
            continue
    return out


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class ModelPlan:
    """One model of the grid, and everything that determines its weights."""

    name: str
    backbone: str
    head: str
    adaptor: str
    backbone_params: dict[str, Any] = field(default_factory=dict)
    head_params: dict[str, Any] = field(default_factory=dict)
    adaptor_params: dict[str, Any] = field(default_factory=dict)


def _domains(config: GridConfig) -> list[tuple[str, str]]:
    out = [("source", config.dataset)]
    if config.target:
        out.append(("target", config.target))
    return out


def _train_key(config: GridConfig, plan: ModelPlan) -> str:
    return task_key({
        "task": "train", "plan": asdict(plan), "dataset": config.dataset,
        "dataset_params": config.plugin_params("dataset", config.dataset),
        "target": config.target,
        "target_params": config.plugin_params("dataset", config.target) if config.target else {},
        "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
        "weight_decay": config.weight_decay, "seed": config.seed,
        "lr_schedule": config.lr_schedule,
        "precision": config.precision, "robench": robench.__version__,
        "torch": torch.__version__.split("+")[0],
    })


# --------------------------------------------------------------------------- worker side


def _host() -> PluginHost:
    global _ACTIVE_HOST
    if _ACTIVE_HOST is None:
        _ACTIVE_HOST = PluginHost.create()
    return _ACTIVE_HOST


@lru_cache(maxsize=8)
def _load_bundle(dataset: str, params_json: str) -> Any:
    return _host().build("dataset", dataset, **json.loads(params_json))


def _bundle(config: dict[str, Any], dataset: str) -> Any:
    params = GridConfig(**{**config}).plugin_params("dataset", dataset)
    return _load_bundle(dataset, json.dumps(params, sort_keys=True))


def _eval_subset(bundle: Any, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, reproducible subset of the test split (the same for every seed)."""
    x, y = as_tensors(bundle.test)
    if limit is not None and limit < len(y):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:limit]
        order, _ = order.sort()
        x, y = x[order], y[order]
    return x, y


def _build_model(plan: ModelPlan, bundle: Any) -> RobenchModel:
    host = _host()
    backbone = host.build("backbone", plan.backbone, image_size=bundle.image_size,
                          in_chans=bundle.in_chans, **plan.backbone_params)
    num_features = int(getattr(backbone, "num_features", 0))
    if num_features <= 0:
        raise RuntimeError(f"backbone {plan.backbone!r} has no positive num_features attribute")
    head = host.build("head", plan.head, num_features=num_features,
                      num_classes=bundle.num_classes, **plan.head_params)
    return RobenchModel(backbone, head, in_chans=bundle.in_chans)


def train_job(*, run_dir: str, config: dict[str, Any], plan: dict[str, Any], key: str,
              device: str) -> dict[str, Any]:
    """Build, train and save one model.  Returns what the store records."""
    cfg = GridConfig(**config)
    model_plan = ModelPlan(**plan)
    source = _bundle(config, cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = _build_model(model_plan, source)
    num_features = int(model.backbone.num_features)
    adaptor = _host().build("adaptor", model_plan.adaptor, num_features=num_features,
                            **model_plan.adaptor_params)
    target_images = None
    if getattr(adaptor, "uses_target", False):
        target_images, _ = as_tensors(_bundle(config, cfg.target).train)
    settings = TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, seed=cfg.seed,
                             precision=cfg.precision, lr_schedule=cfg.lr_schedule)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    initial_adaptor = {k: v.clone() for k, v in adaptor.state_dict().items()}

    def train(batch_size: int):
        model.load_state_dict(initial)  # a retry starts from the same initial weights
        adaptor.load_state_dict(initial_adaptor)
        return train_model(
            model, as_tensors(source.train), settings=replace(settings, batch_size=batch_size),
            adaptor=adaptor, target_images=target_images, device=device,
            on_step=lambda done, total: jobs_mod.report_progress(
                f"train {model_plan.name}", done, total),
        )

    report, batch_used = run_with_backoff(train, settings.batch_size)
    from safetensors.torch import save_file

    models_dir = Path(run_dir) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(models_dir / f"{key}.safetensors"))
    meta = {
        "plan": plan, "key": key, "dataset": cfg.dataset, "num_classes": source.num_classes,
        "image_size": source.image_size, "in_chans": source.in_chans,
        "class_names": [str(c) for c in source.class_names],
    }
    atomic_write_text(models_dir / f"{key}.json", json.dumps(meta, indent=2))
    return {
        "model_file": f"models/{key}.safetensors", "train_seconds": report.seconds,
        "params": count_parameters(model), "train_acc": report.train_acc,
        "final_loss": report.final_loss, "steps": report.steps, "metrics": report.metrics,
        "batch_size": batch_used,
    }


def _model_files(key: str) -> tuple[str, str]:
    """What ``train_job`` writes for model ``key``, relative to the run folder."""
    return f"models/{key}.safetensors", f"models/{key}.json"


_MODEL_CACHE: dict[str, torch.nn.Module] = {}
#: per evaluated model and attack (run, key, device, precision, attack), the batch size that
#: fitted after an out-of-memory back-off: the attack's task on the model's other domain starts
#: there instead of running out of memory again.  Keyed by attack too, so a memory-hungry
#: attack never shrinks the batch (and so the random draws) of another one, and a task rerun
#: alone backs off to the same size (the batch size used is stored with each task)
_FITTING_BATCH: dict[str, int] = {}


def _trained_model(run_dir: str, key: str, device: str, precision: str = "fp32",
                   compile_backend: str = "off") -> tuple[torch.nn.Module, dict]:
    """The evaluated model of ``key`` at ``precision``, compiled with the torch.compile
    backend ``compile_backend`` unless it is ``"off"``; cached while jobs use one model."""
    meta = json.loads((Path(run_dir) / "models" / f"{key}.json").read_text())
    cache_key = f"{run_dir}:{key}:{device}:{precision}:{compile_backend}"
    if cache_key not in _MODEL_CACHE:
        evicted = list(_MODEL_CACHE.values())
        _MODEL_CACHE.clear()  # one model at a time keeps memory flat on big grids
        if compile_backend != "off" or any(isinstance(m, Compiled) for m in evicted):
            # dynamo keeps compiled graphs per forward *function*, not per model, and past
            # torch._dynamo.config.recompile_limit (8) graphs it silently runs eager: without
            # a reset, the later models of a grid would not be compiled at all
            torch.compiler.reset()
        model = with_precision(_load_trained(Path(run_dir), meta, device), precision, device)
        _MODEL_CACHE[cache_key] = with_compile(model, compile_backend)
    return _MODEL_CACHE[cache_key], meta


def _load_trained(run_dir: Path, meta: dict[str, Any], device: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    plan = ModelPlan(**meta["plan"])

    class _Shape:  # what _build_model needs of a bundle
        image_size = meta["image_size"]
        in_chans = meta["in_chans"]
        num_classes = meta["num_classes"]

    model = _build_model(plan, _Shape)
    model.load_state_dict(load_file(str(run_dir / "models" / f"{meta['key']}.safetensors")))
    # channels_last: +11-25% for convolutions on this CPU (DESIGN.md) and more on GPUs
    return freeze(model).to(device).to(memory_format=torch.channels_last)


def _evaluation_inputs(run_dir: str, config: dict[str, Any], model_key: str, dataset: str,
                       device: str) -> tuple[GridConfig, torch.nn.Module, dict[str, Any],
                                             DatasetBundle, torch.Tensor, torch.Tensor]:
    """What an evaluation job starts from: the config, the evaluated model and its metadata,
    the dataset, and its evaluated subset (``limit`` test images) on the device."""
    cfg = GridConfig(**config)
    model, meta = _trained_model(run_dir, model_key, device, cfg.precision, cfg.compile)
    bundle = _bundle(config, dataset)
    x, y = _eval_subset(bundle, cfg.limit)
    return cfg, model, meta, bundle, x.to(device), y.to(device)


def clean_job(*, run_dir: str, config: dict[str, Any], model_key: str, dataset: str,
              device: str, with_class_images: bool = True) -> dict[str, Any]:
    """Clean accuracy, model diagnostics and class-maximisation images for one domain."""
    cfg, model, _meta, bundle, x, y = _evaluation_inputs(run_dir, config, model_key, dataset,
                                                         device)
    start = time.perf_counter()
    logits = logits_of(model, x, batch_size=cfg.eval_batch_size)
    correct = logits.argmax(1) == y
    seconds = time.perf_counter() - start
    diag = model_diagnostics(model, x, y, num_classes=bundle.num_classes,
                             batch_size=cfg.eval_batch_size)
    pictures = class_images(model, num_classes=bundle.num_classes, shape=tuple(x.shape[1:]),
                            seed=cfg.seed, device=device) if with_class_images else None
    return {
        "n": len(y), "clean_acc": int(correct.sum()) / len(y), "correct": _pack(correct),
        "seconds": seconds, "diagnostics": diag,
        "class_images": _to_uint8(pictures) if pictures is not None else [],
        "num_classes": bundle.num_classes,
    }


def attack_job(*, run_dir: str, config: dict[str, Any], model_key: str, dataset: str,
               attack: str, device: str) -> dict[str, Any]:
    """One attack on one model and domain over the whole eps list of its threat model."""
    cfg, model, meta, bundle, x, y = _evaluation_inputs(run_dir, config, model_key, dataset,
                                                        device)
    params = cfg.plugin_params("attack", attack)
    target_mode = params.pop("target", None)
    spec, _ = _host().resolve("attack", attack)
    attack_obj = _host().build("attack", attack, **params)
    threat = getattr(attack_obj, "threat", spec.threat)
    kind = getattr(attack_obj, "kind", spec.kind)
    logits = logits_of(model, x, batch_size=cfg.eval_batch_size)
    correct = logits.argmax(1) == y
    target = None
    attackable = None
    if target_mode is not None:
        target = make_targets(target_mode, y, logits, num_classes=bundle.num_classes,
                              seed=cfg.seed)
        # a sample whose label is the target cannot be pushed "into" it: it is not attacked
        # and keeps its clean outcome
        attackable = target != y
    eps_list = cfg.eps_values(threat)
    fitting_key = f"{run_dir}:{model_key}:{device}:{cfg.precision}:{attack}"
    start_batch = min(cfg.eval_batch_size, _FITTING_BATCH.get(fitting_key, cfg.eval_batch_size))
    batches = max(1, -(-int(correct.sum()) // start_batch)) * (
        1 if kind == "minimal" else len(eps_list))
    done = [0]

    def tick() -> None:
        done[0] += 1
        jobs_mod.report_progress(f"{attack} on {meta['plan']['name']}", done[0], batches)

    outcomes, batch_used = run_with_backoff(
        lambda size: run_attack_cascade(
            attack_obj, model, x, y, correct, threat=threat, kind=kind, eps_list=eps_list,
            target=target, attackable=attackable, batch_size=size, seed=cfg.seed,
            keep_examples=EXAMPLES_PER_ATTACK, on_batch=tick,
            nested=threat not in ("corruption", "none")),
        start_batch,
    )
    if batch_used < start_batch:
        _FITTING_BATCH[fitting_key] = batch_used
    examples: dict[str, Any] = {}
    for outcome in outcomes:
        for index, adv in outcome.adversarial.items():
            if len(examples) < EXAMPLES_PER_ATTACK and str(index) not in examples:
                examples[str(index)] = {"eps": outcome.eps, "adv": _to_uint8(adv)}
    labels = cfg.eps_labels(threat)
    return {
        "threat": threat, "kind": kind, "black_box": bool(spec.black_box),
        "targeted": target_mode is not None, "target": str(target_mode or ""),
        "n": len(y), "clean_acc": int((logits.argmax(1) == y).sum()) / len(y),
        "attack_params": getattr(attack_obj, "params", params),
        "examples": examples, "batch_size": batch_used,
        "outcomes": [{
            "eps": o.eps, "eps_label": labels.get(o.eps, f"{o.eps:g}"),
            "robust": _pack(o.robust), "robust_acc": int(o.robust.sum()) / len(y),
            "n_robust": int(o.robust.sum()), "n_invalid": o.n_invalid,
            "grad_evals": o.grad_evals, "queries": o.queries, "seconds": o.seconds,
            "reasons": dict(o.reasons),
        } for o in outcomes],
    }


# --------------------------------------------------------------------------- driver


#: parameters the harness passes to factories of each kind (placeholder values for checks)
_HARNESS_PARAMS: dict[str, dict[str, int]] = {
    "backbone": {"image_size": 1, "in_chans": 1},
    "head": {"num_features": 1, "num_classes": 1},
    "adaptor": {"num_features": 1},
}


class Grid:
    """Validates a config, runs its jobs through an executor, writes results and reports."""

    def __init__(self, config: GridConfig, *, host: PluginHost | None = None,
                 progress: bool = False, console: Any = None) -> None:
        self.config = config
        self.host = host or PluginHost.create()
        self.progress = progress
        self.console = console
        self.run_dir = config.run_dir
        self.failures: list[str] = []

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Resolve every name and check every parameter before any work starts."""
        cfg = self.config
        names_by_kind = {
            "dataset": [cfg.dataset] + ([cfg.target] if cfg.target else []),
            "backbone": cfg.backbones, "head": cfg.heads, "adaptor": cfg.adaptors,
            "attack": cfg.attacks, "reporter": cfg.reporters, "executor": [cfg.executor],
        }
        for kind, names in names_by_kind.items():
            for name in names:
                spec, implied = self.host.resolve(kind, name)
                params = cfg.plugin_params(kind, name)
                if kind == "attack":
                    self._check_target(name, spec, params.pop("target", None))
                # what the harness itself passes to the factory, so the check sees it too
                supplied = _HARNESS_PARAMS.get(kind, {})
                check_params(spec, name, {**params, **supplied, **implied})
        for table, kind in PARAM_TABLES.items():
            used = names_by_kind[kind]
            for name in cfg.params.get(table, {}):
                if name not in used:
                    raise UsageError(
                        f"Config table [{table}.{name}] sets parameters for {kind} {name!r}, "
                        f"which this grid does not use ({', '.join(used)})."
                    )
        for adaptor in cfg.adaptors:
            spec, _ = self.host.resolve("adaptor", adaptor)
            if spec.uses_target and not cfg.target:
                raise UsageError(
                    f"Adaptor {adaptor!r} trains on unlabelled target-domain images, and this "
                    f"grid has no target. Pass --target NAME (e.g. digits-m) or use adaptor none."
                )
        self.device = resolve_device(cfg.device)
        if cfg.precision == "fp16" and not self.device.startswith("cuda"):
            raise UsageError(
                "precision fp16 needs a CUDA device (CPU autocast supports bf16); use "
                "--precision bf16 or fp32."
            )
        if cfg.precision == "bf16" and self.device == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "precision bf16 on a CPU without native bf16 arithmetic (AVX512-BF16 or AMX): "
                "autocast emulates it, about 10x slower than fp32 on the CPU of "
                "benchmarks/RESULTS.md. --precision fp32 is faster here.",
                RuntimeWarning, stacklevel=2)
        out = Path(cfg.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {str(out)!r} is a file; give a folder for the run folders.")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UsageError(f"Run folder {str(self.run_dir)!r} exists and is not a folder.")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"Cannot write to the run folder {str(self.run_dir)!r}: {exc}.") \
                from None
        # Data: load now, so a missing path is exit 2 rather than a failed task.
        global _ACTIVE_HOST
        _ACTIVE_HOST = self.host
        _load_bundle.cache_clear()
        config_dict = asdict(cfg)
        self.bundles = {}
        for _, dataset in _domains(cfg):
            try:
                self.bundles[dataset] = _bundle(config_dict, dataset)
            except UsageError:
                raise
            except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
                raise UsageError(f"Dataset {dataset!r} could not be loaded: {exc}.") from None
        if cfg.target:
            src, tgt = self.bundles[cfg.dataset], self.bundles[cfg.target]
            if (src.num_classes, src.image_size, src.in_chans) != (
                    tgt.num_classes, tgt.image_size, tgt.in_chans):
                raise UsageError(
                    f"Target {cfg.target!r} ({tgt.num_classes} classes, {tgt.image_size}px, "
                    f"{tgt.in_chans} channels) does not match dataset {cfg.dataset!r} "
                    f"({src.num_classes} classes, {src.image_size}px, {src.in_chans} channels); "
                    f"set image_size/channels in [data.NAME] so that they agree."
                )

        self._check_values()

    @staticmethod
    def _check_target(name: str, spec: Any, target: Any) -> None:
        if target is None:
            return
        if not spec.targeted:
            raise UsageError(
                f"[attack.{name}] sets target = {target!r}, but attack {name!r} has "
                f"no targeted variant. Remove target, or pick a targeted attack."
            )
        if not (target in ("random", "least-likely")
                or (isinstance(target, int) and not isinstance(target, bool) and target >= 0)):
            raise UsageError(
                f"[attack.{name}] target must be a class index, 'random' or "
                f"'least-likely', got {target!r}."
            )

    def _check_values(self) -> None:
        """Build the cheap plugins once, so a bad parameter value is exit 2, not a failed task."""
        cfg = self.config
        num_classes = self.bundles[cfg.dataset].num_classes
        for name in cfg.attacks:
            params = cfg.plugin_params("attack", name)
            target = params.pop("target", None)
            if isinstance(target, int) and not isinstance(target, bool) and \
                    target >= num_classes:
                raise UsageError(
                    f"[attack.{name}] target = {target} is not a class of {cfg.dataset!r} "
                    f"(classes 0..{num_classes - 1})."
                )
            self._build_checked("attack", name, params)
        for name in cfg.heads:
            self._build_checked("head", name, {**cfg.plugin_params("head", name),
                                               "num_features": 8, "num_classes": num_classes})
        for name in cfg.adaptors:
            self._build_checked("adaptor", name, {**cfg.plugin_params("adaptor", name),
                                                  "num_features": 8})

    def _build_checked(self, kind: str, name: str, params: dict[str, Any]) -> None:
        try:
            self.host.build(kind, name, **params)
        except UsageError:
            raise
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"The {kind} {name!r} refused its parameters {params!r}: {exc}."
            ) from None

    # ------------------------------------------------------------------ plans

    def plans(self) -> list[ModelPlan]:
        cfg = self.config
        out = []
        for backbone in cfg.backbones:
            for head in cfg.heads:
                for adaptor in cfg.adaptors:
                    out.append(ModelPlan(
                        name=f"{backbone}+{head}+{adaptor}", backbone=backbone, head=head,
                        adaptor=adaptor,
                        backbone_params=cfg.plugin_params("backbone", backbone),
                        head_params=cfg.plugin_params("head", head),
                        adaptor_params=cfg.plugin_params("adaptor", adaptor),
                    ))
        return out

    def _attack_key(self, train_key: str, domain: str, dataset: str, attack: str) -> str:
        cfg = self.config
        spec, _ = self.host.resolve("attack", attack)
        threat = spec.threat
        return task_key({
            "task": "attack", "model": train_key, "domain": domain, "dataset": dataset,
            "attack": attack, "params": cfg.plugin_params("attack", attack),
            # a namespace (foolbox:*) learns its threat from the built attack: key on all eps
            "eps": {t: cfg.eps_values(t) for t in (
                sorted({threat, *cfg.eps}) if spec.is_namespace else [threat])},
            "limit": cfg.limit, "seed": cfg.seed, "robench": robench.__version__,
            "eval_batch_size": cfg.eval_batch_size, "precision": cfg.precision,
        })

    def _clean_key(self, train_key: str, domain: str, dataset: str) -> str:
        return task_key({"task": "clean", "model": train_key, "domain": domain,
                         "dataset": dataset, "limit": self.config.limit,
                         "precision": self.config.precision,
                         "seed": self.config.seed, "robench": robench.__version__})

    # ------------------------------------------------------------------ running

    def run(self) -> pd.DataFrame:
        self.validate()
        cfg = self.config
        if cfg.fresh:
            for name in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm"):
                (self.run_dir / name).unlink(missing_ok=True)
        self.store = Store(self.run_dir / "results.sqlite")
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        executor = self.host.build("executor", cfg.executor,
                                   **cfg.plugin_params("executor", cfg.executor))
        config_dict = asdict(cfg)
        run_dir = str(self.run_dir)
        plans = self.plans()
        self.train_keys = {p.name: _train_key(cfg, p) for p in plans}
        resources = {"gpus": 1} if self.device.startswith("cuda") else {}

        def pending(jobs: Iterable[jobs_mod.Job]) -> list[jobs_mod.Job]:
            return [j for j in jobs if self.store.status(j.key) != "ok"]

        train_jobs = {
            p.name: jobs_mod.Job(
                key=self.train_keys[p.name], kind="train", label=f"train {p.name}",
                fn=train_job, resources=resources, produces=_model_files(self.train_keys[p.name]),
                kwargs={"run_dir": run_dir, "config": config_dict, "plan": asdict(p),
                        "key": self.train_keys[p.name], "device": self.device})
            for p in plans
        }

        def evaluations(plan: ModelPlan) -> list[jobs_mod.Job]:
            key = self.train_keys[plan.name]
            jobs = []
            for domain, dataset in _domains(cfg):
                common = {"run_dir": run_dir, "config": config_dict, "model_key": key,
                          "dataset": dataset, "device": self.device}
                jobs.append(jobs_mod.Job(
                    key=self._clean_key(key, domain, dataset), kind="clean",
                    label=f"clean {plan.name} [{domain}]", fn=clean_job,
                    kwargs={**common, "with_class_images": domain == "source"},
                    resources=resources, after=(key,), needs=_model_files(key)))
                for attack in cfg.attacks:
                    jobs.append(jobs_mod.Job(
                        key=self._attack_key(key, domain, dataset, attack), kind="attack",
                        label=f"{attack} on {plan.name} [{domain}]", fn=attack_job,
                        kwargs={**common, "attack": attack}, resources=resources,
                        after=(key,), needs=_model_files(key)))
            return jobs

        if getattr(executor, "supports_dependencies", False):
            # one call: each model's evaluations follow its training, and start as soon
            # as it succeeds (on a cluster, while other models still train)
            self._execute(executor, pending(
                job for plan in plans
                for job in [train_jobs[plan.name], *evaluations(plan)]), "grid")
        else:  # an executor that ignores Job.after: training first, then evaluation
            self._execute(executor, pending(train_jobs.values()), "training")
            self._execute(executor, pending(
                job for plan in plans if self.store.status(self.train_keys[plan.name]) == "ok"
                for job in evaluations(plan)), "evaluation")
        results = self.results()
        self.write_outputs(results)
        return results

    def _execute(self, executor: Any, jobs: list[jobs_mod.Job], phase: str) -> None:
        if not jobs:
            return
        by_key = {j.key: j for j in jobs}
        with _ProgressDisplay(self.progress, len(jobs), phase, self.console) as display:
            for outcome in executor.run(jobs):
                job = by_key[outcome.key]
                if outcome.skipped:  # its model did not train: not stored, retried next time
                    display.advance(f"{job.label} (skipped: its model did not train)", True)
                    continue
                if outcome.ok:
                    self.store.put(job.key, kind=job.kind, label=job.label, status="ok",
                                   payload=outcome.result or {})
                else:
                    self.failures.append(f"{job.label}: {outcome.error}")
                    self.store.put(job.key, kind=job.kind, label=job.label, status="failed",
                                   payload={"error": outcome.error,
                                            "traceback": outcome.traceback})
                display.advance(job.label, outcome.ok)

    # ------------------------------------------------------------------ results

    def results(self) -> pd.DataFrame:
        """The results table, derived from the store alone."""
        cfg = self.config
        rows: list[dict[str, Any]] = []
        self.diagnostics: dict[tuple[str, str], dict[str, Any]] = {}
        for plan in self.plans():
            key = self.train_keys[plan.name]
            trained = self.store.get(key) or {}
            train_ok = self.store.status(key) == "ok"
            base = {"model": plan.name, "backbone": plan.backbone, "head": plan.head,
                    "adaptor": plan.adaptor, "seed": cfg.seed, "device": self.device,
                    "params": trained.get("params", 0),
                    "train_seconds": trained.get("train_seconds", float("nan")),
                    "run": cfg.name}
            for domain, dataset in _domains(cfg):
                clean = self.store.get(self._clean_key(key, domain, dataset)) if train_ok \
                    else None
                if clean and "correct" in clean:
                    self.diagnostics[(plan.name, domain)] = {
                        **clean["diagnostics"], "num_classes": clean["num_classes"]}
                per_threat: dict[tuple[str, float], list[tuple[np.ndarray, str, str]]] = {}
                labels: dict[tuple[str, float], str] = {}
                for attack in cfg.attacks:
                    spec, _ = self.host.resolve("attack", attack)
                    akey = self._attack_key(key, domain, dataset, attack)
                    payload = self.store.get(akey) if train_ok else None
                    status = self.store.status(akey) if train_ok else "failed"
                    row0 = {**base, "dataset": dataset, "domain": domain, "attack": attack,
                            "attack_params": json.dumps(cfg.plugin_params("attack", attack),
                                                        sort_keys=True)}
                    if status != "ok" or payload is None:
                        error = (payload or {}).get("error") or trained.get("error") or \
                            "not run"
                        threat = spec.threat
                        eps_names = cfg.eps_labels(threat)
                        for eps in cfg.eps_values(threat):
                            rows.append({**row0, "threat": threat, "attack_kind": spec.kind,
                                         "eps": eps, "eps_label": eps_names.get(eps, f"{eps:g}"),
                                         "clean_acc": (clean or {}).get("clean_acc"),
                                         "status": "failed", "error": error,
                                         "n": (clean or {}).get("n", 0)})
                        continue
                    threat = payload["threat"]
                    for outcome in payload["outcomes"]:
                        status_row = "invalid" if outcome["n_invalid"] else "ok"
                        reasons = ";".join(f"{k}={v}" for k, v in outcome["reasons"].items())
                        rows.append({
                            **row0, "threat": threat, "attack_kind": payload["kind"],
                            "eps": outcome["eps"], "eps_label": outcome["eps_label"],
                            "clean_acc": payload["clean_acc"],
                            "robust_acc": outcome["n_robust"] / payload["n"], "n": payload["n"],
                            "n_robust": outcome["n_robust"], "n_invalid": outcome["n_invalid"],
                            "grad_evals": outcome["grad_evals"], "queries": outcome["queries"],
                            "seconds": outcome["seconds"], "status": status_row,
                            "error": f"verification: {reasons}" if reasons else "",
                            "attack_params": json.dumps(payload.get("attack_params", {}),
                                                        sort_keys=True, default=str),
                            "black_box": payload["black_box"],
                            "targeted": payload["targeted"],
                        })
                        if payload["targeted"]:
                            continue  # targeted success is not untargeted robustness
                        mask = _unpack(outcome["robust"], payload["n"])
                        per_threat.setdefault((threat, outcome["eps"]), []).append(
                            (mask, status_row, attack))
                        labels[(threat, outcome["eps"])] = outcome["eps_label"]
                for (threat, eps), entries in sorted(per_threat.items()):
                    robust = np.logical_and.reduce([m for m, _, _ in entries])
                    n = len(robust)
                    rows.append({
                        **base, "dataset": dataset, "domain": domain, "attack": "worst-case",
                        "threat": threat, "attack_kind": "worst-case", "eps": eps,
                        "eps_label": labels[(threat, eps)],
                        "clean_acc": clean["clean_acc"] if clean else float("nan"),
                        "robust_acc": int(robust.sum()) / n if n else float("nan"), "n": n,
                        "n_robust": int(robust.sum()),
                        "status": "invalid" if any(s == "invalid" for _, s, _ in entries)
                        else "ok",
                        "attack_params": json.dumps(sorted(a for _, _, a in entries)),
                    })
        frame = coerce_results(pd.DataFrame(rows))
        frame = add_flags(frame, self.diagnostics)
        return frame.drop(columns=[c for c in ("black_box", "targeted") if c in frame])

    # ------------------------------------------------------------------ outputs

    def provenance(self) -> dict[str, Any]:
        plugin_versions = {}
        for name, _ in self.host.pm.list_name_plugin():
            dist = self.host.plugin_distribution(name)
            if dist:
                plugin_versions[name] = dist
        return {
            "name": self.config.name, "config": asdict(self.config), "versions": versions(),
            "plugins": plugin_versions, "device": self.device,
            "device_name": torch.cuda.get_device_name(0) if self.device.startswith("cuda")
            else platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "seed": self.config.seed,
            "git_revision": git_revision(), "started": getattr(self, "started", ""),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv, "failures": self.failures, "host": platform.node(),
            "pid": os.getpid(),
        }

    def write_outputs(self, results: pd.DataFrame) -> None:
        provenance = self.provenance()
        atomic_write_text(self.run_dir / "run.json", json.dumps(provenance, indent=2,
                                                                default=str))
        atomic_write_text(self.run_dir / "results.csv", results.to_csv(index=False))
        self.write_examples()
        write_reports(results, self.run_dir, provenance, self.config.reporters, self.host)

    def write_examples(self) -> None:
        """``examples/<model>__<domain>.npz`` for the reports' image strips."""
        cfg = self.config
        examples_dir = self.run_dir / "examples"
        examples_dir.mkdir(exist_ok=True)
        for plan in self.plans():
            key = self.train_keys[plan.name]
            if self.store.status(key) != "ok":
                continue
            for domain, dataset in _domains(cfg):
                clean = self.store.get(self._clean_key(key, domain, dataset))
                chosen = None
                for attack in _example_order(cfg.attacks, self.host):
                    payload = self.store.get(self._attack_key(key, domain, dataset, attack))
                    if payload and payload.get("examples"):
                        chosen = (attack, payload)
                        break
                if clean is None or "correct" not in clean:
                    continue
                source_clean = self.store.get(self._clean_key(key, "source", cfg.dataset))
                bundle = self.bundles[dataset]
                x, y = _eval_subset(bundle, cfg.limit)
                model, _ = _trained_model(str(self.run_dir), key, "cpu")
                arrays: dict[str, Any] = {
                    "model": plan.name, "domain": domain, "dataset": dataset,
                    "class_names": np.array([str(c) for c in bundle.class_names] or
                                            [str(i) for i in range(bundle.num_classes)]),
                }
                pictures = (source_clean or {}).get("class_images")
                if pictures:
                    arrays["class_images"] = np.array(pictures, dtype=np.uint8).transpose(
                        0, 2, 3, 1)
                if chosen is not None:
                    attack, payload = chosen
                    index = [int(i) for i in payload["examples"]]
                    adv = torch.tensor([payload["examples"][str(i)]["adv"] for i in index],
                                       dtype=torch.float32) / 255
                    clean_x = x[index]
                    with torch.no_grad():
                        pred_clean = model(clean_x).argmax(1)
                        pred_adv = model(adv).argmax(1)
                    arrays.update(
                        attack=attack, threat=payload["threat"],
                        eps=max(payload["examples"][str(i)]["eps"] for i in index),
                        images_clean=np.array(_to_uint8(clean_x), dtype=np.uint8)
                        .transpose(0, 2, 3, 1),
                        images_adv=np.array(_to_uint8(adv), dtype=np.uint8).transpose(0, 2, 3, 1),
                        labels=y[index].numpy(), pred_clean=pred_clean.numpy(),
                        pred_adv=pred_adv.numpy(),
                    )
                slug = "".join(c if c.isalnum() or c in "-_." else "_"
                               for c in f"{plan.name}__{domain}")
                np.savez_compressed(examples_dir / f"{slug}.npz", **arrays)


def _example_order(attacks: list[str], host: PluginHost) -> list[str]:
    """White-box gradient attacks first: their examples are the instructive ones."""
    def rank(name: str) -> int:
        spec, _ = host.resolve("attack", name)
        if spec.threat in ("corruption", "none") or name == "noise":
            return 2
        return 1 if spec.black_box else 0
    return sorted(attacks, key=rank)


def write_reports(results: pd.DataFrame, run_dir: Path, provenance: dict[str, Any],
                  reporters: list[str], host: PluginHost) -> list[Path]:
    """Call the configured reporters (found through the plugin host) on the results."""
    from robench.leaderboard import write_reports as write_with

    context = {"name": provenance.get("name", run_dir.name),
               "config": provenance.get("config", {}), "provenance": provenance,
               "examples_dir": run_dir / "examples"}
    params = provenance.get("config", {}).get("params", {}).get("reporter", {})
    return write_with(results, run_dir, context, reporters=reporters, params=params, host=host)


class _ProgressDisplay:
    """A rich progress bar over jobs, with a second bar for the job in flight."""

    def __init__(self, enabled: bool, total: int, phase: str, console: Any) -> None:
        self.enabled = enabled
        self.total = total
        self.phase = phase
        self.console = console

    def __enter__(self) -> _ProgressDisplay:
        if not self.enabled:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, transient=False)
        self.bar.start()
        self.main = self.bar.add_task(f"{self.phase}", total=self.total)
        self.inner = self.bar.add_task("", total=1, visible=False)

        def on_progress(label: str, done: int, total: int) -> None:
            self.bar.update(self.inner, description=f"  {label}", completed=done, total=total,
                            visible=True)

        jobs_mod.set_progress_callback(on_progress)
        return self

    def advance(self, label: str, ok: bool) -> None:
        if self.enabled:
            self.bar.advance(self.main)
            self.done = getattr(self, "done", 0) + 1
            if not ok:
                self.bar.console.print(f"[red]failed[/red]: {label}")
            elif not self.bar.console.is_terminal:  # logs and CI get one line per job
                self.bar.console.print(f"{self.phase} {self.done}/{self.total}: {label}",
                                       markup=False, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            jobs_mod.set_progress_callback(None)
            self.bar.update(self.inner, visible=False)
            self.bar.stop()


# --------------------------------------------------------------------------- public API


def run_grid(config: GridConfig | dict[str, Any] | None = None, *,
             host: PluginHost | None = None, progress: bool = False,
             on_grid: Callable[[Grid], None] | None = None, **overrides: Any) -> pd.DataFrame:
    """Run a grid and return the rows of ``results.csv``.

    ``config`` is a :class:`GridConfig`, a mapping with the TOML keys, or None for the default
    grid; keyword ``overrides`` win over it (``run_grid(attacks=["pgd"], limit=100)``).
    """
    from robench.config import build_config

    if isinstance(config, GridConfig):
        data = {k: v for k, v in asdict(config).items() if k != "params"}
        data.update(config.params)
        config = build_config(data, **overrides)
    else:
        config = build_config(config or {}, **overrides)
    grid = Grid(config, host=host, progress=progress)
    if on_grid is not None:
        on_grid(grid)
    return grid.run()


def load_model(run_dir: str | Path, model: str, *, device: str = "cpu",
               host: PluginHost | None = None) -> torch.nn.Module:
    """The exact model a run evaluated: eval mode, images in [0, 1] -> logits."""
    global _ACTIVE_HOST
    run_dir = Path(run_dir)
    models_dir = run_dir / "models"
    if not models_dir.is_dir():
        raise UsageError(f"{str(run_dir)!r} holds no trained models (no models/ folder).")
    metas = [json.loads(p.read_text()) for p in sorted(models_dir.glob("*.json"))]
    named = {m["plan"]["name"]: m for m in metas}
    if model not in named:
        from robench.errors import UnknownNameError

        raise UnknownNameError("model", model, named)
    if host is not None:
        _ACTIVE_HOST = host
    return _load_trained(run_dir, named[model], device)
