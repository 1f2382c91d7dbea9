"""The ``local`` executor: jobs run one after another in this process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import robench


class LocalExecutor:
    """In-process, in order.  The simplest thing that streams outcomes as jobs finish."""

    def run(self, jobs: Iterable) -> Iterator:
        for job in jobs:
            yield job.execute()


def local() -> LocalExecutor:
    return LocalExecutor()


@robench.hookimpl
def robench_register_executors() -> list[robench.ExecutorSpec]:
    return [robench.ExecutorSpec(name="local", factory=local,
                                 description="run every job in this process, in order")]
