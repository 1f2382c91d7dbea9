"""The Ray executor: every grid job becomes a Ray task; outcomes stream back as tasks finish.

The driver calls :meth:`RayExecutor.run` once with the whole grid, each model's training job
followed by its clean and attack jobs (``Job.after``).  The executor keeps as many tasks
submitted as the cluster runs at once and fills each free slot with the first job, in that
order, whose dependencies have succeeded, so a trained model is evaluated ahead of the next
models' training.  Outcomes are yielded in the order they finish (``ray.wait``).  Workers
never touch the store; they write trained weights into the run folder, which every worker
and the driver must see at the same path (one machine, or a shared file system).

A Ray instance this executor started itself (no ``address``, no ``$RAY_ADDRESS``) lives as
long as the executor: it serves every `run` call of a grid and is shut down by :meth:`close`,
when the executor is garbage-collected, or at interpreter exit.  A Ray session that was
already initialised in this process (a notebook, a test) is used as it is and left running.

Ray itself is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import tempfile
import warnings
import weakref
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Annotated, Any

import robench
from robench import Job, JobOutcome
from robench.io import atomic_write_bytes
from robench.jobs import DEFAULT_THREADS_PER_TASK, Dependencies, pin_threads

#: the oldest Ray this executor is tested against (pyproject's ``ray`` extra)
MIN_RAY_VERSION = "2.9"
#: environment variables that choose plugins; forwarded to workers so they load the same ones
FORWARDED_ENV: tuple[str, ...] = ("ROBENCH_PLUGINS", "ROBENCH_DISABLE_PLUGINS")


# --------------------------------------------------------------------------- worker side


def run_job(job: Job, *, threads: int) -> JobOutcome:
    """Run one job in a Ray worker with ``threads`` torch threads, pinned before it starts
    (a Ray worker process serves many tasks; each pins its own count).

    A worker process imports robench afresh and builds its plugin host from the installed
    entry points.  ``Job.execute`` turns an exception into a failed outcome; what it cannot
    catch (the process dying) the driver side turns into one.
    """
    pin_threads(threads)
    return job.execute()


def local_run_dir(run_id: str) -> str:
    """The run folder of a worker that does not share the driver's: one per run and node."""
    return os.path.join(tempfile.gettempdir(), f"robench-ray-{run_id}")


def run_job_shipping(job: Job, *, threads: int, run_id: str,
                     inputs: dict[str, bytes]) -> tuple[JobOutcome, dict[str, bytes]]:
    """Run one job in a worker that does not share the run folder.

    The job runs in :func:`local_run_dir`; the files it ``needs`` arrive as ``inputs``
    (through Ray's object store) and are written there first, and the files it ``produces``
    go back with its outcome, for the driver to keep and ship to the jobs that need them.
    """
    run_dir = local_run_dir(run_id)
    for relative, data in inputs.items():
        target = os.path.join(run_dir, relative)
        if not os.path.exists(target):
            atomic_write_bytes(target, data)  # a job beside this one never sees half a file
    job = dataclasses.replace(job, kwargs={**job.kwargs, "run_dir": run_dir})
    outcome = run_job(job, threads=threads)
    produced: dict[str, bytes] = {}
    if outcome.ok:
        for relative in job.produces:
            with open(os.path.join(run_dir, relative), "rb") as handle:
                produced[relative] = handle.read()
    return outcome, produced


# --------------------------------------------------------------------------- driver side


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _fraction_or_whole(value: float) -> bool:
    return value <= 1 or value % 1 == 0


def _non_blank(value: str) -> bool:
    return bool(value.strip())


# The ``[executor.ray]`` options as the factory and the executor declare them, checked by
# robench's one validator (``robench.checked``; the host checks them the same way).
Address = Annotated[str | None, robench.Check(
    test=_non_blank, rule='a Ray address such as "auto", "HOST:6379" or "ray://HOST:10001", '
                          'or left out')]
