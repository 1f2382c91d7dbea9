"""Progress of a running grid.

First a header: how many tasks, on how many workers, with how many torch threads each.  In a
terminal, then one line redrawn in place that fits the terminal's width (80 columns
included): a bar, tasks done of all, the task in flight (attack, model with its defense,
domain) and the time left (:mod:`robench.eta`).  What gives way when the line is too long is
the task's description, never the counts or the time: a preset's member loses its preset's
name, the model its middle parts (``digits-cnn+…+pgd-at`` keeps the backbone and the
defense), and only then is the text cut.  When the output is not a terminal (CI, nohup, a
log file): one timestamped line when a task starts and when it ends (with the time left),
and a heartbeat line every :data:`HEARTBEAT_SECONDS` while a task runs, so a log never sits
still for minutes without saying why.
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from robench.eta import TimeLeft, Work, work_of
from robench.jobs import set_progress_callback

__all__ = ["HEARTBEAT_SECONDS", "ProgressDisplay", "TimeLeft", "describe", "status_line"]

#: seconds between two "still running" lines of one task in a log
HEARTBEAT_SECONDS = 60.0
#: the bar's width in columns: at least, and at most
_BAR = (8, 30)
#: seconds between two computations of the time left on a terminal's line
_ESTIMATE_EVERY = 1.0
_ELLIPSIS = "…"
#: a shard's job label ends ``[source, shard 2/8]``
_SHARD = re.compile(r", shard \d+/\d+\]$")


def _now() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _short_clock(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above."""
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return _clock(seconds)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------- the line


def describe(work: Work, width: int | None = None) -> str:
    """What ``work`` does, in at most ``width`` characters (None: no limit).

    Shortened step by step, most dispensable first: a preset member's preset
    (``autoattack-fast/apgd-t`` -> ``apgd-t``); then the model name's parts between the
    first (the backbone) and the last (the defense) one by one, the backbone itself cut short
    before each goes (``digits-cnn+linear+dann+trades`` -> ``digits-cnn+…+dann+trades`` ->
    ``digits-cnn+…+trades``); then the domain; and last a plain cut."""
    verb = work.attack if work.task == "attack" else work.task
    parts = work.model.split("+") if work.model else []
    joiner = " on " if work.task == "attack" else " "

    def text(verb: str, model: str, domain: str) -> str:
        return f"{verb}{joiner}{model}{domain}" if model else f"{verb}{domain}"

    domain = f" [{work.domain}]" if work.domain else ""
    full = text(verb, work.model, domain)
    if width is None or len(full) <= width:
        return full
    verb = verb.rsplit("/", 1)[-1]
    for shown in ([domain, ""] if domain else [""]):
        if len(parts) <= 1:
            candidate = text(verb, work.model, shown)
            if len(candidate) <= width:
                return candidate
            continue
        first, rest = parts[0], parts[1:]
        tails = [rest] + [[_ELLIPSIS, *rest[k:]] for k in range(1, len(rest))]
        for tail in tails:
            for head in (first, None):
                if head is None:  # the backbone cut to what is left, if enough is
                    room = width - len(text(verb, "+".join(["", *tail]), shown))
                    if room < 7:
                        continue
                    head = first[:room - 1] + _ELLIPSIS
                candidate = text(verb, "+".join([head, *tail]), shown)
                if len(candidate) <= width:
                    return candidate
        candidate = text(verb, f"{_ELLIPSIS}+{parts[-1]}", shown)
        if len(candidate) <= width:
            return candidate
    last = text(verb, f"{_ELLIPSIS}+{parts[-1]}" if len(parts) > 1 else work.model, "")
    return last[:max(0, width - 1)] + _ELLIPSIS if width > 0 else ""


