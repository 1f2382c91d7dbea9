"""``robench.evaluate``: the one-liner for a model in a notebook.

The model and the data may live only in memory; they reach the grid as two plugins made for
the call (a complete model ``memory:model`` and, for tensors, a dataset ``memory:data``), so
the evaluation is exactly the grid's: the eps cascade, verification of every example,
worst-case rows and sanity flags.  When the model's class (and a Classifier's, if given)
imports by name in another process, the plugin is pickled once into the run folder and the
attacks' shards run on worker processes, one per core; a model defined in a notebook or
in ``__main__`` keeps the whole evaluation in this process (one worker).
"""

from __future__ import annotations

import numbers
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robench.errors import UsageError
from robench.hookspecs import hookimpl
from robench.host import PluginHost
from robench.specs import Classifier, DatasetBundle, DatasetSpec, ModelSpec, TensorSplit

#: the names the in-memory model and data get in the results
MEMORY_MODEL = "memory:model"
MEMORY_DATA = "memory:data"


class _MemoryPlugin:
    """The model (and tensors) given to :func:`evaluate`, as a plugin object.  It pickles
    with them, so worker processes of this machine can rebuild it when the model's class
    imports by name there (see :meth:`robench.PluginHost.share_objects`)."""

    __name__ = "robench_memory"

    def __init__(self, model: Any, data: tuple[Any, Any] | None, *, num_classes: int | None,
                 class_names: Sequence[str]) -> None:
        self.model, self.data = model, data
        self.num_classes, self.class_names = num_classes, tuple(class_names)

    def classifier(self) -> Classifier:
        return self.model if isinstance(self.model, Classifier) else Classifier(
            module=self.model, num_classes=int(self.num_classes or 0),
            class_names=self.class_names)

    def bundle(self) -> DatasetBundle:
        images, labels = self.data
        split = TensorSplit(images, labels)
        num_classes = int(self.num_classes)
        return DatasetBundle(
            name=MEMORY_DATA, num_classes=num_classes, image_size=int(images.shape[-1]),
            in_chans=int(images.shape[1]), train=split, test=split,
            class_names=self.class_names or tuple(str(i) for i in range(num_classes)))

    @hookimpl
    def robench_register_models(self) -> list[ModelSpec]:
        return [ModelSpec(name=MEMORY_MODEL, factory=self.classifier,
                          source="an nn.Module passed to evaluate()",
                          description="the model given to robench.evaluate")]

    @hookimpl
    def robench_register_datasets(self) -> list[DatasetSpec]:
        if self.data is None:
            return []
        return [DatasetSpec(name=MEMORY_DATA, factory=self.bundle,
                            description="tensors given to evaluate()")]


def _memory_plugin(model: Any, data: tuple[Any, Any] | None, *, num_classes: int | None,
                   class_names: Sequence[str]) -> _MemoryPlugin:
    return _MemoryPlugin(model, data, num_classes=num_classes, class_names=class_names)


def _is_budget(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, numbers.Real)
                                      and not isinstance(value, bool))


def eps_by_threat(eps: Any) -> dict[str, Any] | None:
    """``evaluate``'s ``eps`` as a config ``[eps]`` table: a mapping is taken as it is (threat
    -> budgets, or one budget), a list or tuple of budgets is Linf, one budget (a number or
    text such as ``"8/255"``) is Linf; ``None`` keeps the grid's default eps.  The budgets
    themselves are checked by the config's rules (``build_config``); any other shape is refused
    here, with the shapes accepted."""
    if eps is None:
        return None
    if isinstance(eps, Mapping):
        return {threat: list(v) if isinstance(v, (list, tuple)) else v
                for threat, v in eps.items()}
    if _is_budget(eps):
        return {"linf": [eps]}
    if isinstance(eps, (list, tuple)):
        return {"linf": list(eps)}
    raise UsageError(
        f"evaluate(): eps must be a dict of threat -> budgets ({{'linf': ['8/255'], 'l2': "
        f"[0.5]}}), a list of Linf budgets (['4/255', '8/255']) or one Linf budget ('8/255' "
        f"or 0.03), not {type(eps).__name__} {eps!r}.")


