"""The grid, orchestrated: validate -> plan -> jobs -> executor -> store -> tabulate -> reports.

Each step lives in a module named after it: :mod:`robench.validation` (every input checked
before any work), :mod:`robench.planning` (models, tasks and their keys),
:mod:`robench.worker` (the tasks and the context they share), :mod:`robench.tabulate`
(results and worst-case rows from the store), :mod:`robench.examples` (report images) and
:mod:`robench.progress`.  Each model's clean and attack tasks depend on its training task
(``Job.after``); an executor that ignores dependencies gets two phases, all training and then
all evaluation.  An attack task runs as shards of consecutive samples (:mod:`robench.shards`),
jobs of their own that the driver merges into the task when the last one is in.  Every
finished task and shard is one transaction in the store, so a resumed run and an
uninterrupted run write the same ``results.csv``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robench import examples as examples_mod
from robench.config import GridConfig
from robench.context import WorkerContext
from robench.errors import UsageError, closest
from robench.host import PluginHost
from robench.io import atomic_write_text
from robench.jobs import Job
from robench.planning import (
    ModelPlan,
    attack_key,
    clean_key,
    domains,
    masks_file,
    model_files,
    model_key,
    model_plans,
    train_key,
)
from robench.progress import ProgressDisplay
from robench.shards import resolve_shard_size, shard_key, shard_ranges
from robench.store import Store
from robench.validation import ValidGrid, fingerprints, validate, with_dataset_formats
from robench.version import __version__

if TYPE_CHECKING:  # pragma: no cover - pandas and torch load only when a grid runs
    import pandas as pd


# The tasks, as top-level functions importing the worker (and so torch) only when one runs:
# building and validating a grid, and refusing bad input, stay fast.


def train_task(**kwargs: Any) -> dict[str, Any]:
    from robench.worker import train_task as task

    return task(**kwargs)


def load_task(**kwargs: Any) -> dict[str, Any]:
    from robench.worker import load_task as task

    return task(**kwargs)


def clean_task(**kwargs: Any) -> dict[str, Any]:
    from robench.worker import clean_task as task

    return task(**kwargs)


def attack_task(**kwargs: Any) -> dict[str, Any]:
    from robench.worker import attack_task as task

    return task(**kwargs)





def versions() -> dict[str, str]:
    import numpy as np
    import pandas as pd
    import torch

    out = {"robench": __version__, "torch": torch.__version__,
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


class Grid:
    """Validates a config, runs its jobs through an executor, writes results and reports."""

    def __init__(self, config: GridConfig, *, host: PluginHost | None = None,
                 progress: bool = False, console: Any = None) -> None:
        self.host = host or PluginHost.create()
        #: the grid's config, with the source dataset in the target's format where needed
        self.config = config = with_dataset_formats(config, self.host)
        self.context = WorkerContext.create(self.host)
        self.progress = progress
        self.console = console
        self.run_dir = config.run_dir
        self.failures: list[str] = []
        #: the models, and per model name the key of the task that makes its weights and
        #: the key of the evaluated model (they differ under an inference defense); known
        #: once the grid is validated (a defense's stage comes from its plugin).
        #: ``train_keys`` and ``model_keys`` are the first seed's; ``seed_keys`` maps every
        #: seed to its own pair (each seed's tasks keyed as a one-seed run of that seed)
        self.plans: list[ModelPlan] = []
        self.train_keys: dict[str, str] = {}
        self.model_keys: dict[str, str] = {}
        self.seed_keys: dict[int, tuple[dict[str, str], dict[str, str]]] = {}
        #: per seed, the config its tasks run with: the grid's, with ``seed`` set to it
        self.seed_configs: dict[int, GridConfig] = {
            s: replace(config, seed=s, seeds=[]) for s in config.seed_list}
        self.valid: ValidGrid | None = None
        self.store: Store | None = None
        self.started = ""
        #: tasks whose stored result this run reused instead of recomputing
        self.reused = 0
        #: per sharded attack task (key): its shards' keys in sample order, and whether it
        #: is a preset's member (whose robust masks the next member reads) and nested
        self.sharded: dict[str, _ShardedTask] = {}
        #: keys of the jobs this run executed (tasks and shards), in the order they ended
        self.ran: list[str] = []

    def validate(self) -> ValidGrid:
        """Resolve every name and check every parameter before any work starts."""
        from robench.jobs import task_threads

        cfg = self.config
        self.valid = validate(cfg, self.context)
        self.executor = self.host.build("executor", cfg.executor,
                                        **cfg.plugin_params("executor", cfg.executor))
        #: torch threads per task: 1 unless asked (the numbers depend on it)
        self.threads = task_threads(self.executor)
        self.plans = model_plans(cfg, self.valid.stages, fingerprints(self.context.host))
        self.seed_keys = {
            seed: ({p.name: train_key(c, p, self.threads) for p in self.plans},
                   {p.name: model_key(c, p, self.threads) for p in self.plans})
            for seed, c in self.seed_configs.items()}
        self.train_keys, self.model_keys = self.seed_keys[cfg.seed_list[0]]
        return self.valid

    def units(self) -> list[tuple[ModelPlan, int]]:
        """Every model of the grid at every seed, seed by seed (the first seed's models
        first, so a grid that grows a seed keeps its order)."""
        return [(plan, seed) for seed in self.seed_configs for plan in self.plans]

    def _seed_label(self, seed: int, inside: str = "") -> str:
        """`` [source, seed 1]`` in a job's label when the grid has several seeds; the label
        of a one-seed grid is as it always was (`` [source]``, or nothing for training)."""
        parts = [p for p in (inside, f"seed {seed}" if len(self.seed_configs) > 1 else "")
                 if p]
        return f" [{', '.join(parts)}]" if parts else ""

    @property
    def device(self) -> str:
        return self.valid.device if self.valid else ""

    # ------------------------------------------------------------------ jobs

    def jobs(self) -> tuple[dict[tuple[str, int], Job], dict[tuple[str, int], list[Job]]]:
        """Per model and seed, its training job and the clean and attack jobs that follow
        it.  A seed's jobs are those of a one-seed grid of that seed: same keys."""
        valid = self.valid
        assert valid is not None, "validate() first"
        run_dir = str(self.run_dir)
        resources = {"gpus": 1} if valid.device.startswith("cuda") else {}
        train: dict[tuple[str, int], Job] = {}
        evaluations: dict[tuple[str, int], list[Job]] = {}
        from robench.data import subset_indices

        self.sharded = {}
        # how many samples each dataset's evaluated subset has: what the shards split
        sizes = {dataset: len(subset_indices(len(bundle.test), self.config.limit))
                 for dataset, bundle in valid.bundles.items()}
        # plugins registered as Python objects exist only in this process: its tasks too
        portable = self.context.recipe.portable
        for plan, seed in self.units():
            cfg = self.seed_configs[seed]
            config_dict = asdict(cfg)
            unit = (plan.name, seed)
            key = self.seed_keys[seed][0][plan.name]
            evaluated = self.seed_keys[seed][1][plan.name]
            base = {"context": self.context, "run_dir": run_dir, "config": config_dict,
                    "plan": asdict(plan)}
            if plan.complete:  # loading does not depend on the seed: one task for all
                train[unit] = Job(
                    key=key, task="load", label=f"load {plan.name}", fn=load_task,
                    resources=resources, produces=model_files(key)[1:], portable=portable,
                    kwargs={**base, "key": key, "device": valid.device})
            else:
                train[unit] = Job(
                    key=key, task="train", label=f"train {plan.name}{self._seed_label(seed)}",
                    fn=train_task,
                    resources=resources, produces=model_files(key), portable=portable,
                    kwargs={**base, "key": key, "device": valid.device})
            needs = model_files(key)[1:] if plan.complete else model_files(key)
            jobs = evaluations[unit] = []
            for domain, dataset in domains(cfg):
                common = {**base, "model_key": key, "dataset": dataset, "device": valid.device}
                ckey = clean_key(cfg, evaluated, domain, dataset, self.threads)
                jobs.append(Job(
                    key=ckey, task="clean",
                    label=f"clean {plan.name}{self._seed_label(seed, domain)}",
                    fn=clean_task, resources=resources, after=(key,), needs=needs,
                    portable=portable,
                    produces=(_relative(examples_mod.task_file("", ckey)),)
                    if domain == "source" else (),
                    kwargs={**common, "key": ckey, "domain": domain,
                            "with_class_images": domain == "source"}))
                keys = {name: attack_key(cfg, attack, evaluated, domain, dataset, self.threads)
                        for name, attack in valid.attacks.items()}
                n = sizes[dataset]
                ranges = shard_ranges(n, resolve_shard_size(cfg.shard_size, n))
                for name, attack in valid.attacks.items():
                    akey = keys[name]
                    # a preset's member runs on what the member before it left robust, shard
                    # by shard
                    prior = keys[attack.prior] if attack.prior else ""
                    shard_keys = [shard_key(akey, a, b, n) for a, b in ranges]
                    if len(ranges) > 1:
                        self.sharded[akey] = _ShardedTask(
                            keys=tuple(shard_keys), preset=bool(attack.preset),
                            label=f"{name} on {plan.name}{self._seed_label(seed, domain)}",
                            nested=attack.threat not in ("corruption", "none"))
                    for i, ((start, stop), skey) in enumerate(zip(ranges, shard_keys,
                                                                  strict=True)):
                        where = domain if len(ranges) == 1 else \
                            f"{domain}, shard {i + 1}/{len(ranges)}"
                        prior_shard = shard_key(prior, start, stop, n) if prior else ""
                        jobs.append(Job(
                            key=skey, task="attack",
                            label=f"{name} on {plan.name}{self._seed_label(seed, where)}",
                            fn=attack_task, resources=resources,
                            after=(key, prior_shard) if prior else (key,),
                            needs=needs + ((self._prior_masks(prior, prior_shard),)
                                           if prior else ()),
                            portable=portable,
                            produces=(_relative(examples_mod.task_file("", skey)),) + (
                                (_relative(masks_file("", skey)),) if attack.preset else ()),
                            kwargs={**common, "key": skey, "attack": asdict(attack),
                                    "prior_key": prior, "start": start, "stop": stop}))
        return train, evaluations

    def _prior_masks(self, prior: str, prior_shard: str) -> str:
        """The masks file a preset member's shard reads (relative to the run folder): the
        previous member's for the same shard, or its task's when that task is already in
        the store (merged, or run unsharded by an earlier robench)."""
        done = self.store is not None and self.store.status(prior) == "ok"
        return _relative(masks_file("", prior if done else prior_shard))

    def _task_of(self, key: str) -> str | None:
        """The sharded task a job key is a shard of (None: a task of its own)."""
        task, dot, _ = key.rpartition(".")
        return task if dot and task in self.sharded else None

    def _settle(self, task: str) -> None:
        """Store sharded attack task ``task`` from its shards once every one is in: merge
        their payloads, pool their examples, write its masks for a preset's next member.
        Until then a failed shard marks the task failed (retried, shard by shard, by the
        next run)."""
        from robench.shards import masks_of, merge_payloads

        shards = self.sharded[task]
        if self.store.status(task) == "ok":
            return
        statuses = [self.store.status(k) for k in shards.keys]
        if all(status == "ok" for status in statuses):
            payload = merge_payloads([self.store.get(k) for k in shards.keys])
            examples_mod.merge_task_examples(self.run_dir, task, shards.keys,
                                             nested=shards.nested)
            if shards.preset:
                import io

                import numpy as np

                from robench.io import atomic_write_bytes

                eps, robust = masks_of(payload)
                buffer = io.BytesIO()
                np.savez_compressed(buffer, eps=eps, robust=robust)
                atomic_write_bytes(masks_file(self.run_dir, task), buffer.getvalue())
            self.store.put(task, kind="attack", label=shards.label, status="ok",
                           payload=payload)
            return
        failed = [k for k, status in zip(shards.keys, statuses, strict=True)
                  if status == "failed"]
        if failed:
            error = (self.store.get(failed[0]) or {}).get("error", "a shard failed")
            if len(failed) < len(shards.keys):
                error += (f" ({len(failed)} of {len(shards.keys)} shards failed; the others "
                          f"are stored, and a rerun runs only the failed ones)")
            self.store.put(task, kind="attack", label=shards.label, status="failed",
                           payload={"error": error})

    def _drop_shard_files(self) -> None:
        """The shards' example and mask files of every merged task: the task's own files
        hold what they held (kept while the task is unfinished: its next run needs them)."""
        for task, shards in self.sharded.items():
            if self.store.status(task) != "ok":
                continue
            for key in shards.keys:
                examples_mod.task_file(self.run_dir, key).unlink(missing_ok=True)
                masks_file(self.run_dir, key).unlink(missing_ok=True)

    def run(self) -> pd.DataFrame:
        self.validate()
        cfg = self.config
        if cfg.fresh:
            for name in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm"):
                (self.run_dir / name).unlink(missing_ok=True)
        self.store = Store(self.run_dir / "results.sqlite")
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        executor = self.executor
        train, evaluations = self.jobs()
        for task in self.sharded:  # a run stopped between a task's last shard and its merge
            self._settle(task)

        def done(key: str) -> bool:
            task = self._task_of(key)
            return self.store.status(key) == "ok" or (
                task is not None and self.store.status(task) == "ok")

        def pending(jobs: Iterable[Job]) -> list[Job]:
            # two models may share one training (an inference defense wraps the model
            # trained without it): each task runs once
            unique = {j.key: j for j in jobs}
            return [j for j in unique.values() if not done(j.key)]

        units = [(plan.name, seed) for plan, seed in self.units()]
        # tasks, not shards: a sharded task counts once, when it is complete
        every = {self._task_of(j.key) or j.key
                 for unit in units for j in [train[unit], *evaluations[unit]]}
        self.reused = sum(self.store.status(k) == "ok" for k in every)
        if self.reused and self.progress and self.console is not None:
            self.console.print(
                f"robench: {self.reused} of {len(every)} tasks reused from the store "
                f"({self.run_dir / 'results.sqlite'}); --fresh recomputes them.",
                markup=False, highlight=False)

        spec, _ = self.host.resolve("executor", cfg.executor)
        if spec.supports_dependencies:
            # one call: each model's evaluations follow its training, and start as soon
            # as it succeeds (on a cluster, while other models still train)
            self._execute(executor, pending(
                job for unit in units for job in [train[unit], *evaluations[unit]]), "grid")
        else:  # an executor that ignores Job.after: training first, then evaluation
            self._execute(executor, pending(train.values()), "training")
            self._execute(executor, pending(
                job for unit in units if self.store.status(train[unit].key) == "ok"
                for job in evaluations[unit]), "evaluation")
        self._drop_shard_files()
        results = self.results()
        self.write_outputs(results)
        # the decoded subsets validation left for the tasks (file-backed datasets): every
        # run validates, and so decodes, again
        shutil.rmtree(self.run_dir / "subsets", ignore_errors=True)
        return results

    def _execute(self, executor: Any, jobs: list[Job], phase: str) -> None:
        if not jobs:
            return
        by_key = {j.key: j for j in jobs}
        # asked first: the executor decides how many jobs run at once when given them
        outcomes = executor.run(jobs)
        workers = getattr(executor, "parallelism", None)
        last = time.monotonic()
        with ProgressDisplay(self.progress, jobs, phase, self.console, workers,
                             threads=self.threads) as display:
            for outcome in outcomes:
                job = by_key[outcome.key]
                now = time.monotonic()
                # a job's own time where it ran; else the time between two finishes times
                # the jobs run at once
                seconds = (outcome.seconds if outcome.seconds is not None
                           else (now - last) * (workers or 1))
                last = now
                if outcome.skipped:  # its model did not train: not stored, retried next time
                    display.advance(f"{job.label} (skipped: its model did not train)", True)
                    continue
                self.ran.append(job.key)
                if outcome.ok:
                    self.store.put(job.key, kind=job.task, label=job.label, status="ok",
                                   payload=outcome.result or {})
                else:
                    self.failures.append(f"{job.label}: {outcome.error}")
                    self.store.put(job.key, kind=job.task, label=job.label, status="failed",
                                   payload={"error": outcome.error,
                                            "traceback": outcome.traceback})
                if (task := self._task_of(job.key)) is not None:
                    self._settle(task)
                display.advance(job.label, outcome.ok, job.task, seconds)

    # ------------------------------------------------------------------ outputs

    def results(self) -> pd.DataFrame:
        """The results table, derived from the store alone."""
        import pandas as pd

        from robench.tabulate import tabulate

        # one table per seed, flagged on its own (a flag compares rows of one trained model)
        tables = [tabulate(cfg, self.store, self.plans, *self.seed_keys[seed],
                           self.valid.attacks, self.device, self.threads)
                  for seed, cfg in self.seed_configs.items()]
        #: the first seed's diagnostics
        self.diagnostics = tables[0].diagnostics
        if len(tables) == 1:
            return tables[0].results
        return pd.concat([t.results for t in tables], ignore_index=True)

    def provenance(self) -> dict[str, Any]:
        import torch

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
            "threads_per_task": self.threads, "driver_threads": torch.get_num_threads(),
            "seed": self.config.seed, "seeds": self.config.seed_list,
            "git_revision": git_revision(), "started": self.started,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv, "failures": self.failures, "host": platform.node(),
            "pid": os.getpid(), "datasets": self.dataset_provenance(),
            "plugin_fingerprints": sorted({p for plan in self.plans for p in plan.plugins}),
        }

    def dataset_provenance(self) -> dict[str, Any]:
        """Per dataset: what its plugin says of it (source, split, file hash), the images it
        serves (``input``: ``1x28x28 grey``) and a hash of the evaluated subset, so numbers from two machines can be checked to be comparable."""
        from robench.data import subset_indices

        out = {}
        for dataset, bundle in (self.valid.bundles.items() if self.valid else ()):
            out[dataset] = {"info": dict(bundle.info),
                            "input": bundle.input_format,
                            "evaluated": len(subset_indices(len(bundle.test),
                                                            self.config.limit)),
                            "subset_sha256": self.valid.subset_sha256[dataset]}
        return out

    def write_outputs(self, results: pd.DataFrame) -> None:
        from robench.leaderboard import report_context, write_reports

        provenance = self.provenance()
        atomic_write_text(self.run_dir / "run.json", json.dumps(provenance, indent=2,
                                                                default=str))
        atomic_write_text(self.run_dir / "results.csv", results.to_csv(index=False))
        self.write_examples()
        write_reports(results, self.run_dir, report_context(self.run_dir, provenance),
                      reporters=self.config.reporters,
                      params=self.config.params.get("reporter", {}), host=self.host)

    def write_examples(self, results: pd.DataFrame | None = None) -> None:
        """``examples/<model>__<domain>.npz`` for the reports, from the tasks' own files (of
        the first seed, when the grid has several): the attack behind the headline at the
        headline eps where it kept examples, else the first candidate of
        :func:`robench.examples.example_choices` that did.  ``results`` is the run's table
        (derived from the store when not given)."""
        import pandas as pd

        from robench.leaderboard import headline_attacks, main_eps, main_eps_by_threat

        cfg, valid = self.seed_configs[self.config.seed_list[0]], self.valid
        assert valid is not None and self.store is not None
        if results is None:
            results = self.results()
        if "seed" in results:  # the examples are the first seed's: so is their headline
            results = results[pd.to_numeric(results["seed"], errors="coerce") == cfg.seed]
        ranking = headline_attacks(results)
        mains = {threat: eps for threat, (eps, _label) in main_eps_by_threat(results).items()}
        for attack in valid.attacks.values():  # a threat without rows (every task failed)
            if attack.threat not in mains and any(e > 0 for e in cfg.eps_values(attack.threat)):
                mains[attack.threat] = main_eps(attack.threat, cfg.eps_values(attack.threat))
        order = sorted(valid.attacks, key=lambda name: _example_rank(valid.attacks[name]))
        for plan in self.plans:
            if self.store.status(self.train_keys[plan.name]) != "ok":
                continue
            key = self.model_keys[plan.name]
            for domain, dataset in domains(cfg):
                if self.store.status(clean_key(cfg, key, domain, dataset, self.threads)) != "ok":
                    continue
                keys = {name: attack_key(cfg, attack, key, domain, dataset, self.threads)
                        for name, attack in valid.attacks.items()}
                candidates = []
                for name in order:
                    chain, member = [keys[name]], valid.attacks[name]
                    while member.prior:  # a preset's member counts the members before it
                        chain.append(keys[member.prior])
                        member = valid.attacks[member.prior]
                    candidates.append(examples_mod.AttackExamples(
                        name=name, threat=valid.attacks[name].threat,
                        eps=tuple(cfg.eps_values(valid.attacks[name].threat)),
                        keys=tuple(chain)))
                ranked = ranking.loc[(ranking["model"] == plan.name)
                                     & (ranking["domain"] == domain)
                                     & (ranking["dataset"] == dataset), "attack"]
                choices = examples_mod.example_choices(candidates, ranked=list(ranked),
                                                       main_eps=mains)
                bundle = valid.bundles[dataset]
                examples_mod.assemble(
                    self.run_dir, model=plan.name, domain=domain, dataset=dataset,
                    class_names=[str(c) for c in bundle.class_names] or
                    [str(i) for i in range(bundle.num_classes)],
                    class_images_key=clean_key(cfg, key, "source", cfg.dataset, self.threads),
                    choices=choices,
                    headline=choices[0] if choices and choices[0].role == "headline" else None)