Cpus = Annotated[int | None, robench.Check(ge=1)]
Gpus = Annotated[int | None, robench.Check(ge=0)]
CpusPerTask = Annotated[float, robench.Check(gt=0)]
GpusPerTask = Annotated[float | None, robench.Check(
    ge=0, test=_fraction_or_whole,
    rule="a number >= 0, a fraction up to 1 or a whole number of GPUs (Ray's rule), or left "
         "out")]
Retries = Annotated[int, robench.Check(ge=-1, means="-1: without limit")]
InFlight = Annotated[int | None, robench.Check(ge=1)]
Threads = Annotated[int, robench.Check(ge=1)]


def _machine_cpus() -> int:
    """CPUs this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _shutdown_ray() -> None:
    """Finaliser of an executor that initialised Ray: disconnect, stopping a local instance."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # interpreter shutdown: Ray may already be half torn down
        pass


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failed(job: Job, error: str, detail: str = "") -> JobOutcome:
    return JobOutcome(key=job.key, ok=False, result=None, error=error,
                      traceback=_ANSI.sub("", detail))


def _summary(exc: BaseException) -> str:
    """``Type: first line`` of an exception: Ray's messages run to many lines."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if "No module named" in text:
        text += (" (every plugin a grid uses must be installed on every Ray worker; plugins "
                 "registered from Python exist only in the driver)")
    return text


class RayExecutor:
    """Runs grid jobs as Ray tasks and yields their outcomes as they finish.

    It honours ``Job.after`` (``supports_dependencies``): the driver hands it the whole grid
    at once, and each model's evaluations start as soon as that model is trained.

    Keyword-only options, all from the ``[executor.ray]`` table:

    ``address``
        The Ray cluster to join: ``"auto"`` (the cluster this node belongs to, or
        ``$RAY_ADDRESS``), ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` (Ray client).  Left out,
        ``$RAY_ADDRESS`` is joined when set, else a local Ray instance is started.
    ``num_cpus``, ``num_gpus``
        Size of a local instance (default: every CPU of this machine, the GPUs Ray
        detects).  A cluster has its own size, so these are refused together with an address.
    ``cpus_per_task``
        CPUs each task reserves, fractions allowed.  Ray only counts them: the torch
        threads a task runs with are ``threads_per_task``.
    ``threads_per_task``
        Torch intra-op threads of each task, pinned in the worker before the job runs
        (default 1, as the ``local`` executor: the thread count changes a training's sums,
        so the same setting gives the same numbers on every executor).  Keep it at most
        ``cpus_per_task``, or tasks compete for their CPUs.
    ``gpus_per_task``
        GPUs a job that needs a GPU reserves (the driver marks every job so when the run's
        device is CUDA); fractions share one GPU between tasks.  Default 1.  Jobs of a CPU
        run never reserve a GPU.
    ``max_retries``
        How often Ray reruns a task whose worker process died (-1: without limit).  An
        exception inside a job is never retried: it is a failed outcome.
    ``log_to_driver``
        Forward the workers' stdout and stderr to this terminal.
    ``max_in_flight``
        Tasks submitted to Ray at a time.  Default: as many as the cluster can run at once
        (its CPUs over ``cpus_per_task``, and its GPUs over ``gpus_per_task`` for GPU jobs),
        so that Ray's first-in-first-out queue never holds the later models' training ahead
        of a trained model's evaluations.  Raise it on an autoscaling cluster, which grows
        only when tasks wait.
    ``shared_run_dir``
        Whether every worker sees the driver's run folder at the same path (default true:
        one machine, or a shared file system).  False: workers run in a folder of their own
        node (:func:`local_run_dir`), a trained model's files come back to the driver through
        Ray's object store, and the driver ships them to the tasks that evaluate the model.

    ``ray_version`` is the installed Ray's version, checked against :data:`MIN_RAY_VERSION`
    (the plugin's factory passes it; it is not a config key).
    """

    supports_dependencies = True

    @robench.checked("[executor.ray]")
    def __init__(
        self,
        *,
        address: Address = None,
        num_cpus: Cpus = None,
        num_gpus: Gpus = None,
        cpus_per_task: CpusPerTask = 1.0,
        gpus_per_task: GpusPerTask = None,
        max_retries: Retries = 0,
        log_to_driver: bool = False,
        max_in_flight: InFlight = None,
        shared_run_dir: bool = True,
        threads_per_task: Threads = DEFAULT_THREADS_PER_TASK,
        ray_version: str = "",
    ) -> None:
        if address is not None and (num_cpus is not None or num_gpus is not None):
            raise robench.UsageError(
                f"[executor.ray] num_cpus and num_gpus size a local Ray instance, but address "
                f"= {address!r} joins a cluster, which has the size its nodes were started with "
                f"(`ray start --num-cpus N --num-gpus N`). Drop num_cpus/num_gpus, or drop "
                f"address to start a local instance."
            )
        if ray_version and _version_tuple(ray_version) < _version_tuple(MIN_RAY_VERSION):
            raise robench.UsageError(
                f"The ray executor needs Ray >= {MIN_RAY_VERSION}, and Ray {ray_version} is "
                f"installed. Upgrade it with `pip install -U 'ray>={MIN_RAY_VERSION}'`."
            )
        self.address = address.strip() if address is not None else None
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.cpus_per_task = float(cpus_per_task)
        self.gpus_per_task = None if gpus_per_task is None else float(gpus_per_task)
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.shared_run_dir = shared_run_dir
        self.threads_per_task = threads_per_task
        self._shipping: Any = None
        self.log_to_driver = log_to_driver
        #: whether this executor started a local Ray instance (rather than joining one)
        self.started_local = False
        self._finalizer: weakref.finalize | None = None
        self._remote: Any = None

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def _ray() -> ModuleType:
        try:
            import ray
        except ImportError:
            raise robench.UsageError(
                "The ray executor needs Ray: `pip install robench[ray]` (or `pip install ray`)."
            ) from None
        return ray

    def connect(self) -> None:
        """Make sure this process is attached to Ray, starting a local instance if asked.

        Idempotent: a Ray session that is already initialised (by this executor between the
        calls of a grid, or by the caller) is used as it is.
        """
        ray = self._ray()
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        common: dict[str, Any] = {"log_to_driver": self.log_to_driver,
                                  "logging_level": logging.ERROR, "configure_logging": True}
        if address is None:
            num_cpus = self.num_cpus if self.num_cpus is not None else _machine_cpus()
            if self.cpus_per_task > num_cpus:
                raise robench.UsageError(
                    f"[executor.ray] cpus_per_task = {self.cpus_per_task:g} is more than the "
                    f"{num_cpus} CPU(s) of the local Ray instance; no task could ever start. "
                    f"Lower cpus_per_task or raise num_cpus."
                )
            ray.init(address="local", num_cpus=num_cpus, num_gpus=self.num_gpus,
                     include_dashboard=False, **common)
            self.started_local = True
        else:
            if self.num_cpus is not None or self.num_gpus is not None:
                raise robench.UsageError(
                    f"[executor.ray] num_cpus and num_gpus size a local Ray instance, but "
                    f"RAY_ADDRESS={address!r} joins a cluster. Unset RAY_ADDRESS or drop them."
                )
            try:
                ray.init(address=address, **common)
            except (ConnectionError, ValueError, TimeoutError, RuntimeError) as exc:
                raise robench.UsageError(
                    f"Could not join the Ray cluster at address {address!r}: "
                    f"{_summary(exc).rstrip('.')}. "
                    f"Start one (`ray start --head` on the head node), check the address "
                    f"(`ray status` prints it), or leave address unset to start a local Ray "
                    f"instance. A cluster with token authentication also needs "
                    f"RAY_AUTH_MODE=token and its token here."
                ) from None
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown_ray)

    def close(self) -> None:
        """Disconnect from Ray if this executor connected; a local instance it started stops.

        A Ray session the caller initialised is left alone.  Safe to call more than once.
        """
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.started_local = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ tasks

    def gpus_for(self, job: Job) -> float:
        """GPUs the task of ``job`` reserves: none unless the job needs a GPU."""
        wanted = float(job.resources.get("gpus", 0) or 0)
        if wanted <= 0:
            return 0.0
        return wanted if self.gpus_per_task is None else self.gpus_per_task

    def task_options(self, job: Job) -> dict[str, Any]:
        """The ``.options(...)`` of the Ray task that runs ``job``."""
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_task, "num_gpus": self.gpus_for(job),
            "max_retries": self.max_retries, "retry_exceptions": False,
            "name": job.label or job.key,
        }
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        if env:
            options["runtime_env"] = {"env_vars": env}
        return options

    def prepare(self, job: Job) -> Job:
        """The job as a worker must see it.

        The run folder becomes an absolute path (a worker's working directory is not the
        driver's), and ``cuda:N`` becomes ``cuda``: Ray hands each task its own GPU(s) through
        ``CUDA_VISIBLE_DEVICES``, where the assigned GPU is always number 0.
        """
        kwargs = dict(job.kwargs)
        run_dir = kwargs.get("run_dir")
        if isinstance(run_dir, str) and run_dir:
            kwargs["run_dir"] = os.path.abspath(run_dir)
        device = kwargs.get("device")
        if self.gpus_for(job) > 0 and isinstance(device, str) and device.startswith("cuda:"):
            kwargs["device"] = "cuda"
        return dataclasses.replace(job, kwargs=kwargs)

    def _check_requests(self, jobs: list[Job]) -> None:
        """Refuse GPU jobs that would reserve no GPU (before Ray starts)."""
        if self.gpus_per_task == 0 and any(
                float(job.resources.get("gpus", 0) or 0) > 0 for job in jobs):
            raise robench.UsageError(
                "[executor.ray] gpus_per_task = 0, but the run's device is CUDA: Ray hides "
                "every GPU from a task that reserves none, so the jobs could not use the "
                "device. Drop gpus_per_task (or give a fraction such as 0.5), or run with "
                "--device cpu."
            )

    def _check_feasible(self, ray: ModuleType, jobs: list[Job]) -> None:
        """Refuse requests no node can ever meet, instead of waiting on them forever."""
        gpu_jobs = [job for job in jobs if self.gpus_for(job) > 0]
        total = ray.cluster_resources()
        problems = []
        if self.cpus_per_task > total.get("CPU", 0):
            problems.append(f"{self.cpus_per_task:g} CPU(s) per task, and the cluster has "
                            f"{total.get('CPU', 0):g}")
        need_gpus = max((self.gpus_for(job) for job in gpu_jobs), default=0.0)
        if need_gpus > total.get("GPU", 0):
            problems.append(f"{need_gpus:g} GPU(s) per task, and the cluster has "
                            f"{total.get('GPU', 0):g}")
        if not problems:
            return
        message = f"The Ray tasks would reserve {'; '.join(problems)}."
        if self.started_local:
            raise robench.UsageError(
                f"{message} Lower cpus_per_task / gpus_per_task in [executor.ray], give the "
                f"local instance more (num_cpus, num_gpus), or run with --device cpu."
            )
        warnings.warn(f"{message} They wait until nodes that can run them join the cluster.",
                      RuntimeWarning, stacklevel=3)

    def slots(self, ray: ModuleType, jobs: list[Job]) -> int:
        """Tasks to keep submitted: ``max_in_flight``, else what the cluster runs at once."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        total = ray.cluster_resources()
        slots = math.floor(total.get("CPU", 0) / self.cpus_per_task + 1e-9)
        gpus = max((self.gpus_for(job) for job in jobs), default=0.0)
        if gpus > 0:
            slots = min(slots, math.floor(total.get("GPU", 0) / gpus + 1e-9))
        return max(1, slots)

    def _collect(self, ray: ModuleType, ref: Any, job: Job) -> JobOutcome:
        """The outcome of a finished task; a task that died becomes a failed outcome."""
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # the task failed outside Job.execute: typically the job could not be unpickled
            # on the worker (the module of its function is not installed there)
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            return _failed(job, f"ray task failed: {_summary(cause)}", str(exc))
        except ray.exceptions.RayError as exc:
            # WorkerCrashedError, TaskCancelledError, NodeDiedError, OutOfMemoryError, ...
            return _failed(job, f"ray worker lost: {_summary(exc)}", str(exc))
        if isinstance(outcome, tuple) and len(outcome) == 2:  # run_job_shipping
            outcome, produced = outcome
            if isinstance(outcome, JobOutcome) and outcome.ok:
                try:
                    self._keep(job, produced)
                except OSError as exc:
                    return _failed(job, f"could not write the job's files in the run folder: "
                                        f"{_summary(exc)}")
        if not isinstance(outcome, JobOutcome) or outcome.key != job.key:
            return _failed(job, f"ray task returned {type(outcome).__name__}, not the "
                                f"outcome of job {job.key}")
        if not outcome.ok and outcome.error.startswith("UnknownNameError"):
            # the worker's plugin host is built from the entry points installed there
            return dataclasses.replace(outcome, error=(
                f"{outcome.error} (raised on a Ray worker, which sees only the plugins "
                f"installed there through entry points)"))
        return outcome

    # ------------------------------------------------------------------ run folder

    @staticmethod
    def _run_dir(job: Job) -> str:
        return os.path.abspath(str(job.kwargs.get("run_dir", ".")))

    def _keep(self, job: Job, produced: dict[str, bytes]) -> None:
        """Write the files a job produced on its worker into the driver's run folder."""
        run_dir = self._run_dir(job)
        for relative, data in produced.items():
            atomic_write_bytes(os.path.join(run_dir, relative), data)

    def _submit(self, ray: ModuleType, job: Job, threads: int,
                inputs: dict[tuple[str, ...], Any]) -> Any:
        """Submit ``job``; without a shared run folder, with the files it needs."""
        options = self.task_options(job)
        if self.shared_run_dir:
            return self._remote.options(**options).remote(self.prepare(job), threads=threads)
        run_dir = self._run_dir(job)
        if job.needs not in inputs:  # one copy in the object store per model
            files = {}
            for relative in job.needs:
                with open(os.path.join(run_dir, relative), "rb") as handle:
                    files[relative] = handle.read()
            inputs[job.needs] = ray.put(files)
        run_id = hashlib.sha256(run_dir.encode()).hexdigest()[:16]
        return self._shipping.options(**options).remote(
            self.prepare(job), threads=threads, run_id=run_id, inputs=inputs[job.needs])

    def run(self, jobs: Iterable[Job]) -> Iterator[JobOutcome]:
        """Submit jobs as Ray tasks and yield one outcome per job as each finishes.

        A job is submitted once every job in its ``after`` has succeeded (an attack task as
        soon as its model is trained, while other models still train); a job whose
        dependency failed is skipped.  Stopping early (the driver interrupted, the generator
        closed) cancels the tasks that have not finished.
        """
        jobs = list(jobs)
        if not jobs:
            return
        self._check_requests(jobs)
        ray = self._ray()
        self.connect()
        self._check_feasible(ray, jobs)
        if self._remote is None:
            self._remote = ray.remote(run_job)
            self._shipping = ray.remote(run_job_shipping)
        threads = self.threads_per_task
        waiting = Dependencies(jobs)
        pending: dict[Any, Job] = {}
        inputs: dict[tuple[str, ...], Any] = {}
        try:
            while waiting or pending:
                slots = self.slots(ray, jobs)
                while len(pending) < slots and (job := waiting.next_ready()) is not None:
                    try:
                        ref = self._submit(ray, job, threads, inputs)
                    except Exception as exc:  # e.g. a job that cannot be pickled
                        outcome = _failed(job, f"ray could not submit the job: {_summary(exc)}")
                        yield outcome
                        yield from waiting.finished(outcome)
                        continue
                    pending[ref] = job
                if not pending:  # defensive: Dependencies refuses cycles, so never reached
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    outcome = self._collect(ray, ref, pending.pop(ref))
                    yield outcome
                    yield from waiting.finished(outcome)
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished, or Ray is going down
                    pass
