"""How long a running grid has left.

A grid's tasks differ in cost by orders of magnitude, and not by their type alone: APGD-T on
an adversarially trained model runs for minutes where FGSM on a standard model takes a
fraction of a second, because the cascade attacks only the samples still robust.  A mean per
task type (what the estimate used to be) is dominated by the cheap attacks that finish
first, and then climbs every time an expensive one finishes: on ``examples/robust-mnist.toml``
it said 4:00 left at 1:01 and 7:41 left at 3:30, for a run of 7:29.

So each unfinished task is predicted from the finished task most like it: the same attack
on the same domain, run on the model whose finished tasks (its training, its other attacks)
took the most similar times, which picks an adversarially trained model for an
adversarially trained one without knowing what a defense is; that time is scaled by how
much longer the attacks both models finished took on this one.  Tasks with nothing like
them finished yet borrow, in turn, the same attack on another domain, the same model's other
tasks, the same task type, or anything.  The predicted tasks are then laid out on the
executor's workers in the order it starts them, after the tasks they depend on, and behind
the tasks in flight: the time left is when the last one ends, so a long attack that will run
alone at the end counts as long, not as a share of the workers.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: seconds added to both durations before comparing two models on their log ratio, so that
#: tasks that took next to nothing (an attack left with no sample to attack) do not decide
#: which models are alike
_FLOOR = 0.5
#: models whose mean log ratio is within this of the nearest one count as equally near
_TIE = 0.1
#: tasks whose steps take about equal times, so that the share of steps done says how far
#: they are: a training's batches.  An attack's steps are batches of the eps cascade, whose
#: first eps attacks every sample and whose last only the few still robust (on
#: robust-mnist, APGD-T's first of six batches took 57% of its time): its steps are not used
_EVEN_STEPS = frozenset({"train"})
#: a task still running after its predicted duration is expected to need at least this
#: share of the time it has run so far (it is longer than predicted, by how much is unknown)
_OVERDUE = 0.5


@dataclass(frozen=True)
class Work:
    """What the estimate knows of one task: what it is (``task``: train, load, clean or
    attack; the ``attack`` and ``domain`` of an evaluation), the ``model`` it works on and
    the ``traits`` that made that model (defense, adaptor, backbone, head, complete model),
    and the tasks it waits for (``after``)."""

    key: str
    task: str
    model: str = ""
    domain: str = ""
    attack: str = ""
    traits: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    @property
    def kind(self) -> tuple[str, str, str]:
        """Tasks of one kind do the same work on different models."""
        return (self.task, self.attack, self.domain)


def work_of(job: Any) -> Work:
    """The :class:`Work` of a grid job (:class:`robench.jobs.Job`), from the arguments the
    grid gives its task functions: ``plan`` (a :class:`robench.planning.ModelPlan` as a
    dict), ``domain`` and ``attack`` (an :class:`robench.planning.AttackPlan` as a dict)."""
    kwargs: Mapping[str, Any] = job.kwargs
    plan: Mapping[str, Any] = kwargs.get("plan") or {}
    attack: Mapping[str, Any] = kwargs.get("attack") or {}
    traits = tuple(str(plan.get(name) or "") for name in
                   ("defense", "adaptor", "backbone", "head", "model"))
    return Work(key=job.key, task=job.task, model=str(plan.get("name", "")),
                domain=str(kwargs.get("domain", "")), attack=str(attack.get("name", "")),
                traits=traits, after=tuple(job.after))


class TimeLeft:
    """The time left of ``works`` run on ``workers`` at once (None: as many as were seen
    running at once), in the order given (an executor starts the first task that may start).

    Tell it when a task ``started`` (when known) and ``finished``; ``estimate(now)`` is
    None until a task has finished."""

    def __init__(self, works: Iterable[Work], workers: int | None = None) -> None:
        self.works: dict[str, Work] = {}
        for work in works:
            self.works.setdefault(work.key, work)
        self.position = {key: i for i, key in enumerate(self.works)}
        self.traits = {w.model: w.traits for w in self.works.values()}
        self.workers = workers
        #: tasks that ended, and how long those that ran took
        self.ended: set[str] = set()
        self.took: dict[str, float] = {}
        self.since: dict[str, float] = {}
        #: share of its steps each task in flight reported done
        self.share: dict[str, float] = {}
        #: per kind of task, per model: how long it took
        self.by_kind: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
        #: per model: how long each kind of task took on it
        self.by_model: dict[str, dict[tuple[str, str, str], float]] = defaultdict(dict)
        self.most_at_once = 1
        #: predictions made since the last task finished (only a finish changes them)
        self.predicted: dict[str, float | None] = {}

    # ------------------------------------------------------------------ events

    def started(self, key: str, now: float) -> None:
        if key in self.works and key not in self.ended:
            self.since.setdefault(key, now)
            self.most_at_once = max(self.most_at_once, len(self.since))

    def progressed(self, key: str, done: int, total: int, now: float) -> None:
        """The task ``key`` reported ``done`` of its ``total`` steps (it has started)."""
        if key in self.works and key not in self.ended:
            self.started(key, now)
            if total > 0 and self.works[key].task in _EVEN_STEPS:
                self.share[key] = min(1.0, max(0.0, done / total))

    def finished(self, key: str, seconds: float | None) -> None:
        """The task ``key`` ended after ``seconds`` (None: it did not run, e.g. skipped
        because a task it waits for failed; nothing is learnt from it)."""
        work = self.works.get(key)
        if work is None or key in self.ended:
            return
        self.ended.add(key)
        self.since.pop(key, None)
        self.share.pop(key, None)
        if seconds is None:
            return
        seconds = max(0.0, float(seconds))
        self.took[key] = seconds
        self.predicted.clear()
        self.by_kind[work.kind][work.model] = seconds
        self.by_model[work.model][work.kind] = seconds

    # ------------------------------------------------------------------ predictions

    def _log_ratios(self, model: str, other: str, task: str | None = None
                    ) -> list[tuple[float, float]]:
        """(weight, log ratio) of the times the same kinds of task (of type ``task`` when
        given) took on two models; the weight is the longer time (long tasks set the time
        left, short ones are mostly fixed costs), and both times have :data:`_FLOOR` added
        so that tasks left with nothing to do do not count as infinitely faster."""
        mine, theirs = self.by_model.get(model, {}), self.by_model.get(other, {})
        return [(max(mine[k], theirs[k]) + _FLOOR,
                 math.log((mine[k] + _FLOOR) / (theirs[k] + _FLOOR)))
                for k in mine.keys() & theirs.keys() if task is None or k[0] == task]

    def _distance(self, model: str, other: str) -> float:
        """How unlike two models are: the weighted mean absolute log ratio of the times of
        the tasks both finished (infinite when they share none)."""
        pairs = self._log_ratios(model, other)
        if not pairs:
            return math.inf
        return sum(w * abs(r) for w, r in pairs) / sum(w for w, _ in pairs)

    def _scale(self, model: str, other: str, task: str) -> float:
        """How much longer tasks of type ``task`` take on ``model`` than on ``other``, from
        those both finished (1 when they share none)."""
        pairs = self._log_ratios(model, other, task)
        if not pairs:
            return 1.0
        return math.exp(sum(w * r for w, r in pairs) / sum(w for w, _ in pairs))

    def _alike(self, work: Work, models: Iterable[str]) -> list[str]:
        """Of ``models``, the ones most like the model of ``work``: nearest by the times of
        the tasks both finished, then by the traits they share (the defense first)."""
        def shared_traits(other: str) -> float:
            pairs = zip(work.traits, self.traits.get(other, ()), strict=False)
            return sum(0.5 ** i for i, (a, b) in enumerate(pairs) if a == b)

        ranked = sorted((self._distance(work.model, m), -shared_traits(m), m) for m in models)
        best, best_traits, _ = ranked[0]
        if math.isinf(best):
            return [m for _, t, m in ranked if t == best_traits]
        return [m for d, _, m in ranked if d <= best + _TIE]

    def predict(self, key: str) -> float | None:
        """How long the task ``key`` takes: its own time once finished, else the time of the
        most alike finished task (see the module's docstring), None before any finished."""
        if key in self.took:
            return self.took[key]
        if key not in self.predicted:
            self.predicted[key] = self._predict(key)
        return self.predicted[key]

    def _predict(self, key: str) -> float | None:
        work = self.works[key]
        task, attack, domain = work.kind
        same_task = [k for k in self.by_kind if k[0] == task]
        levels: list[list[tuple[str, str, str]]] = [
            [work.kind],                                      # same attack, same domain
            [k for k in same_task if k[1] == attack],         # same attack, another domain
        ]
        own = [s for k, s in self.by_model.get(work.model, {}).items() if k[0] == task]
        for kinds in levels:
            found = {m: [self.by_kind[k][m] for k in kinds if m in self.by_kind.get(k, {})]
                     for k in kinds for m in self.by_kind.get(k, {})}
            if found:
                alike = self._alike(work, found)
                return _mean([_mean(found[m]) * self._scale(work.model, m, task)
                              for m in alike])
        if own:  # another attack on the same model
            return _mean(own)
        for pool in ([s for k in same_task for s in self.by_kind[k].values()],
                     list(self.took.values())):
            if pool:
                return _mean(pool)
        return None

    # ------------------------------------------------------------------ the estimate

    def estimate(self, now: float) -> float | None:
        """Seconds until the last task ends, or None before any task finished."""
        if not self.took:
            return None
        left = [key for key in self.works if key not in self.ended]
        if not left:
            return 0.0
        predicted = {key: self.predict(key) or 0.0 for key in left}
        workers = max(1, self.workers or self.most_at_once)
        running = sorted(self.since, key=self.position.__getitem__)[:workers]
        busy = {k: _remaining(predicted[k], now - self.since[k], self.share.get(k, 0.0))
                for k in running}
        return _makespan([self.works[k] for k in left], predicted, busy, workers,
                         self.position)


def _remaining(predicted: float, elapsed: float, share: float) -> float:
    """Seconds left of a task in flight for ``elapsed`` seconds, predicted to take
    ``predicted`` in all, that reported ``share`` of its steps done.

    Its steps say how far it is (``elapsed`` per ``share`` done); they take over from the
    prediction as they accumulate, and entirely once the task outlived the prediction (which
    is then known to be wrong).  Without steps, a task that outlived its prediction is
    expected to run on for :data:`_OVERDUE` of the time it ran."""
    by_steps = elapsed * (1 - share) / share if share > 0 else None
    if elapsed >= predicted:
        return by_steps if by_steps is not None else _OVERDUE * elapsed
    if by_steps is None:
        return predicted - elapsed
    return (1 - share) * (predicted - elapsed) + share * by_steps


def _makespan(unfinished: list[Work], predicted: Mapping[str, float],
              busy: Mapping[str, float], workers: int, position: Mapping[str, int]) -> float:
    """When the last of ``unfinished`` ends: those in ``busy`` end after the seconds it gives,
    the others start in ``position`` order as soon as a worker is free and the tasks they
    wait for ended."""
    keys = {w.key for w in unfinished}
    waits = {w.key: {k for k in w.after if k in keys and k != w.key} for w in unfinished}
    dependents: dict[str, list[str]] = defaultdict(list)
    for key, before in waits.items():
        for other in before:
            dependents[other].append(key)
    events = [(seconds, position[key], key) for key, seconds in busy.items()]
    heapq.heapify(events)
    idle = workers - len(busy)
    ready = [position[k] for k, before in waits.items() if not before and k not in busy]
    heapq.heapify(ready)
    by_position = {position[k]: k for k in keys}
    now = 0.0
    while True:
        while idle > 0 and ready:
            key = by_position[heapq.heappop(ready)]
            idle -= 1
            heapq.heappush(events, (now + predicted[key], position[key], key))
        if not events:
            return now
        now, _, key = heapq.heappop(events)
        idle += 1
        for other in dependents.get(key, ()):
            waits[other].discard(key)
            if not waits[other]:
                heapq.heappush(ready, position[other])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