def status_line(width: int, *, done: int, total: int, running: Sequence[Work],
                left: float | None, elapsed: float) -> tuple[str, int]:
    """The terminal's progress line, at most ``width`` characters, and how many of them
    the bar takes (it comes first, drawn by the caller in its place).

    Always whole: the counts (``23/66``) and the time (``3:12 left``, ``0:41 so far``
    before the first estimate, ``done in 7:29`` at the end).  The bar takes what is left up
    to :data:`_BAR`, the task in flight the rest (shortened by :func:`describe`), with
    ``+N`` when N more run beside it."""
    counts = f"{done}/{total}"
    if done >= total:
        clock = f"done in {_short_clock(elapsed)}"
    elif left is None:
        clock = f"{_short_clock(elapsed)} so far"
    else:
        clock = f"~{_short_clock(left)} left"
    base = len(counts) + 2 + len(clock)
    if width < base:  # not even the counts and the time fit: the time gives way
        return f"{counts}  {clock}"[:max(0, width)], 0
    bar = _BAR[0] if width - base - 1 >= _BAR[0] else 0
    what = ""
    if running and done < total:
        more = f" +{len(running) - 1}" if len(running) > 1 else ""
        space = width - base - (bar + 1 if bar else 0) - 2 - len(more)
        if space >= 8:
            what = describe(running[-1], space) + more
    used = base + (bar + 1 if bar else 0) + (2 + len(what) if what else 0)
    if bar:
        bar += min(width - used, _BAR[1] - bar)
    text = f"{counts}  {what}  {clock}" if what else f"{counts}  {clock}"
    return (" " * (bar + 1) + text if bar else text), bar


class _Line:
    """The renderable a rich ``Live`` redraws: the display's line at the console's width."""

    def __init__(self, display: ProgressDisplay) -> None:
        self.display = display

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        width = max(1, options.max_width - 1)  # the last column makes some terminals wrap
        text, bar = self.display.line(width)
        line = Text(no_wrap=True, overflow="crop")
        if bar:
            done, total = self.display.done, max(1, self.display.total)
            full = min(bar, round(bar * done / total))
            line.append("━" * full, style="green")
            line.append("━" * (bar - full), style="grey35")
            line.append(text[bar:])
        else:
            line.append(text)
        yield line


# --------------------------------------------------------------------------- the display


