"""The context the tasks of one process share (see :mod:`robench.worker` for the tasks).

Everything a task shares with the other tasks of its process (the plugin host, loaded
datasets, the model being evaluated, the attack batch sizes that fitted after an
out-of-memory back-off) lives in an explicit :class:`WorkerContext` passed to every task: no
module state is read or written by the tasks.  A context travels to another process as its
:class:`~robench.host.HostRecipe` and a token; the receiving process rebuilds it once and
reuses it for every later task of the same grid (:meth:`WorkerContext.__reduce__`), so a
worker does not reload its dataset per task.  This module imports no torch: building a grid
and refusing bad input stay fast.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robench.config import GridConfig
from robench.host import HostRecipe, PluginHost
from robench.planning import ModelPlan, model_files
from robench.specs import DatasetBundle


@dataclass
class WorkerContext:
    """What the tasks of one process share.  Build one per grid run with :meth:`create`."""

    recipe: HostRecipe
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _host: PluginHost | None = field(default=None, repr=False)
    _bundles: dict[str, DatasetBundle] = field(default_factory=dict, repr=False)
    _models: OrderedDict[str, tuple[Any, dict]] = field(
        default_factory=OrderedDict, repr=False)
    #: datasets as complete models with their own preprocessing see them
    _views: dict[str, DatasetBundle] = field(default_factory=dict, repr=False)
    #: the evaluated subset last decoded (keyed by its split, limit and device)
    _subsets: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict, repr=False)
    #: per evaluated model and attack (run, key, device, precision, attack), the batch size
    #: that fitted after an out-of-memory back-off: the attack's task on the model's other
    #: domain starts there instead of running out of memory again.  Keyed by attack too, so
    #: a memory-hungry attack never shrinks the batch (and so the random draws) of another
    fitting_batch: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, host: PluginHost) -> WorkerContext:
        return cls(recipe=host.recipe, _host=host)

    @property
    def host(self) -> PluginHost:
        if self._host is None:
            self._host = self.recipe.build()
        return self._host

    def bundle(self, dataset: str, params: dict[str, Any]) -> DatasetBundle:
        """The dataset ``dataset`` built with ``params``, loaded once per context."""
        key = f"{dataset}:{json.dumps(params, sort_keys=True)}"
        if key not in self._bundles:
            self._bundles[key] = self.host.build("dataset", dataset, **params)
        return self._bundles[key]

    def dataset(self, config: GridConfig, dataset: str,
                preprocess: dict[str, Any] | None = None) -> DatasetBundle:
        """The dataset of the grid; with a model's ``preprocess`` (a complete model's own
        input pipeline, recorded in its metadata), its files decoded that way."""
        bundle = self.bundle(dataset, config.plugin_params("dataset", dataset))
        if preprocess is None:
            return bundle
        from robench.data import for_model

        key = f"{dataset}:{json.dumps(config.plugin_params('dataset', dataset), sort_keys=True)}" \
              f":{json.dumps(preprocess, sort_keys=True)}"
        if key not in self._views:
            self._views[key] = for_model(bundle, preprocess)
        return self._views[key]

    def subset(self, bundle: DatasetBundle, config: GridConfig, device: str,
               on_batch: Any = None, file: Path | None = None) -> tuple[Any, Any]:
        """The evaluated subset of ``bundle``'s test split (``limit`` images, by index), as
        ``robench.data.Images`` and labels on ``device``.  Decoded once per process and kept
        (one subset at a time, 8-bit for decoded files); ``on_batch(images, labels)`` sees
        each batch while it is decoded, or every batch of the kept subset.  ``file``: where
        validation left the decoded subset (a file-backed dataset), mapped instead of
        decoded when it is there."""
        from robench import data

        key = f"{id(bundle.test)}:{config.limit}:{device}"
        if key not in self._subsets:
            self._subsets.clear()
            indices = data.subset_indices(len(bundle.test), config.limit)
            mapped = data.read_subset(file, len(indices), device) \
                if file is not None and data.is_lazy(bundle.test) else None
            if mapped is not None:
                self._subsets[key] = (*mapped, bundle.test)
                return self.subset(bundle, config, device, on_batch=on_batch)
            images, labels = data.load_subset(
                bundle.test, indices, batch_size=self.eval_batch(bundle, config),
                workers=config.loader_workers, device=device, on_batch=on_batch)
            self._subsets[key] = (images.placed(device), labels, bundle.test)
            return self._subsets[key][:2]
        images, labels, _ = self._subsets[key]
        if on_batch is not None:
            batch = self.eval_batch(bundle, config)
            for start in range(0, len(labels), batch):
                on_batch(images[start:start + batch], labels[start:start + batch])
        return images, labels

    @staticmethod
    def eval_batch(bundle: DatasetBundle, config: GridConfig) -> int:
        """The evaluation batch for ``bundle``'s images: ``eval_batch_size``, capped by
        their size (``robench.data.batch_size_for``)."""
        from robench.data import batch_size_for

        return batch_size_for(config.eval_batch_size,
                              (bundle.in_chans, bundle.image_size, bundle.image_size))

    def evaluated_model(self, run_dir: str, plan: ModelPlan, key: str, device: str,
                        precision: str = "fp32", compile_backend: str = "off"
                        ) -> tuple[Any, dict]:
        """The model ``plan`` evaluates (weights of task ``key``; a complete model as its
        plugin loads it; inside its inference defense) at ``precision``, compiled with
        ``compile_backend`` unless it is ``"off"``.  One model is kept at a time, which keeps
        memory flat on big grids."""
        import torch

        from robench.loading import defended, load_trained
        from robench.models import Compiled, with_compile, with_precision

        cache_key = f"{run_dir}:{key}:{plan.name}:{device}:{precision}:{compile_backend}"
        if cache_key not in self._models:
            evicted = [m for m, _ in self._models.values()]
            self._models.clear()
            if compile_backend != "off" or any(isinstance(m, Compiled) for m in evicted):
                # dynamo keeps compiled graphs per forward *function*, not per model, and past
                # its recompile limit (8) it silently runs eager: without a reset, the later
                # models of a grid would not be compiled at all
                torch.compiler.reset()
            meta = json.loads((Path(run_dir) / model_files(key)[1]).read_text())
            model = load_trained(Path(run_dir), meta, device, self.host)
            if plan.defense_stage == "inference":
                model = defended(self.host, plan, model).to(device)
            model = with_precision(model, precision, device)
            self._models[cache_key] = (with_compile(model, compile_backend), meta)
        return self._models[cache_key]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # caches and the host stay behind; the receiving process reuses its own copy
        return _context_in_this_process, (self.recipe, self.token)


#: the contexts this process received from a driver, by token (two at most: one grid
#: at a time, plus one being replaced); a worker rebuilds its host and datasets once per grid
_RECEIVED: OrderedDict[str, WorkerContext] = OrderedDict()


def _context_in_this_process(recipe: HostRecipe, token: str) -> WorkerContext:
    if token not in _RECEIVED:
        _RECEIVED[token] = WorkerContext(recipe=recipe, token=token)
        while len(_RECEIVED) > 2:
            _RECEIVED.popitem(last=False)
    return _RECEIVED[token]
