"""The worker side of the grid: the three tasks (train, clean, attack) and their context.

A task is a top-level function called with keyword arguments, so the same task runs in the
driver's process, in a worker process or on a Ray worker.  Everything a task shares with the
other tasks of its process (the plugin host, loaded datasets, the model being evaluated, the
attack batch sizes that fitted after an out-of-memory back-off) lives in an explicit
:class:`WorkerContext` passed to every task: no module state is read or written.

A context travels to another process as its :class:`HostRecipe` and a token; the receiving
process rebuilds it once and reuses it for every later task of the same grid (see
:func:`WorkerContext.__reduce__`), so a worker does not reload its dataset per task.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robench import data as data_mod
from robench import jobs as jobs_mod
from robench.config import GridConfig, lr_schedule_of
from robench.context import WorkerContext
from robench.evaluation import (
    logits_of,
    make_targets,
    model_diagnostics,
    run_attack_cascade,
)
from robench.examples import write_task_examples
from robench.io import atomic_write_text
from robench.loading import build_model, load_complete_on
from robench.memory import run_with_backoff
from robench.models import count_parameters, fp32_reference
from robench.planning import AttackPlan, ModelPlan, masks_file, model_files
from robench.shards import shard_key
from robench.specs import DatasetBundle
from robench.store import pack_mask
from robench.training import TrainSettings, train_model

#: examples kept per attack for the report's image strips
EXAMPLES_PER_ATTACK = 6


# --------------------------------------------------------------------------- models


def eval_subset(bundle: DatasetBundle, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, reproducible subset of the test split (the same for every seed), as float
    tensors.  The tasks read it as :class:`robench.data.Images` instead; this is for scripts
    that want the very images a grid with ``limit`` evaluates."""
    images, labels = data_mod.load_subset(bundle.test, data_mod.subset_indices(
        len(bundle.test), limit))
    return images[:], labels


