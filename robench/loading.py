"""Building the evaluated models: a trained backbone + head read back from its weights, a
complete model through its plugin (fitted to the dataset), an inference defense around
either.  Shared by the tasks (:mod:`robench.worker`), the worker context's model cache
(:mod:`robench.context`) and ``robench.load_model``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from robench.errors import UsageError
from robench.host import PluginHost
from robench.models import RobenchModel, freeze
from robench.planning import ModelPlan, model_files


def build_model(host: PluginHost, plan: ModelPlan, *, image_size: int, in_chans: int,
                num_classes: int) -> RobenchModel:
    backbone = host.build("backbone", plan.backbone, image_size=image_size,
                          in_chans=in_chans, **plan.backbone_params)
    num_features = int(getattr(backbone, "num_features", 0))
    if num_features <= 0:
        raise RuntimeError(f"backbone {plan.backbone!r} has no positive num_features attribute")
    head = host.build("head", plan.head, num_features=num_features,
                      num_classes=num_classes, **plan.head_params)
    return RobenchModel(backbone, head, in_chans=in_chans)


def load_trained(run_dir: Path, meta: dict[str, Any], device: str,
                 host: PluginHost) -> torch.nn.Module:
    """The model described by ``meta`` (a ``models/<key>.json``), frozen, eval mode: trained
    weights read back, or a complete model loaded by its plugin."""
    from safetensors.torch import load_file

    if meta.get("complete"):
        module = load_complete(host, ModelPlan(**meta["plan"]), num_classes=meta["num_classes"],
                               class_names=meta["class_names"], image_size=meta["image_size"],
                               in_chans=meta["in_chans"], dataset=meta["dataset"])[0]
        return freeze(module).to(device)
    model = build_model(host, ModelPlan(**meta["plan"]), image_size=meta["image_size"],
                        in_chans=meta["in_chans"], num_classes=meta["num_classes"])
    model.load_state_dict(load_file(str(run_dir / model_files(meta["key"])[0])))
    # channels_last: +11-25% for convolutions on this CPU (DESIGN.md) and more on GPUs
    return freeze(model).to(device).to(memory_format=torch.channels_last)


def load_complete(host: PluginHost, plan: ModelPlan, *, num_classes: int,
                  class_names: list[str], image_size: int, in_chans: int,
                  dataset: str) -> tuple[torch.nn.Module, Any]:
    """A complete classifier built by its plugin and fitted to the dataset (its classes in
    the dataset's order, normalisation inside); ``UsageError`` when it cannot fit."""
    from robench.classifiers import fit_to_dataset

    classifier = build_classifier(host, plan, num_classes=num_classes, image_size=image_size,
                                  in_chans=in_chans)
    module = fit_to_dataset(classifier, model_name=plan.model, dataset=dataset,
                            num_classes=num_classes, class_names=class_names,
                            image_size=image_size, in_chans=in_chans)
    return module, classifier


def build_classifier(host: PluginHost, plan: ModelPlan, *, num_classes: int, image_size: int,
                     in_chans: int) -> Any:
    """The model plugin's classifier; a plugin that fits the dataset (``ModelSpec.
    fits_dataset``: ``file:``, ``py:``) gets the dataset's classes, size and channels for
    what the user's table leaves out."""
    spec, _ = host.resolve("model", plan.model)
    params = dict(plan.model_params)
    if spec.fits_dataset:
        params = {"num_classes": num_classes, "image_size": image_size, "in_chans": in_chans,
                  **params}
    return host.build("model", plan.model, **params)


def preprocess_for(classifier: Any, bundle: Any, dataset_params: dict[str, Any]
                   ) -> dict[str, Any] | None:
    """The preprocessing a complete model's images are decoded with on ``bundle``: its own
    (``Classifier.preprocess``) when the dataset is read from files and its ``image_size``
    is not set by the user (which then wins); ``None``: the dataset's own decoding."""
    from robench.data import ImageFiles

    preprocess = getattr(classifier, "preprocess", None)
    if preprocess is None or "image_size" in dataset_params:
        return None
    if not (isinstance(bundle.train, ImageFiles) and isinstance(bundle.test, ImageFiles)):
        return None
    return preprocess.to_dict()


def load_complete_on(host: PluginHost, plan: ModelPlan, bundle: Any, *, dataset: str,
                     dataset_params: dict[str, Any]
                     ) -> tuple[torch.nn.Module, Any, dict[str, Any] | None, Any]:
    """A complete model fitted to ``bundle`` as the model sees it: ``(module, classifier,
    preprocess or None, the bundle decoded through that preprocessing)``."""
    from robench.classifiers import check_takes_input, fit_to_dataset
    from robench.data import for_model

    classifier = build_classifier(host, plan, num_classes=bundle.num_classes,
                                  image_size=bundle.image_size, in_chans=bundle.in_chans)
    preprocess = preprocess_for(classifier, bundle, dataset_params)
    view = for_model(bundle, preprocess)
    module = fit_to_dataset(classifier, model_name=plan.model, dataset=dataset,
                            num_classes=view.num_classes,
                            class_names=[str(c) for c in view.class_names],
                            image_size=view.image_size, in_chans=view.in_chans)

    def servable(chans: int, size: int) -> bool:
        """Whether the dataset plugin takes ``channels`` and ``image_size`` parameters."""
        from robench.host import check_params

        spec, implied = host.resolve("dataset", dataset)
        try:
            check_params(spec, dataset, {**dataset_params, **implied, "channels": chans,
                                         "image_size": size}, harness=list(implied))
        except UsageError:
            return False
        return True

    check_takes_input(module, classifier, model_name=plan.model, dataset=dataset,
                      image_size=view.image_size, in_chans=view.in_chans, servable=servable)
    return module, classifier, preprocess, view


def defended(host: PluginHost, plan: ModelPlan, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` inside the inference defense of ``plan``."""
    return host.build("defense", plan.defense, model=model, **plan.defense_params)


def check_loadable(run_dir: Path) -> list[dict[str, Any]]:
    """The metadata of every model trained in ``run_dir`` (``UsageError`` when none)."""
    models_dir = run_dir / "models"
    if not models_dir.is_dir():
        raise UsageError(f"{str(run_dir)!r} holds no trained models (no models/ folder).")
    return [json.loads(p.read_text()) for p in sorted(models_dir.glob("*.json"))]