def evaluate(
    model: Any,
    dataset: str | tuple[Any, Any],
    *,
    attacks: Sequence[str] = ("apgd-ce", "apgd-t"),
    eps: Mapping[str, Sequence[Any] | Any] | Sequence[Any] | str | float | None = None,
    limit: int | None = 1000,
    num_classes: int | None = None,
    class_names: Sequence[str] = (),
    out: str | Path | None = None,
    name: str = "evaluate",
    seed: int = 0,
    device: str = "auto",
    attack_params: Mapping[str, Mapping[str, Any]] | None = None,
    dataset_params: Mapping[str, Any] | None = None,
    reporters: Sequence[str] = ("csv", "md", "html", "json"),
    shard_size: int | str = "auto",
    executor: str = "local",
    executor_params: Mapping[str, Any] | None = None,
) -> Any:
    """Evaluate an in-memory classifier; returns the rows of ``results.csv`` (a DataFrame).

    ``model`` is an ``nn.Module`` taking images in [0, 1] and returning logits (or a
    :class:`robench.Classifier`). ``dataset`` is a dataset plugin name (``"mnist"``) or a
    pair ``(images, labels)`` of tensors, images ``(N, C, H, W)`` in [0, 1]; then
    ``num_classes`` defaults to ``labels.max() + 1``.  ``eps`` maps threat models to budgets
    (``{"linf": ["8/255"], "l2": [0.5]}``); a list (``["4/255", "8/255"]``) or a single
    budget (``"8/255"``, ``0.03``) is Linf.  With ``out``, the run folder ``out/name`` keeps
    the store and the reports (rerunning resumes); without, they are written to a temporary
    folder that is removed.  ``shard_size`` splits each attack into jobs of that many samples
    (config key ``shard_size``); ``executor`` and ``executor_params`` run them (by default
    the ``local`` executor, one worker per core when the model's class imports by name in
    a worker process, else in this process).
    """
    from robench.config import build_config

    eps_table = eps_by_threat(eps)
    if eps_table:
        build_config({"eps": eps_table})  # each budget checked now, before any work
    import torch

    from robench.grid import run_grid

    data = None
    if isinstance(dataset, str):
        dataset_name = dataset
    elif isinstance(dataset, Sequence) and len(dataset) == 2:
        images, labels = (torch.as_tensor(t) for t in dataset)
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise UsageError(
                f"evaluate(): dataset must be (images (N, C, H, W), labels (N,)); got shapes "
                f"{tuple(images.shape)} and {tuple(labels.shape)}.")
        if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
            raise UsageError("evaluate(): images must be in [0, 1] (the model normalises "
                             "inside itself, so eps means the same for every model).")
        num_classes = num_classes or int(labels.max()) + 1
        data = (images.float(), labels.long())
        dataset_name = MEMORY_DATA
    else:
        raise UsageError("evaluate(): dataset must be a dataset name or (images, labels).")
    if isinstance(model, torch.nn.Module) and num_classes is None:
        num_classes = None  # the dataset decides: fitted by the grid, refused if unlike
    plugin = _memory_plugin(model, data, num_classes=num_classes, class_names=class_names)
    host = PluginHost.create(plugins=[plugin])
    if not isinstance(model, Classifier) and num_classes is None:
        bundle = host.build("dataset", dataset_name, **dict(dataset_params or {}))
        plugin = _memory_plugin(model, data, num_classes=bundle.num_classes,
                                class_names=class_names)
        host = PluginHost.create(plugins=[plugin])
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="robench-"))
    config: dict[str, Any] = {
        "name": name, "dataset": dataset_name, "target": "none", "models": [MEMORY_MODEL],
        # nothing is trained, so nothing is adapted (digits' showcase default adds dann,
        # which needs a target: evaluate(model, "digits") was refused for it)
        "adaptors": ["none"],
        "attacks": list(attacks), "limit": limit if limit is not None else 0, "seed": seed,
        "device": device, "out": str(folder),
        "reporters": list(reporters) if out else ["csv"],
        # the model travels to worker processes when its class imports by name there (a
        # module's, not a notebook's): its attack's shards then run on every core
        "executor": {executor: dict(executor_params or {})},
        "shard_size": shard_size,
    }
    if not host.share_objects(folder / name / "plugins"):
        if executor != "local":
            raise UsageError(
                f"evaluate(): the {executor} executor runs tasks in other processes, and this "
                f"model cannot travel there: its class does not import by name (defined in a "
                f"notebook or in __main__?). Move it to an importable module, or use the "
                f"local executor.")
        config["executor"]["local"]["workers"] = 1
    if eps_table:
        config["eps"] = eps_table
    if attack_params:
        config["attack"] = {k: dict(v) for k, v in attack_params.items()}
    if dataset_params:
        config["data"] = {dataset_name: dict(dataset_params)}
    from robench.classifiers import InputMismatchError

    try:
        try:
            return run_grid(config, host=host)
        except InputMismatchError as exc:
            # a model of its own input on a dataset that can serve it (a 1x28x28 CNN on
            # mnist): the dataset decides the input when the caller did not
            if exc.takes is None or dataset_params or data is not None:
                raise
            chans, size = exc.takes
            warnings.warn(
                f"evaluate(): the model does not take {dataset_name!r}'s default images; "
                f"evaluating on {dataset_name!r} served as {chans}x{size}x{size}, the input it "
                f"takes (dataset_params={{'channels': {chans}, 'image_size': {size}}}).",
                stacklevel=2)
            config["data"] = {dataset_name: {"channels": chans, "image_size": size}}
            return run_grid(config, host=host)
    finally:
        if out is None:
            shutil.rmtree(folder, ignore_errors=True)