def subset_hash(x: torch.Tensor | data_mod.Images, y: torch.Tensor) -> str:
    """sha256 of an evaluated subset: its images as 8-bit pixels and its labels."""
    import hashlib

    pixels = x.pixels_uint8() if isinstance(x, data_mod.Images) else \
        (x.clamp(0, 1) * 255).round().to(torch.uint8)
    digest = hashlib.sha256()
    digest.update(pixels.cpu().numpy().tobytes())
    digest.update(y.cpu().numpy().astype(np.int64).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- tasks


def train_task(*, context: WorkerContext, run_dir: str, config: dict[str, Any],
               plan: dict[str, Any], key: str, device: str) -> dict[str, Any]:
    """Build, train and save one model.  Returns what the store records."""
    cfg = GridConfig(**config)
    model_plan = ModelPlan(**plan)
    host = context.host
    source = context.dataset(cfg, cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = build_model(host, model_plan, image_size=source.image_size,
                        in_chans=source.in_chans, num_classes=source.num_classes)
    spec, _ = host.resolve("adaptor", model_plan.adaptor)
    adaptor = host.build("adaptor", model_plan.adaptor,
                         num_features=int(model.backbone.num_features),
                         **model_plan.adaptor_params)
    target_data = None
    if spec.uses_target:
        target_data = data_mod.TrainingData.of(context.dataset(cfg, cfg.target).train)
    defense = None
    if model_plan.defense_stage == "training":
        defense = host.build(
            "defense", model_plan.defense, **model_plan.defense_params,
            build_attack=lambda name, params: host.build("attack", name, **params))
    settings = TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, seed=cfg.seed,
                             precision=cfg.precision,
                             lr_schedule=lr_schedule_of(cfg, model_plan.defense_stage))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    initial_adaptor = {k: v.clone() for k, v in adaptor.state_dict().items()}

    def train(batch_size: int):
        model.load_state_dict(initial)  # a retry starts from the same initial weights
        adaptor.load_state_dict(initial_adaptor)
        return train_model(
            model, data_mod.TrainingData.of(source.train),
            settings=replace(settings, batch_size=batch_size),
            adaptor=adaptor, target_images=target_data, device=device, defense=defense,
            on_step=lambda done, total: jobs_mod.report_progress(
                f"train {model_plan.name}", done, total),
        )

    report, batch_used = run_with_backoff(train, settings.batch_size)
    from safetensors.torch import save_file

    weights, meta_file = (Path(run_dir) / f for f in model_files(key))
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    meta = {
        "plan": plan, "key": key, "dataset": cfg.dataset, "num_classes": source.num_classes,
        "image_size": source.image_size, "in_chans": source.in_chans,
        "class_names": [str(c) for c in source.class_names],
    }
    atomic_write_text(meta_file, json.dumps(meta, indent=2))
    return {
        "model_file": model_files(key)[0], "train_seconds": report.seconds,
        "params": count_parameters(model), "train_acc": report.train_acc,
        "final_loss": report.final_loss, "steps": report.steps, "metrics": report.metrics,
        "batch_size": batch_used, "lr_schedule": settings.lr_schedule,
    }


#: the harness's own gradient-masking check: PGD with this many steps at Linf eps 1 (any
#: image in [0, 1] is allowed), on the correctly classified samples of each domain
UNBOUNDED_STEPS = 10


def unbounded_check(context: WorkerContext, model: torch.nn.Module, x: torch.Tensor,
                    y: torch.Tensor, correct: torch.Tensor, *, seed: int,
                    batch_size: int) -> float | None:
    """Robust accuracy (over the samples) of PGD at Linf eps 1, where every sample can be
    turned into any image: anything above ~0 means the gradient misleads the attack
    (Athalye et al. 2018's check, run by the harness on every model, not only when a user
    lists such an eps).  ``None`` when no ``pgd`` attack is installed."""
    from robench.evaluation import run_attack_cascade

    try:
        attack = context.host.build("attack", "pgd", steps=UNBOUNDED_STEPS)
    except Exception:  # the attacks plugin is blocked or absent: the check cannot run
        return None
    outcome = run_attack_cascade(attack, model, x, y, correct, threat="linf", kind="bounded",
                                 eps_list=[1.0], batch_size=batch_size, seed=seed)[0]
    return int(outcome.robust.sum()) / max(1, len(y))


def load_task(*, context: WorkerContext, run_dir: str, config: dict[str, Any],
              plan: dict[str, Any], key: str, device: str) -> dict[str, Any]:
    """For a complete model: load it once, check that it fits the data, record what it is.
    Its evaluations load it again from the same plugin (nothing is trained or saved)."""
    cfg = GridConfig(**config)
    model_plan = ModelPlan(**plan)
    jobs_mod.report_progress(f"load {model_plan.name}", 0, 1)
    source = context.dataset(cfg, cfg.dataset)
    start = time.perf_counter()
    module, classifier, preprocess, view = load_complete_on(
        context.host, model_plan, source, dataset=cfg.dataset,
        dataset_params=cfg.plugin_params("dataset", cfg.dataset))
    meta = {
        "plan": plan, "key": key, "complete": True, "dataset": cfg.dataset,
        "num_classes": view.num_classes, "image_size": view.image_size,
        "in_chans": view.in_chans, "class_names": [str(c) for c in view.class_names],
        "info": {str(k): str(v) for k, v in (classifier.info or {}).items()},
        "preprocess": preprocess,
    }
    meta_file = Path(run_dir) / model_files(key)[1]
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_file, json.dumps(meta, indent=2))
    return {"train_seconds": 0.0, "load_seconds": time.perf_counter() - start,
            "params": count_parameters(module), "info": meta["info"]}


def _subset_file(run_dir: str, cfg: GridConfig, dataset: str, meta: dict[str, Any]) -> Path:
    """Where validation left this model's decoded subset of ``dataset`` (file-backed data)."""
    return data_mod.subset_file(run_dir, dataset, cfg.plugin_params("dataset", dataset),
                                meta.get("preprocess"), cfg.limit)


