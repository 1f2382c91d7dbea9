"""The ``local`` executor: jobs run side by side in worker processes of this machine.

Each task runs with ``threads_per_task`` torch threads (default 1), whatever the machine or
the executor, so a grid gives the same numbers everywhere; parallelism comes from running
independent tasks at once, one per worker.  ``workers = 1`` runs the jobs in this process,
one after another, as earlier versions did (threads pinned while they run).

When the workers fill every usable CPU core (the default), each worker is pinned to its own
cores (``pin_cores``).  This changes no number, only the speed on a shared machine: three
CPU-bound processes on two cores, left to the kernel, often settle with both workers on one
core and the other process alone on the other, so the grid gets one core instead of its
share; pinned, each worker keeps a core of its own, which it shares at most with the
neighbour that lands there.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Annotated

import robench
from robench import jobs as jobs_mod
from robench.jobs import Dependencies, Job, JobOutcome

#: ``[executor.local]`` options, checked by robench's one validator (``robench.checked``)
Workers = Annotated[int | None, robench.Check(
    ge=1, rule="an integer >= 1 or left out (one per usable CPU core, divided by "
               "threads_per_task)")]
Threads = Annotated[int, robench.Check(ge=1, means="torch threads of each task")]
PinCores = Annotated[bool | None, robench.Check(
    rule="true, false or left out (pin each worker to its own cores when the workers fill "
         "every usable CPU core)")]

#: the cores each worker runs on (None: wherever the kernel puts it), one entry per worker
Cores = list[tuple[int, ...] | None]


def _gpus_of(job: Job) -> float:
    return float(job.resources.get("gpus", 0) or 0)


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [part.strip() for part in listed.split(",") if part.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class LocalExecutor:
    """Runs jobs in ``workers`` processes of this machine (or in this process for 1).

    Each free worker takes the first job, in the order given, whose dependencies have
    succeeded: the driver lists each model's training before its evaluations, so a model is
    evaluated as soon as it is trained, while other workers train the next models.  The
    evaluations of a model whose training failed are skipped.  Outcomes are yielded as jobs
    finish, and the workers' progress reaches :func:`robench.jobs.report_progress` of this
    process.  A worker that dies (SIGKILL, a segfault, out of memory) fails only the job it
    ran, and a fresh worker takes its place.  Ctrl-C (or closing the generator) stops the
    workers; the outcomes already yielded are kept by the driver.

    On CUDA (jobs that ask for ``gpus``) there is one worker per visible GPU: worker ``i``
    sees only the ``i``-th GPU (``CUDA_VISIBLE_DEVICES``), so the run's device ``cuda`` is
    that GPU inside it.  ``workers`` then caps the number of GPUs used.  A job whose device
    names one GPU (``cuda:N``) runs in this process, on that GPU.

    A job that can run only in this process (``Job.portable`` false: the grid's plugins
    include Python objects that a worker process cannot rebuild) makes the whole call run in
    this process, with a warning; the numbers are the same, only the speed differs.
    """

    supports_dependencies = True

    @robench.checked("[executor.local]")
    def __init__(self, *, workers: Workers = None,
                 threads_per_task: Threads = jobs_mod.DEFAULT_THREADS_PER_TASK,
                 pin_cores: PinCores = None) -> None:
        if pin_cores and not hasattr(os, "sched_setaffinity"):
            raise robench.UsageError(
                f"[executor.local] pin_cores = true needs an operating system that lets a "
                f"process choose its CPU cores (Linux); {sys.platform} does not. Leave "
                f"pin_cores out, or set it to false.")
        self.workers = workers
        self.threads_per_task = threads_per_task
        self.pin_cores = pin_cores

    def worker_slots(self, jobs: list[Job], *, cpus: int | None = None) -> list[str | None]:
        """The GPU each worker sees (None: not restricted), one entry per worker to start.

        ``cpus``: the CPU cores shared out without ``workers`` (default: the ones this process
        may use, :func:`robench.jobs.usable_cpus`)."""
        if sys.platform == "win32":  # workers inherit their socket by descriptor (POSIX)
            return [None]
        gpu_jobs = [job for job in jobs if _gpus_of(job) > 0]
        if not gpu_jobs:
            cpus = jobs_mod.usable_cpus() if cpus is None else cpus
            count = self.workers or max(1, cpus // self.threads_per_task)
            return [None] * max(1, min(count, len(jobs)))
        devices = {str(job.kwargs.get("device", "cuda")) for job in gpu_jobs}
        if any(":" in device for device in devices):
            return [None]  # one named GPU: the jobs run in this process, on it
        gpus = visible_gpus()
        count = min(len(gpus), self.workers or len(gpus), len(jobs))
        if count <= 1:
            return [None]
        return gpus[:count]

    def worker_cores(self, slots: list[str | None], *,
                     cpus: list[int] | None = None) -> Cores:
        """The CPU cores each of the workers ``slots`` is pinned to (None: not pinned).

        ``cpus``: the cores this process may use (default: its affinity mask).  Left out,
        ``pin_cores`` pins CPU workers when they fill those cores exactly (workers x
        threads_per_task = usable cores): then no two workers share a core and no core is
        left to the kernel's placement.  A smaller pool (``workers`` set lower, or two runs
        each asked for part of a big machine) is not pinned, so that runs started side by
        side do not all crowd onto the first cores.  ``true`` pins in any case, wrapping
        round the cores when there are more workers than cores; ``false`` never pins.
        """
        count = len(slots)
        if self.pin_cores is False or count <= 1 or not hasattr(os, "sched_setaffinity"):
            return [None] * count
        if cpus is None:
            cpus = sorted(os.sched_getaffinity(0))
        threads = self.threads_per_task
        if self.pin_cores is None and (any(gpu is not None for gpu in slots)
                                       or count * threads != len(cpus)):
            return [None] * count
        return [tuple(sorted({cpus[(i * threads + k) % len(cpus)] for k in range(threads)}))
                for i in range(count)]

    #: jobs the latest :meth:`run` runs at once (its worker processes, 1 in this process),
    #: known as soon as ``run`` is called: the progress display shows it and plans with it
    parallelism: int = 1

    def run(self, jobs: Iterable[Job]) -> Iterator[JobOutcome]:
        """The outcomes of ``jobs``, as they finish.  How many run at once is decided here,
        before the first outcome is asked for (:attr:`parallelism`)."""
        jobs = list(jobs)
        slots = self.worker_slots(jobs) if jobs else [None]
        if len(slots) > 1 and not all(job.portable for job in jobs):
            warnings.warn(
                f"[executor.local] workers = {len(slots)}, but these jobs can run only in this "
                f"process (the grid uses plugins registered as Python objects, which worker "
                f"processes cannot rebuild): running them here, one at a time, with the same "
                f"{self.threads_per_task} thread(s) per task. Register the plugins as an "
                f"importable module or an entry point to use workers, or set workers = 1.",
                RuntimeWarning, stacklevel=2)
            slots = [None]
        self.parallelism = len(slots)
        return self._run(jobs, slots)

    def _run(self, jobs: list[Job], slots: list[str | None]) -> Iterator[JobOutcome]:
        if not jobs:
            return
        waiting = Dependencies(jobs)
        if len(slots) == 1:
            yield from self._in_process(waiting)
            return
        from robench_executors.pool import WorkerPool

        pool = WorkerPool(slots, threads=self.threads_per_task,
                          cores=self.worker_cores(slots), on_progress=jobs_mod.report_progress)
        yield from pool.run(waiting.next_ready, waiting.finished, lambda: bool(waiting))

    def _in_process(self, waiting: Dependencies) -> Iterator[JobOutcome]:
        while (job := waiting.next_ready()) is not None:
            with jobs_mod.pinned_threads(self.threads_per_task):
                outcome = job.execute()
            yield outcome
            yield from waiting.finished(outcome)


def local(*, workers: Workers = None,
          threads_per_task: Threads = jobs_mod.DEFAULT_THREADS_PER_TASK,
          pin_cores: PinCores = None) -> LocalExecutor:
    """Build the ``local`` executor; every parameter is a key of ``[executor.local]``.

    ``workers``: worker processes running jobs side by side (default: one per usable CPU
    core, divided by ``threads_per_task``; on CUDA, one per visible GPU); 1 runs every job
    in this process.  ``threads_per_task``: torch threads each job runs with (default 1,
    which gives the same numbers on every machine and executor).  ``pin_cores``: pin each
    worker process to its own CPU cores (default: when the workers fill every usable core;
    see :meth:`LocalExecutor.worker_cores`); it changes the speed on a shared machine, never
    a number.
    """
    return LocalExecutor(workers=workers, threads_per_task=threads_per_task,
                         pin_cores=pin_cores)


@robench.hookimpl
def robench_register_executors() -> list[robench.ExecutorSpec]:
    return [robench.ExecutorSpec(name="local", factory=local, supports_dependencies=True,
                                 description="run jobs in worker processes of this machine "
                                             "(one per CPU core, each pinned to its core, one "
                                             "torch thread each), each "
                                             "model evaluated right after it trains")]
