"""The ``local`` executor: jobs run one after another in this process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import robench
from robench.jobs import Dependencies, Job, JobOutcome


class LocalExecutor:
    """In-process, one job at a time: the first job, in the order given, whose dependencies
    have succeeded.  The driver lists each model's training before its evaluations, so a
    model is evaluated as soon as it is trained, and its results arrive before the next
    model trains."""

    supports_dependencies = True

    def run(self, jobs: Iterable[Job]) -> Iterator[JobOutcome]:
        waiting = Dependencies(jobs)
        while (job := waiting.next_ready()) is not None:
            outcome = job.execute()
            yield outcome
            yield from waiting.finished(outcome)


def local() -> LocalExecutor:
    return LocalExecutor()


@robench.hookimpl
def robench_register_executors() -> list[robench.ExecutorSpec]:
    return [robench.ExecutorSpec(name="local", factory=local,
                                 description="run every job in this process, each model "
                                             "evaluated right after it trains")]