def _evaluation_inputs(context: WorkerContext, run_dir: str, config: dict[str, Any],
                       plan: dict[str, Any], model_key: str, dataset: str, device: str
                       ) -> tuple[GridConfig, torch.nn.Module, dict[str, Any], DatasetBundle,
                                  data_mod.Images, torch.Tensor]:
    """What an evaluation task starts from: the config, the evaluated model and its metadata,
    the dataset as the model sees it, and its evaluated subset (``limit`` test images, read
    on the device batch by batch)."""
    cfg = GridConfig(**config)
    model, meta = context.evaluated_model(run_dir, ModelPlan(**plan), model_key, device,
                                          cfg.precision, cfg.compile)
    bundle = context.dataset(cfg, dataset, meta.get("preprocess"))
    x, y = context.subset(bundle, cfg, device, file=_subset_file(run_dir, cfg, dataset, meta))
    return cfg, model, meta, bundle, x, y


def _prior_masks(run_dir: str, prior_key: str, start: int, stop: int, total: int,
                 device: str) -> dict[float, torch.Tensor]:
    """Per eps, which of samples ``[start, stop)`` the preset's previous member left robust:
    from its masks for this very shard, or (a member run unsharded before) its task's."""
    own = masks_file(run_dir, shard_key(prior_key, start, stop, total))
    path = own if own.is_file() else masks_file(run_dir, prior_key)
    with np.load(path, allow_pickle=False) as data:
        eps, robust = data["eps"], data["robust"]
    if robust.shape[1] == total and stop - start != total:
        robust = robust[:, start:stop]
    if robust.shape[1] != stop - start:
        raise RuntimeError(f"the masks of {prior_key} cover {robust.shape[1]} samples, not "
                           f"the {stop - start} of samples {start}-{stop}")
    return {float(e): torch.from_numpy(np.ascontiguousarray(m)).to(device)
            for e, m in zip(eps, robust, strict=True)}


def clean_task(*, context: WorkerContext, run_dir: str, config: dict[str, Any], key: str,
               plan: dict[str, Any], model_key: str, dataset: str, device: str,
               domain: str = "source", with_class_images: bool = True) -> dict[str, Any]:
    """Clean accuracy, model diagnostics and class-maximisation images for one domain.

    ``seconds`` is the clean pass: decoding the evaluated subset (when this process has not
    decoded it yet) and classifying it, overlapped; class images are timed apart
    (``class_images_seconds``), as they cost as much as many clean passes."""
    jobs_mod.report_progress(f"clean {plan['name']} [{domain}]", 0, 1)
    cfg = GridConfig(**config)
    model, meta = context.evaluated_model(run_dir, ModelPlan(**plan), model_key, device,
                                          cfg.precision, cfg.compile)
    bundle = context.dataset(cfg, dataset, meta.get("preprocess"))
    parts: list[torch.Tensor] = []

    def classify(xb: torch.Tensor, _yb: torch.Tensor) -> None:
        with torch.no_grad():
            parts.append(model(xb))

    start = time.perf_counter()
    x, y = context.subset(bundle, cfg, device, on_batch=classify,
                          file=_subset_file(run_dir, cfg, dataset, meta))
    batch = data_mod.batch_size_for(cfg.eval_batch_size, x.shape[1:])
    logits = torch.cat(parts) if parts else logits_of(model, x, batch_size=batch)
    correct = logits.argmax(1) == y
    seconds = time.perf_counter() - start
    diag = model_diagnostics(model, x, y, num_classes=bundle.num_classes, batch_size=batch)
    diag["unbounded_linf_robust"] = unbounded_check(context, model, x, y, correct,
                                                    seed=cfg.seed, batch_size=batch)
    alignment = None
    pictured: list[int] = []
    picture_seconds = 0.0
    if with_class_images and cfg.class_images > 0:
        # what the model "sees" as each class, and whether it looks so
        from robench.visualize import alignment_from_sums, class_images

        picture_start = time.perf_counter()
        pictured = data_mod.pictured_classes(bundle.num_classes, cfg.class_images)
        everyone = len(pictured) == bundle.num_classes
        pictures = class_images(model, num_classes=bundle.num_classes, shape=tuple(x.shape[1:]),
                                seed=cfg.seed, device=device, batch_size=min(100, batch),
                                classes=None if everyone else pictured)
        # a subset of the classes is named by index (``class_labels``); all of them, as always
        write_task_examples(run_dir, key, class_images=pictures,
                            **({} if everyone else {"class_labels": np.asarray(pictured)}))
        labels = data_mod.labels_of(bundle.train)
        if set(pictured) <= set(np.unique(labels).tolist()):  # a mean image per class needed
            sample = data_mod.class_sample(labels, pictured, cfg.alignment_images)
            sums, counts, _shape = data_mod.class_sums(
                bundle.train, sample, num_classes=bundle.num_classes,
                batch_size=batch, workers=cfg.loader_workers)
            alignment = alignment_from_sums(pictures, torch.tensor(pictured), sums, counts)
        picture_seconds = time.perf_counter() - picture_start
    return {
        "n": len(y), "clean_acc": int(correct.sum()) / len(y), "correct": pack_mask(correct),
        "seconds": seconds, "diagnostics": diag, "num_classes": bundle.num_classes,
        "class_images": bool(pictured), "perceptual_alignment": alignment,
        "class_images_seconds": picture_seconds, "pictured_classes": pictured,
    }


