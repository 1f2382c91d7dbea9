"""Seeded supervised training with an optional domain-adaptation objective.

One loop serves transfer learning (a head on a pretrained or fresh backbone, the backbone
fine-tuned, frozen or partly trained as the head says) and domain adaptation (labelled source
batches plus unlabelled target batches, the adaptor adding its loss on their features).
Progress for adaptor schedules is counted per optimiser step.

A training defense (``robench.defenses.TrainingDefense``: adversarial training) replaces each
labelled source batch by the images its inner maximisation returns and supplies the loss;
target batches are never perturbed, and the adaptor's loss is added as without a defense.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robench.data import TrainingData, training_batches
from robench.defenses import TrainingDefense
from robench.models import RobenchModel
from robench.placement import BatchSource

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    precision: str = "fp32"
    #: "constant", or "dann": Ganin & Lempitsky's annealing lr / (1 + 10 p) ** 0.75
    lr_schedule: str = "constant"


def annealed_lr_factor(progress: float, *, alpha: float = 10.0, beta: float = 0.75) -> float:
    """``1 / (1 + alpha p)^beta``: the learning-rate annealing of Ganin & Lempitsky (2015)."""
    return 1.0 / (1.0 + alpha * progress) ** beta


@dataclass
class TrainReport:
    seconds: float
    steps: int
    final_loss: float
    train_acc: float
    metrics: dict[str, float] = field(default_factory=dict)


def _param_groups(model: RobenchModel, adaptor: nn.Module | None, lr: float) -> list[dict]:
    head = model.head
    scale = float(getattr(head, "backbone_lr_scale", 1.0))
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = []
    if backbone_params and scale > 0:
        groups.append({"params": backbone_params, "lr": lr * scale, "base_lr": lr * scale})
    groups.append({"params": [p for p in head.parameters() if p.requires_grad], "lr": lr,
                   "base_lr": lr})
    if adaptor is not None:
        extra = [p for p in adaptor.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "lr": lr, "base_lr": lr})
    return [g for g in groups if g["params"]]


def _defended_step(
    model: RobenchModel, defense: TrainingDefense, xs: torch.Tensor, ys: torch.Tensor,
    progress: float, xt: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One training defense's step: ``(loss, logits trained on, their source features,
    target features or None)``.  The target batch ``xt`` is the one drawn for this step
    exactly as without a defense."""
    b = len(ys)
    x_adv = defense.inputs(model, xs, ys, progress).detach()
    if x_adv.shape != xs.shape:
        raise ValueError(f"the training defense returned images of shape "
                         f"{tuple(x_adv.shape)} for a batch of {tuple(xs.shape)}")
    parts = [xs, x_adv] if defense.needs_clean_logits else [x_adv]
    if xt is not None:
        parts.append(xt)
    feats = model.features(torch.cat(parts) if len(parts) > 1 else parts[0])
    ft = feats[-b:] if xt is not None else None
    source = feats[: len(parts) * b - (b if xt is not None else 0)]
    all_logits = model.head(source).float()
    logits = all_logits[-b:]
    clean = all_logits[:b] if defense.needs_clean_logits else None
    loss = defense.loss(logits, ys, clean)
    return loss, logits, source[-b:], ft


