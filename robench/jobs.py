"""Jobs: the unit an executor runs.  A job is a picklable top-level function plus keyword
arguments, so the same job runs in-process, in a subprocess or on a Ray worker."""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: torch intra-op threads a task runs with unless its executor is told otherwise.  One
#: thread per task gives every machine and executor the same numbers (training reduces its
#: sums in an order that depends on the thread count), and parallelism comes from running
#: independent tasks side by side instead.
DEFAULT_THREADS_PER_TASK = 1


def usable_cpus(*, cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
                membership: str | None = None) -> int:
    """CPU cores this process may use: its affinity mask where the OS has one, capped by its
    cgroup's CPU quota rounded up (a container started with ``--cpus 2`` on a 64-core host
    sees 64 cores but may use 2; the arguments are those of :func:`cgroup_cpu_limit`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root, membership)
    return max(1, min(cores, math.ceil(limit))) if limit is not None else cores


def cgroup_cpu_limit(root: str | os.PathLike[str] = "/sys/fs/cgroup",
                     membership: str | None = None) -> float | None:
    """The CPUs per second the cgroup of this process may use (quota / period), or None when
    it has no quota or none can be read (not Linux, no cgroup file system).

    ``membership``: the text of ``/proc/self/cgroup`` (read when None).  cgroup v2 keeps the
    quota in ``cpu.max`` (``"max 100000"``: none; ``"200000 100000"``: 2 CPUs), v1 in
    ``cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us``.  Both the process's own
    cgroup folder and the mount's root (inside a container, the container's cgroup) are
    read; the smallest quota found applies, as the kernel applies every quota above a
    process.
    """
    root = Path(root)
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits: list[float] = []
    for line in membership.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2
            files = [(folder / "cpu.max", None) for folder in (root / relative, root)]
        elif "cpu" in controllers.split(","):
            mounts = dict.fromkeys([root / controllers, root / "cpu", root / "cpu,cpuacct"])
            files = [(folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us")
                     for mount in mounts for folder in (mount / relative, mount)]
        else:
            continue
        limits += [limit for quota, period in dict.fromkeys(files)
                   if (limit := _read_quota(quota, period)) is not None]
    return min(limits) if limits else None


def _read_quota(quota_file: Path, period_file: Path | None) -> float | None:
    """CPUs from a v2 ``cpu.max`` (``period_file`` None) or a v1 quota and period pair; None
    when unlimited, absent or unreadable."""
    try:
        if period_file is None:
            quota, _, period = quota_file.read_text().strip().partition(" ")
        else:
            quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        if quota in ("max", "-1", ""):
            return None
        cpus = int(quota) / int(period or 100000)
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 else None


def pin_threads(threads: int) -> None:
    """Run torch with ``threads`` intra-op threads, and as many inter-op threads where torch
    still allows it (once per process, before any inter-op work; otherwise left as it is:
    the inter-op count does not change any number)."""
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Intra-op threads pinned to ``threads`` inside the block, restored after it (for
    executors that run jobs in the caller's process)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def task_threads(executor: object | None = None) -> int:
    """The torch intra-op threads each task of ``executor`` runs with.

    An executor that pins them (``local``, ``ray``) says so in its ``threads_per_task``
    attribute; one that does not runs jobs with whatever threads its processes have, so the
    answer is this process's own count.  The grid records it in its provenance, and in the
    task keys when it is not 1, because the thread count changes the numbers.
    """
    threads = getattr(executor, "threads_per_task", None)
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        return threads
    import torch

    return torch.get_num_threads()


_progress_callback: Callable[[str, int, int], None] | None = None


def set_progress_callback(callback: Callable[[str, int, int], None] | None) -> None:
    """Where in-process jobs report fine-grained progress (training steps, attack batches)."""
    global _progress_callback
    _progress_callback = callback


def report_progress(label: str, done: int, total: int) -> None:
    """Report ``done`` of ``total`` steps of the job in flight.  In a worker process of an
    executor the callback forwards it to the driver, whose own callback shows it."""
    if _progress_callback is not None:
        _progress_callback(label, done, total)


@dataclass
class Job:
    key: str
    #: which of the grid's tasks the job runs: ``"train"``, ``"load"`` (a complete model),
    #: ``"clean"`` or ``"attack"`` (plugin kinds and attack kinds are other things)
    task: str
    label: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: resources a cluster executor may request (e.g. {"gpus": 1})
    resources: dict[str, float] = field(default_factory=dict)
    #: keys of jobs that must finish successfully before this one starts (an attack job
    #: waits for its model's training job); keys not among the jobs of the same ``run``
    #: call are already done
    after: tuple[str, ...] = ()
    #: files, relative to the run folder, that the job writes (``produces``) and reads
    #: (``needs``): an executor whose workers do not share the run folder ships them
    produces: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    #: False when the job can run only in the driver's process: it carries something that
    #: cannot be rebuilt in another one (a plugin host holding plugins registered as Python
    #: objects).  The ``local`` executor then runs the whole call in its own process.
    portable: bool = True

    @property
    def kind(self) -> str:
        """Deprecated name of :attr:`task` (robench 0.1); executors written for it still
        work, with a ``DeprecationWarning``."""
        import warnings

        warnings.warn("Job.kind is now Job.task ('kind' means plugin and attack kinds)",
                      DeprecationWarning, stacklevel=2)
        return self.task

    def execute(self) -> JobOutcome:
        """Run the job; an exception becomes a failed outcome (Ctrl-C still stops the run).
        The outcome carries the seconds it ran, timed where it ran."""
        start = time.perf_counter()
        try:
            return JobOutcome(key=self.key, ok=True, result=self.fn(**self.kwargs),
                              seconds=time.perf_counter() - start)
        except Exception as exc:
            return JobOutcome(
                key=self.key, ok=False, result=None,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(), seconds=time.perf_counter() - start,
            )


@dataclass
class JobOutcome:
    key: str
    ok: bool
    result: dict[str, Any] | None
    error: str = ""
    traceback: str = ""
    #: not run, because a job it depends on failed (the driver does not store it, so it
    #: runs when its dependency succeeds on a later invocation)
    skipped: bool = False
    #: seconds the job ran, timed by :meth:`Job.execute` where it ran (None: not known, e.g.
    #: a job whose worker died); the progress display's estimate learns from it
    seconds: float | None = None


class Dependencies:
    """Which jobs of one ``run`` call may start, for executors that honour ``Job.after``.

    ``next_ready()`` gives the first job, in the order given, whose dependencies have all
    succeeded; ``ready()`` all of them, in that order.  ``finished(outcome)`` records an
    outcome and returns the outcomes of the jobs it makes impossible: every job depending on
    a failed one, directly or not, is skipped.  Keys must be unique and the dependencies
    acyclic (``ValueError`` otherwise).  Every operation costs time in proportion to the jobs
    and dependencies it touches, so grids of many thousands of jobs stay cheap.
    """

    def __init__(self, jobs: Iterable[Job]) -> None:
        self.jobs: dict[str, Job] = {}
        for job in jobs:
            if job.key in self.jobs:
                raise ValueError(f"two jobs share the key {job.key!r}")
            self.jobs[job.key] = job
        self.order = list(self.jobs)
        self.position = {key: i for i, key in enumerate(self.order)}
        self.blockers = {key: {k for k in job.after if k in self.jobs and k != key}
                         for key, job in self.jobs.items()}
        self.dependents: dict[str, list[str]] = {key: [] for key in self.jobs}
        for key, blockers in self.blockers.items():
            for blocker in blockers:
                self.dependents[blocker].append(key)
        self._heap = [self.position[k] for k, b in self.blockers.items() if not b]
        heapq.heapify(self._heap)
        self._check_acyclic()

    def _check_acyclic(self) -> None:
        remaining = {key: len(blockers) for key, blockers in self.blockers.items()}
        free = [key for key, count in remaining.items() if count == 0]
        seen = 0
        while free:
            key = free.pop()
            seen += 1
            for other in self.dependents[key]:
                remaining[other] -= 1
                if remaining[other] == 0:
                    free.append(other)
        if seen < len(self.jobs):
            cycle = sorted(key for key, count in remaining.items() if count > 0)
            raise ValueError(f"the jobs {', '.join(cycle[:5])} depend on each other in a cycle")

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def next_ready(self) -> Job | None:
        while self._heap:
            key = self.order[heapq.heappop(self._heap)]
            if key in self.jobs:
                return self.jobs.pop(key)
        return None

    def ready(self) -> list[Job]:
        jobs = []
        while (job := self.next_ready()) is not None:
            jobs.append(job)
        return jobs

    def finished(self, outcome: JobOutcome) -> list[JobOutcome]:
        if outcome.ok:
            for other in self.dependents.get(outcome.key, ()):
                self.blockers[other].discard(outcome.key)
                if not self.blockers[other] and other in self.jobs:
                    heapq.heappush(self._heap, self.position[other])
            return []
        skipped: list[JobOutcome] = []
        failed = [outcome.key]
        while failed:
            key = failed.pop()
            for other in self.dependents.get(key, ()):
                if other in self.jobs:
                    del self.jobs[other]
                    skipped.append(JobOutcome(key=other, ok=False, result=None, skipped=True,
                                              error=f"skipped: job {outcome.key} failed"))
                    failed.append(other)
        return skipped


class Executor(Protocol):
    def run(self, jobs: Iterable[Job]) -> Iterator[JobOutcome]:
        """Run jobs, yielding outcomes as they finish (in any order).

        An executor whose class sets ``supports_dependencies = True`` receives the whole grid
        in one call and must start a job only after every job in its ``after`` succeeded
        (:class:`Dependencies` does the bookkeeping).  Otherwise the driver calls ``run``
        twice: the training jobs, then the evaluation jobs of the models that trained.
        """
        ...
