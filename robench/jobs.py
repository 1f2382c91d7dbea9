"""Jobs: the unit an executor runs.  A job is a picklable top-level function plus keyword
arguments, so the same job runs in-process, in a subprocess or on a Ray worker."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

_progress_callback: Callable[[str, int, int], None] | None = None


def set_progress_callback(callback: Callable[[str, int, int], None] | None) -> None:
    """Where in-process jobs report fine-grained progress (training steps, attack batches)."""
    global _progress_callback
    _progress_callback = callback


def report_progress(label: str, done: int, total: int) -> None:
    if _progress_callback is not None:
        _progress_callback(label, done, total)


@dataclass
class Job:
    key: str
    kind: str  # "train" or "attack" (or "clean")
    label: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: resources a cluster executor may request (e.g. {"gpus": 1})
    resources: dict[str, float] = field(default_factory=dict)
    #: keys of jobs that must finish successfully before this one starts (an attack job
    #: waits for its model's training job); keys not among the jobs of the same ``run``
    #: call are already done
    after: tuple[str, ...] = ()

    def execute(self) -> JobOutcome:
        """Run the job; an exception becomes a failed outcome (Ctrl-C still stops the run)."""
        try:
            return JobOutcome(key=self.key, ok=True, result=self.fn(**self.kwargs))
        except Exception as exc:
            return JobOutcome(
                key=self.key, ok=False, result=None,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
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


class Dependencies:
    """Which jobs of one ``run`` call may start, for executors that honour ``Job.after``.

    ``next_ready()`` gives the first job, in the order given, whose dependencies have all
    succeeded; ``ready()`` all of them.  ``finished(outcome)`` records an outcome and returns
    the outcomes of the jobs it makes impossible: every job depending on a failed one,
    directly or not, is skipped.
    """

    def __init__(self, jobs: Iterable[Job]) -> None:
        self.waiting: dict[str, Job] = {job.key: job for job in jobs}
        self.blockers = {key: {k for k in job.after if k in self.waiting and k != key}
                         for key, job in self.waiting.items()}

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def next_ready(self) -> Job | None:
        for key, job in self.waiting.items():
            if not self.blockers[key]:
                del self.waiting[key]
                return job
        return None

    def ready(self) -> list[Job]:
        jobs = [job for key, job in self.waiting.items() if not self.blockers[key]]
        for job in jobs:
            del self.waiting[job.key]
        return jobs

    def finished(self, outcome: JobOutcome) -> list[JobOutcome]:
        if outcome.ok:
            for blockers in self.blockers.values():
                blockers.discard(outcome.key)
            return []
        skipped: list[JobOutcome] = []
        failed = [(outcome.key, outcome.key)]  # (failed key, the job that failed at the root)
        while failed:
            key, root = failed.pop()
            for other, blockers in self.blockers.items():
                if key in blockers and other in self.waiting:
                    del self.waiting[other]
                    skipped.append(JobOutcome(key=other, ok=False, result=None, skipped=True,
                                              error=f"skipped: job {root} failed"))
                    failed.append((other, root))
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