@dataclass(frozen=True)
class _ShardedTask:
    """An attack task run as several shards (see :mod:`robench.shards`)."""

    keys: tuple[str, ...]
    preset: bool
    label: str
    nested: bool


def _relative(path: Path) -> str:
    return path.as_posix()


def _example_rank(attack: Any) -> int:
    """The order of the fallbacks when the headline attack kept no example (see
    :meth:`Grid.write_examples`): white-box gradient attacks first, their examples are the
    instructive ones; baselines (noise, corruptions) last."""
    if attack.threat in ("corruption", "none") or attack.name == "noise":
        return 2
    return 1 if attack.black_box else 0


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
               host: PluginHost | None = None) -> Any:
    """The exact model a run evaluated: eval mode, images in [0, 1] -> logits."""
    from robench.loading import check_loadable, load_trained

    run_dir = Path(run_dir)
    # a run folder can hold several models of one name (a config changed between runs):
    # the most recently written one is the last run's
    metas = sorted(check_loadable(run_dir), key=lambda m: (
        run_dir / model_files(m["key"])[1]).stat().st_mtime)
    named = {m["plan"]["name"]: m for m in metas}
    if model not in named:
        close = closest(model, named)
        raise UsageError(
            f"Run {str(run_dir)!r} has no model {model!r}."
            + (f" Did you mean {', '.join(repr(c) for c in close)}?" if close else "")
            + f" Its models: {', '.join(sorted(named)) or '(none)'} (the model column of its "
            f"results.csv).")
    meta = named[model]
    if not meta.get("complete") and not (run_dir / model_files(meta["key"])[0]).exists():
        raise UsageError(f"Model {model!r} of {str(run_dir)!r} has no weights file "
                         f"({model_files(meta['key'])[0]}); rerun the grid to train it.")
    return load_trained(run_dir, meta, device, host or PluginHost.create())
