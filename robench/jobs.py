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


class Executor(Protocol):
    def run(self, jobs: Iterable[Job]) -> Iterator[JobOutcome]:
        """Run jobs, yielding outcomes as they finish (in any order)."""
        ...