def train_model(
    model: RobenchModel,
    source: tuple[torch.Tensor, torch.Tensor] | TrainingData | Any,
    *,
    settings: TrainSettings,
    adaptor: nn.Module | None = None,
    target_images: torch.Tensor | TrainingData | Any | None = None,
    device: torch.device | str = "cpu",
    on_step: ProgressCallback | None = None,
    defense: TrainingDefense | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``source`` (images in [0, 1], labels; or a split, which may
    be lazy: its batches are then decoded ahead by loader workers, in the same seeded order).

    With an adaptor whose ``uses_target`` is true, every step also draws an unlabelled batch
    of ``target_images`` and adds ``adaptor.loss(source_feats, target_feats, progress)``.
    The adaptor may define ``lr_factor(progress)`` (e.g. DANN's annealing) applied to every
    group's base learning rate.

    With a ``defense`` (adversarial training), each step trains on
    ``defense.inputs(model, source_batch, labels, progress)`` with ``defense.loss(...)``
    instead of the clean batch's cross-entropy (clean and adversarial images share one forward
    when the defense needs the clean logits); the adaptor sees the features of the images the
    loss trains on (the adversarial source batch) and of the target batch.  ``train_acc`` is
    then the accuracy on those adversarial batches, and the defense's own ``metrics()``
    (e.g. ``adv_train_acc``) join the report's metrics.  Without a defense every number is what
    it was before defenses existed.
    """
    device = torch.device(device)
    source_data = TrainingData.of(source)
    # resident tensors go on the device when they fit, else are streamed (BatchSource); a
    # lazy split is decoded batch by batch (robench.data.training_batches)
    data = None if source_data.lazy else BatchSource(
        [source_data.split.images, source_data.split.labels], device)
    uses_target = adaptor is not None and bool(getattr(adaptor, "uses_target", False))
    if uses_target and (target_images is None or len(target_images) == 0):
        raise ValueError("this adaptor needs target images, and none were given")
    target = None
    if uses_target:
        target = TrainingData.of(target_images) if not isinstance(target_images, torch.Tensor) \
            else TrainingData.of((target_images, torch.zeros(len(target_images),
                                                             dtype=torch.long)))
    target_data = BatchSource([target.split.images], device) \
        if target is not None and not target.lazy else None

    prepare = getattr(model.head, "prepare_backbone", None)
    if callable(prepare):
        prepare(model.backbone)
    model.to(device).to(memory_format=torch.channels_last)
    if adaptor is not None:
        adaptor.to(device)
    groups = _param_groups(model, adaptor, settings.lr)
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    lr_factor = getattr(adaptor, "lr_factor", None) if adaptor is not None else None
    if lr_factor is None and settings.lr_schedule == "dann":
        lr_factor = annealed_lr_factor

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                              enabled=amp_dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    generator = torch.Generator().manual_seed(settings.seed)
    n = len(source_data)
    index_device = data.index_device if data is not None else torch.device("cpu")
    batch = min(settings.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = settings.epochs * steps_per_epoch
    if defense is not None:
        defense.begin(epochs=settings.epochs, steps_per_epoch=steps_per_epoch,
                      seed=settings.seed)
    step = 0
    start = time.perf_counter()
    frozen_backbone = not any(p.requires_grad for p in model.backbone.parameters())
    # kept on the device and read once at the end: no host synchronisation per step
    last_loss: torch.Tensor | None = None
    correct, seen = torch.zeros((), dtype=torch.long, device=device), 0
    for _epoch in range(settings.epochs):
        model.train()
        if frozen_backbone:
            model.backbone.eval()  # a frozen probe keeps its BatchNorm statistics too
        if adaptor is not None:
            adaptor.train()
        # the epoch's draws, in the order every robench version has made them: the
        # permutation, then per step the target batch's indices
        order = torch.randperm(n, generator=generator).to(index_device)
        steps = []
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            tidx = torch.randint(len(target), (len(idx),), generator=generator) \
                if target is not None else None
            steps.append((idx, tidx))
        correct, seen = torch.zeros((), dtype=torch.long, device=device), 0
        batches = training_batches(source_data, target, steps, device=device, resident=data,
                                   resident_target=target_data)
        for xs, ys, xt in batches:
            progress = step / max(1, total)
            if callable(lr_factor):
                factor = float(lr_factor(progress))
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
            with autocast:
                if defense is not None:
                    loss, logits, fs, ft = _defended_step(model, defense, xs, ys, progress, xt)
                elif xt is not None:
                    feats = model.features(torch.cat([xs, xt]))
                    fs, ft = feats[: len(ys)], feats[len(ys):]
                else:
                    fs, ft = model.features(xs), None
                if defense is None:
                    logits = model.head(fs).float()
                    loss = F.cross_entropy(logits, ys)
                if adaptor is not None and uses_target:
                    loss = loss + adaptor.loss(fs.float(), ft.float(), progress)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            last_loss = loss.detach()
            correct += (logits.argmax(1) == ys).sum()
            seen += len(ys)
            if on_step is not None:
                on_step(step, total)
    model.eval()
    metrics: dict[str, Any] = {}
    if adaptor is not None and callable(getattr(adaptor, "metrics", None)):
        metrics = {k: float(v) for k, v in adaptor.metrics().items()}
    if defense is not None and callable(getattr(defense, "metrics", None)):
        metrics.update({k: float(v) for k, v in defense.metrics().items()})
    return TrainReport(
        seconds=time.perf_counter() - start,
        steps=step,
        final_loss=float(last_loss) if last_loss is not None else math.nan,
        train_acc=int(correct) / seen if seen else math.nan,
        metrics=metrics,
    )