class ProgressDisplay:
    """Progress over ``jobs`` (:class:`robench.jobs.Job`) run on ``workers`` at once (None:
    not known) with ``threads`` torch threads each; in a log, a heartbeat line every
    ``heartbeat`` seconds while a task runs."""

    def __init__(self, enabled: bool, jobs: Sequence[Any], phase: str, console: Any,
                 workers: int | None = None, *, threads: int | None = None,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.enabled = enabled
        self.heartbeat = heartbeat
        self.total = len(jobs)
        #: jobs that are shards of an attack task (counted, and timed, one by one)
        self.shards = sum(bool(_SHARD.search(str(getattr(job, "label", "")))) for job in jobs)
        self.phase = phase
        self.console = console
        self.workers = workers
        self.threads = threads
        self.done = 0
        self.works = [work_of(job) for job in jobs]
        self.by_label = {job.label: work for job, work in zip(jobs, self.works, strict=True)}
        self.time_left = TimeLeft(self.works, workers)
        #: progress label -> (job label, when it started, when it last said so in a log)
        self.started: dict[str, tuple[str, float, float]] = {}
        self.begun = time.monotonic()
        self.terminal = False
        self.lock = threading.Lock()
        self._left: tuple[float, float | None] = (-_ESTIMATE_EVERY, None)
        self.live: Any = None

    def header(self) -> str:
        """``66 tasks on 2 workers, 1 torch thread each``; with shards ``402 jobs (320 of
        them attack shards) on ...``: the counts and the time left are per job."""
        where = (f"on {_plural(self.workers, 'worker')}" if self.workers
                 else "on the executor's workers")
        threads = f", {_plural(self.threads, 'torch thread')} each" if self.threads else ""
        phase = "" if self.phase == "grid" else f"{self.phase}: "
        count = _plural(self.total, "task") if not self.shards else (
            f"{_plural(self.total, 'job')} ({self.shards} of them attack shards)")
        return f"robench: {phase}{count} {where}{threads}"

    def __enter__(self) -> ProgressDisplay:
        if not self.enabled:
            return self
        from rich.console import Console

        self.out = self.console if self.console is not None else Console(stderr=True)
        self.terminal = bool(self.out.is_terminal)
        self.out.print(self.header(), markup=False, highlight=False, soft_wrap=True)
        set_progress_callback(self.on_progress)
        if self.terminal:
            from rich.live import Live

            self.live = Live(_Line(self), console=self.out, refresh_per_second=4,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
            self.live.start()
        return self

    # ------------------------------------------------------------------ state

    def _left_now(self, now: float) -> float | None:
        """The time left, computed at most every :data:`_ESTIMATE_EVERY` seconds and
        counted down in between."""
        computed, left = self._left
        if now - computed >= _ESTIMATE_EVERY:
            left = self.time_left.estimate(now)
            self._left = (now, left)
            return left
        return None if left is None else max(0.0, left - (now - computed))

    def line(self, width: int) -> tuple[str, int]:
        with self.lock:
            now = time.monotonic()
            running = [self.by_label[label] for label, _, _ in
                       sorted(self.started.values(), key=lambda s: s[1])
                       if label in self.by_label]
            return status_line(width, done=self.done, total=self.total, running=running,
                               left=self._left_now(now), elapsed=now - self.begun)

    def _job_of(self, label: str) -> str | None:
        """The job label a task's progress label belongs to.  An attack reports
        ``fgsm on MODEL`` without its domain: the first of its domains still running or
        not started is taken."""
        if label in self.by_label:
            return label
        finished = self.time_left.ended
        for job_label, work in self.by_label.items():
            if job_label.startswith(label + " [") and work.key not in finished:
                return job_label
        return None

    def on_progress(self, label: str, done: int, total: int) -> None:
        """A running task's step: its start and steps feed the estimate; in a log, start
        and heartbeat lines."""
        now = time.monotonic()
        line = None
        with self.lock:
            if label not in self.started:
                job = self._job_of(label) or label
                self.started[label] = (job, now, now)
                line = f"start {job}"
            job, since, beat = self.started[label]
            work = self.by_label.get(job)
            if work is not None:
                self.time_left.progressed(work.key, done, total, now)
            if line is None and not self.terminal and now - beat >= self.heartbeat:
                self.started[label] = (job, since, now)
                line = f"running {job}: {done}/{total} after {_clock(now - since)}"
        if line is not None and not self.terminal:
            self._line(line)

    def _line(self, text: str) -> None:
        self.out.print(f"{_now()} {text}", markup=False, highlight=False, soft_wrap=True)

    def advance(self, label: str, ok: bool, task: str = "", seconds: float | None = None
                ) -> None:
        """The task ``label`` ended (``seconds``: how long it ran, when known).  ``task`` is
        kept for callers written before the estimate knew every job."""
        del task
        if not self.enabled:
            return
        now = time.monotonic()
        with self.lock:
            self.done += 1
            work = self.by_label.get(label) or next(
                (w for lab, w in self.by_label.items() if label.startswith(lab + " ")), None)
            for progress, (job, _, _) in list(self.started.items()):
                if job == label or (work is not None and self.by_label.get(job) is work):
                    self.started.pop(progress)
            if work is not None:
                self.time_left.finished(work.key, seconds)
            self._left = (-_ESTIMATE_EVERY, None)
            left = self._left_now(now)
        if self.terminal:
            if not ok:
                self.out.print(f"failed: {label}", markup=False, highlight=False)
            self.live.refresh()
            return
        took = f" in {_clock(seconds)}" if seconds is not None else ""
        after = f", about {_clock(left)} left" if left is not None and self.done < self.total \
            else ""
        self._line(f"{'done' if ok else 'FAILED'} {self.phase} {self.done}/{self.total}: "
                   f"{label}{took}{after}")

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            set_progress_callback(None)
            if self.live is not None:
                self.live.refresh()
                self.live.stop()