def attack_task(*, context: WorkerContext, run_dir: str, config: dict[str, Any], key: str,
                plan: dict[str, Any], model_key: str, dataset: str, attack: dict[str, Any],
                device: str, prior_key: str = "", start: int = 0,
                stop: int | None = None) -> dict[str, Any]:
    """One attack on one model and domain over the whole eps list of its threat model, on
    samples ``[start, stop)`` of the evaluated subset (a shard; by default all of them).

    With ``prior_key`` (the task of a preset's member before this one), only the samples
    that member left robust at each eps are attacked: the rows are cumulative.  Examples
    and random streams use the samples' indices in the whole subset, so a shard computes
    what the same samples compute in any other shard."""
    cfg, model, _meta, bundle, x, y = _evaluation_inputs(context, run_dir, config, plan,
                                                         model_key, dataset, device)
    total = len(y)
    stop = total if stop is None else min(int(stop), total)
    start = min(max(0, int(start)), stop)
    if (start, stop) != (0, total):
        x, y = x.rows(start, stop), y[start:stop]
    sample_ids = torch.arange(start, stop)
    model_name = plan["name"]
    plan = AttackPlan(**attack)  # from here on, the attack's plan
    params = dict(plan.params)
    target_mode = params.pop("target", None)
    params.pop("eot_samples", None)
    attack_obj = context.host.build("attack", plan.base or plan.name, **params)
    batch = data_mod.batch_size_for(cfg.eval_batch_size, x.shape[1:])
    logits = logits_of(model, x, batch_size=batch)
    correct = logits.argmax(1) == y
    target = None
    attackable = None
    if target_mode is not None:
        target = make_targets(target_mode, y, logits, num_classes=bundle.num_classes,
                              seed=cfg.seed, sample_ids=sample_ids)
        # a sample whose label is the target cannot be pushed "into" it: it is not attacked
        # and keeps its clean outcome
        attackable = target != y
    eps_list = cfg.eps_values(plan.threat)
    start_robust = None
    if prior_key:
        start_robust = _prior_masks(run_dir, prior_key, start, stop, total, device)
    fitting_key = f"{run_dir}:{model_key}:{device}:{cfg.precision}:{plan.name}"
    start_batch = min(batch, context.fitting_batch.get(fitting_key, batch))
    batches = max(1, -(-int(correct.sum()) // start_batch)) * (
        1 if plan.kind == "minimal" else len(eps_list))
    done = [0]

    def tick() -> None:
        done[0] += 1
        jobs_mod.report_progress(f"{plan.name} on {model_name}", done[0], batches)

    from robench.defenses import bpda, eot

    # what the attack differentiates: the model itself, or its average over random draws
    # (EOT); BPDA changes only the backward of inference defenses, so verification (forward
    # passes of ``model``) is untouched
    attacked = eot(model, plan.eot_samples) if plan.eot_samples > 1 else model
    # a bf16 / fp16 run: every adversarial found is re-classified in fp32 as well
    reference = fp32_reference(model) if cfg.precision != "fp32" else None
    with bpda(model, enabled=plan.bpda):
        outcomes, batch_used = run_with_backoff(
            lambda size: run_attack_cascade(
                attack_obj, model, x, y, correct, threat=plan.threat, kind=plan.kind,
                eps_list=eps_list, target=target, attackable=attackable, batch_size=size,
                seed=cfg.seed, keep_examples=EXAMPLES_PER_ATTACK, on_batch=tick,
                nested=plan.threat not in ("corruption", "none"), attack_model=attacked,
                start_robust=start_robust, reference_model=reference,
                sample_ids=sample_ids),
            start_batch,
        )
    if batch_used < start_batch:
        context.fitting_batch[fitting_key] = batch_used
    # what the report shows: per eps of the grid, a few examples adversarial at it (the
    # grid picks the headline attack's eps after the run), with both predictions
    from robench.evaluation import EPS_TOLERANCE, perturbation_norm
    from robench.examples import EXAMPLES_PER_EPS, select_examples

    eps_grid = np.asarray([float(o.eps) for o in outcomes], dtype=np.float64)
    found: dict[int, int] = {}  # sample -> position of the eps whose run found its example
    examples: dict[int, torch.Tensor] = {}
    for k, outcome in enumerate(outcomes):
        for index, adv in outcome.adversarial.items():
            if index in found:
                continue
            if plan.kind == "minimal":  # one run for every eps: the smallest ball holding it
                norm = float(perturbation_norm(adv.to(x.device)[None] - x[[index]],
                                               plan.threat)[0])
                inside = [j for j, eps in enumerate(eps_grid)
                          if norm <= eps + EPS_TOLERANCE * max(1.0, eps)]
                if not inside:
                    continue
                found[index] = inside[0]
            else:
                found[index] = k
            examples[index] = adv
    chosen, adversarial_at = select_examples(
        found, len(eps_grid), nested=plan.threat not in ("corruption", "none"),
        per_eps=EXAMPLES_PER_EPS)
    if chosen:
        adv = torch.stack([examples[i] for i in chosen]).to(device)
        with torch.no_grad():
            pred_adv = model(adv).argmax(1)
        write_task_examples(
            run_dir, key, attack=plan.name, threat=plan.threat, eps=eps_grid,
            indices=np.asarray(chosen) + start, found_eps=eps_grid[[found[i] for i in chosen]],
            adversarial_at=adversarial_at, images_clean=x[chosen], images_adv=adv,
            labels=y[chosen], pred_clean=logits[chosen].argmax(1), pred_adv=pred_adv)
    else:  # the file exists either way: executors ship it back as the task's product
        write_task_examples(run_dir, key, attack=plan.name, threat=plan.threat, eps=eps_grid)
    if plan.preset:  # the next member starts from these
        from robench.io import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez_compressed(buffer, eps=np.array([o.eps for o in outcomes]),
                            robust=np.stack([o.robust.cpu().numpy() for o in outcomes]))
        atomic_write_bytes(masks_file(run_dir, key), buffer.getvalue())
    labels = cfg.eps_labels(plan.threat)
    return {
        "threat": plan.threat, "kind": plan.kind, "black_box": plan.black_box,
        "targeted": target_mode is not None, "target": str(target_mode or ""),
        "n": len(y), "clean_acc": int(correct.sum()) / max(1, len(y)),
        "n_correct": int(correct.sum()), "start": start, "stop": stop,
        "attack_params": getattr(attack_obj, "params", params),
        "examples": len(chosen), "batch_size": batch_used,
        "outcomes": [{
            "eps": o.eps, "eps_label": labels.get(o.eps, f"{o.eps:g}"),
            "robust": pack_mask(o.robust), "robust_acc": int(o.robust.sum()) / len(y),
            "n_robust": int(o.robust.sum()), "n_invalid": o.n_invalid,
            "n_verify_mismatch": o.n_verify_mismatch,
            "n_precision_mismatch": o.n_precision_mismatch,
            "grad_evals": o.grad_evals, "queries": o.queries, "seconds": o.seconds,
            "reasons": dict(o.reasons),
        } for o in outcomes],
    }


