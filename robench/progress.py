"""Progress of a running grid.

In a terminal: a rich bar over tasks, with an estimate of the time left from the tasks
finished so far *per task type* (``Job.task``: a training takes longer than an attack), and
one bar per task in flight that advances per training step or attack batch.  When the output
is not a terminal (CI, nohup, a log file): one timestamped line when a task starts and when it
ends, and a heartbeat line every :data:`HEARTBEAT_SECONDS` while a task runs, so a log never
sits still for minutes without saying why.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from robench.jobs import set_progress_callback

#: seconds between two "still running" lines of one task in a log
HEARTBEAT_SECONDS = 60.0


def _now() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TimeLeft:
    """The time left, from the mean duration of finished tasks of each type (``Job.task``:
    train, load, clean, attack).

    A type with no finished task yet borrows the mean over all finished tasks; with none
    finished at all there is no estimate.  ``parallel`` tasks run at once."""

    def __init__(self, tasks: Iterable[str], parallel: int = 1) -> None:
        self.remaining: dict[str, int] = defaultdict(int)
        for task in tasks:
            self.remaining[task] += 1
        self.spent: dict[str, list[float]] = defaultdict(list)
        self.parallel = max(1, parallel)

    def finished(self, task: str, seconds: float) -> None:
        self.remaining[task] = max(0, self.remaining[task] - 1)
        self.spent[task].append(seconds)

    def estimate(self) -> float | None:
        every = [s for values in self.spent.values() for s in values]
        if not every:
            return None
        overall = sum(every) / len(every)
        total = 0.0
        for task, count in self.remaining.items():
            values = self.spent.get(task)
            total += count * (sum(values) / len(values) if values else overall)
        return total / self.parallel


class ProgressDisplay:
    """Progress over ``jobs`` (objects with ``label`` and ``task``); in a log, a heartbeat
    line every ``heartbeat`` seconds while a task runs."""

    def __init__(self, enabled: bool, jobs: list[Any], phase: str, console: Any,
                 parallel: int = 1, *, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.enabled = enabled
        self.heartbeat = heartbeat
        self.total = len(jobs)
        self.phase = phase
        self.console = console
        self.done = 0
        self.time_left = TimeLeft((j.task for j in jobs), parallel)
        self.started: dict[str, float] = {}
        self.beat: dict[str, float] = {}
        self.begun = time.monotonic()
        self.terminal = False
        self.inner: dict[str, Any] = {}

    def __enter__(self) -> ProgressDisplay:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from robench.cli_text import plain

        self.plain = plain
        self.out = self.console if self.console is not None else Console(stderr=True)
        self.terminal = bool(self.out.is_terminal)
        set_progress_callback(self.on_progress)
        if not self.terminal:  # a log: lines only, no bar redrawn into it
            return self
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[clock]}"),
                            console=self.console, transient=False)
        self.bar.start()
        self.main = self.bar.add_task(plain(self.phase), total=self.total, clock="")
        self._tick()
        return self

    def _tick(self) -> None:
        elapsed = time.monotonic() - self.begun
        left = self.time_left.estimate()
        text = f"{_clock(elapsed)} elapsed, " + (
            f"about {_clock(left)} left" if left is not None else "time left: after a task")
        self.bar.update(self.main, clock=text)

    def on_progress(self, label: str, done: int, total: int) -> None:
        """A running task's step: a bar per task in a terminal, start and heartbeat lines
        in a log."""
        now = time.monotonic()
        if label not in self.started:
            self.started[label] = self.beat[label] = now
            if not self.terminal:
                self._line(f"start {label}")
        if self.terminal:
            if label not in self.inner:
                self.inner[label] = self.bar.add_task(f"  {self.plain(label)}", total=total,
                                                      clock="")
            self.bar.update(self.inner[label], completed=done, total=total)
            self._tick()
        elif now - self.beat[label] >= self.heartbeat:
            self.beat[label] = now
            self._line(f"running {label}: {done}/{total} after {_clock(now - self.started[label])}")

    def _line(self, text: str) -> None:
        self.out.print(f"{_now()} {text}", markup=False, highlight=False)

    def advance(self, label: str, ok: bool, task: str = "", seconds: float | None = None) -> None:
        if not self.enabled:
            return
        self.done += 1
        if seconds is not None:
            self.time_left.finished(task, seconds)
        for running in [k for k in self.started if label.startswith(k)]:
            self.started.pop(running)
        if self.terminal:
            self.bar.advance(self.main)
            for running in [k for k in self.inner if label.startswith(k)]:
                self.bar.remove_task(self.inner.pop(running))
            self._tick()
            if not ok:
                self.out.print(f"failed: {label}", markup=False, highlight=False)
            return
        took = f" in {_clock(seconds)}" if seconds is not None else ""
        self._line(f"{'done' if ok else 'FAILED'} {self.phase} {self.done}/{self.total}: "
                   f"{label}{took}")

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            set_progress_callback(None)
            if self.terminal:
                for task in self.inner.values():
                    self.bar.remove_task(task)
                self.bar.stop()
