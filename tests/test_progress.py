"""The progress display (robench.progress) and its estimate of the time left (robench.eta).

The estimate is replayed on the task times of a recorded robust-mnist run (the committed
sample's results.csv as the issue saw it, kept in tests/data so that regenerating the sample
does not move the test): it holds each model's training time (``train_seconds``) and each
attack's time per eps (``seconds``), and a simulated executor runs those tasks in the grid's
order, on one to three workers, as the local executor does (the first task that may start,
starts)."""

from __future__ import annotations

import heapq
import io
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

import robench
from robench.eta import TimeLeft, Work
from robench.progress import ProgressDisplay, describe, status_line

ROBUST_MNIST = Path(__file__).resolve().parent / "data" / "robust-mnist-recorded.csv"
#: what a clean pass and a task's start-up take (results.csv does not record them)
CLEAN_SECONDS, TASK_OVERHEAD = 0.3, 0.2


# --------------------------------------------------------------------------- a recorded run


def recorded_tasks(results: Path) -> tuple[list[Work], dict[str, float]]:
    """The tasks of a run, in the grid's order (each model: training, then per domain the
    clean pass and the attacks, a preset's member after the one before it), and how long
    each took."""
    rows = pd.read_csv(results)
    works: list[Work] = []
    took: dict[str, float] = {}
    attacks = [a for a in dict.fromkeys(rows.attack) if a != "worst-case"]
    for model in dict.fromkeys(rows.model):
        mine = rows[rows.model == model]
        first = mine.iloc[0]
        traits = (first.defense, first.adaptor, first.backbone, first.head, "")
        train = f"train {model}"
        works.append(Work(train, "train", model, traits=traits))
        took[train] = float(first.train_seconds)
        for domain in dict.fromkeys(mine.domain):
            clean = f"clean {model} [{domain}]"
            works.append(Work(clean, "clean", model, domain, traits=traits, after=(train,)))
            took[clean] = CLEAN_SECONDS
            before = ""
            for attack in attacks:
                key = f"{attack} on {model} [{domain}]"
                prior = (before,) if "/" in attack and before.split("/")[0] == \
                    key.split("/")[0] else ()
                works.append(Work(key, "attack", model, domain, attack, traits,
                                  (train, *prior)))
                took[key] = TASK_OVERHEAD + float(
                    mine[(mine.domain == domain) & (mine.attack == attack)].seconds.sum())
                before = key
    return works, took


def run_on_workers(works: list[Work], took: dict[str, float], workers: int
                   ) -> list[tuple[float, bool, str]]:
    """(time, ended?, key) of every start and end, the tasks started as the local executor
    starts them: the first in order whose dependencies ended, as soon as a worker is free."""
    position = {w.key: i for i, w in enumerate(works)}
    waits = {w.key: set(w.after) for w in works}
    dependents: dict[str, list[str]] = {}
    for w in works:
        for before in w.after:
            dependents.setdefault(before, []).append(w.key)
    ready = [position[k] for k, before in waits.items() if not before]
    heapq.heapify(ready)
    running: list[tuple[float, int, str]] = []
    events, now, idle = [], 0.0, workers
    while True:
        while idle and ready:
            key = works[heapq.heappop(ready)].key
            idle -= 1
            events.append((now, False, key))
            heapq.heappush(running, (now + took[key], position[key], key))
        if not running:
            return events
        now, _, key = heapq.heappop(running)
        idle += 1
        events.append((now, True, key))
        for other in dependents.get(key, ()):
            waits[other].discard(key)
            if not waits[other]:
                heapq.heappush(ready, position[other])


def predicted_ends(works: list[Work], took: dict[str, float], workers: int
                   ) -> tuple[float, list[tuple[float, float]]]:
    """The run's length, and (time, predicted end) every second of its second half, the
    estimate told of every start and end as they happen."""
    events = run_on_workers(works, took, workers)
    total = events[-1][0]
    estimate = TimeLeft(works, workers)
    out, i, now = [], 0, 0.0
    while now < total:
        while i < len(events) and events[i][0] <= now:
            when, ended, key = events[i]
            if ended:
                estimate.finished(key, took[key])
            else:
                estimate.started(key, when)
            i += 1
        left = estimate.estimate(now)
        if now >= total / 2:
            assert left is not None
            out.append((now, now + left))
        now += 1.0
    return total, out


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_end_predicted_in_the_second_half_of_robust_mnist_stays_within_half(workers):
    works, took = recorded_tasks(ROBUST_MNIST)
    assert len(works) == 66
    total, ends = predicted_ends(works, took, workers)
    worst = max(abs(end - total) for _, end in ends) / total
    assert worst <= 0.5, (total, [e for e in ends if abs(e[1] - total) > total / 2][:5])
    # and it drifts little: earliest and latest predicted ends within 1.5x of each other
    assert max(e for _, e in ends) / min(e for _, e in ends) <= 1.5


def test_on_the_recorded_layout_two_workers_the_end_is_right_within_15_percent():
    # what the issue saw on this run (2 workers): 4:00 left at 1:01, 7:41 left at 3:30, for
    # a run of 7:29.  The estimate it used (a mean per task type of the time between two
    # finishes) misses the end by 20% in this replay; this one by under 10%
    works, took = recorded_tasks(ROBUST_MNIST)
    total, ends = predicted_ends(works, took, 2)
    assert 420 < total < 460  # the replay lasts what the recorded run lasted (449 s)
    assert max(abs(end - total) for _, end in ends) / total <= 0.15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bound_holds_when_every_task_time_is_off_by_up_to_a_third(seed):
    works, took = recorded_tasks(ROBUST_MNIST)
    rng = random.Random(seed)
    took = {k: v * rng.uniform(0.75, 1.33) for k, v in took.items()}
    total, ends = predicted_ends(works, took, 2)
    assert max(abs(end - total) for _, end in ends) / total <= 0.5


# --------------------------------------------------------------------------- the estimator


def _models(*names: str, attacks=("fgsm", "pgd", "apgd-t")) -> list[Work]:
    works = []
    for name in names:
        defense = name.split("+")[-1]
        works.append(Work(f"train {name}", "train", name, traits=(defense,)))
        works += [Work(f"{a} {name}", "attack", name, "source", a, (defense,),
                       (f"train {name}",)) for a in attacks]
    return works


def test_an_attack_is_predicted_from_the_model_whose_tasks_took_the_most_alike_times():
    left = TimeLeft(_models("cnn+none", "cnn+pgd-at", "cnn+trades"), workers=1)
    for key, seconds in {"train cnn+none": 7, "fgsm cnn+none": 0.3, "pgd cnn+none": 1.3,
                         "apgd-t cnn+none": 0.01, "train cnn+pgd-at": 48,
                         "fgsm cnn+pgd-at": 0.6, "pgd cnn+pgd-at": 8.3,
                         "apgd-t cnn+pgd-at": 122, "train cnn+trades": 59,
                         "fgsm cnn+trades": 0.6, "pgd cnn+trades": 6.7}.items():
        left.finished(key, seconds)
    # the trades model trained and was attacked in times like the PGD-AT model's, not the
    # standard one's: its APGD-T is about the PGD-AT model's (scaled by the PGD times), not
    # the 0.01 s of the standard model (which nothing was left to attack) nor their mean
    assert 80 < left.predict("apgd-t cnn+trades") < 122
    assert left.estimate(0.0) == pytest.approx(left.predict("apgd-t cnn+trades"))


def test_the_tasks_left_are_laid_out_on_the_workers_after_what_they_wait_for():
    works = [Work("u", "train", "n"), Work("t", "train", "m"),
             Work("a", "attack", "m", "source", "x", after=("t",)),
             Work("b", "attack", "m", "source", "y", after=("t",)),
             Work("c", "attack", "m", "source", "z", after=("b",))]
    for workers, expected in [(1, 4 * 30), (2, 3 * 30), (4, 3 * 30)]:
        left = TimeLeft(works, workers)
        left.finished("u", 30.0)  # every task is predicted at 30 s until an attack ends
        left.finished("u", 99.0)  # told twice: the first counts
        assert left.predict("a") == 30.0
        # t, then a and b side by side when there are two workers, then c (it waits for b)
        assert left.estimate(0.0) == pytest.approx(expected), workers
        left.finished("t", 30.0)
        left.finished("a", 10.0)
        # b and c like the other attack on their model, one after the other however many
        # workers there are
        assert left.estimate(0.0) == pytest.approx(20.0), workers


def test_one_long_task_is_not_shared_between_workers():
    works = [Work("a", "attack", "m", "source", "x"), Work("b", "attack", "m", "source", "y")]
    left = TimeLeft(works, workers=8)
    left.started("b", 0.0)
    left.finished("a", 100.0)
    # b is predicted like a (100 s) and runs on one worker: 100 s left, not 100/8
    assert left.estimate(0.0) == pytest.approx(100.0)
    assert left.estimate(40.0) == pytest.approx(60.0)  # 40 s into it
    # past its prediction, it is expected to run on for half the time it has run
    assert left.estimate(150.0) == pytest.approx(75.0)


def test_a_trainings_steps_say_how_far_it_is_and_an_attacks_do_not():
    works = [Work("t0", "train", "a"), Work("t1", "train", "b"),
             Work("x0", "attack", "a", "source", "x"), Work("x1", "attack", "b", "source", "x")]
    left = TimeLeft(works, workers=2)
    left.finished("t0", 10.0)
    left.finished("x0", 10.0)
    left.progressed("t1", 1, 4, now=0.0)  # a quarter done at 30 s: 90 s to go
    left.progressed("x1", 1, 6, now=20.0)  # cascade batches: not a measure of time
    assert left.estimate(30.0) == pytest.approx(90.0)
    # the attack, 10 s in of 10 predicted, is past its prediction: half its 10 s
    assert left.predict("x1") == pytest.approx(10.0)


def test_a_skipped_task_ends_without_teaching_the_estimate_anything():
    works = [Work("a", "attack", "m", "source", "x"), Work("b", "attack", "m", "source", "x"),
             Work("c", "attack", "m", "source", "x")]
    left = TimeLeft(works, workers=1)
    left.finished("a", 20.0)
    left.finished("b", None)
    assert left.estimate(0.0) == pytest.approx(20.0)


# --------------------------------------------------------------------------- the line

LONG = "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k+linear-probe+dann+pgd-at"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.parametrize("model", ["digits-cnn+linear+dann+trades", LONG])
@pytest.mark.parametrize("left", [None, 125.0, 3 * 3600 + 7.0])
def test_the_line_fits_80_columns_and_keeps_counts_time_and_defense(model, left):
    work = Work("k", "attack", model, "target", "autoattack-fast/apgd-t")
    other = Work("j", "attack", model, "source", "pgd")
    text, bar = status_line(80, done=123, total=1066, running=[other, work], left=left,
                            elapsed=61.0)
    assert len(text) <= 80
    assert bar >= 8 and text[:bar + 1].strip() == ""  # the bar is always there
    assert "123/1066" in text
    assert ("left" in text) if left is not None else ("1:01 so far" in text)
    assert "apgd-t on " in text and "pgd-at" in text or "trades" in text
    assert "[target]" in text and "+1" in text  # one more task in flight


def test_describe_shortens_the_preset_then_the_middle_of_the_model_never_the_defense():
    work = Work("k", "attack", "digits-cnn+linear+dann+trades", "target",
                "autoattack-fast/apgd-t")
    assert describe(work) == "autoattack-fast/apgd-t on digits-cnn+linear+dann+trades [target]"
    assert describe(work, 50) == "apgd-t on digits-cnn+linear+dann+trades [target]"
    assert describe(work, 43) == "apgd-t on digits-cnn+…+dann+trades [target]"
    assert describe(work, 30) == "apgd-t on …+trades [target]"
    assert describe(work, 20) == "apgd-t on …+trades"
    for width in range(10, 70):
        assert len(describe(work, width)) <= width
    train = Work("t", "train", "digits-cnn+linear+none+pgd-at")
    assert describe(train, 25) == "train digits-cnn+…+pgd-at"


def _jobs() -> list[robench.Job]:
    def job(key, task, label, after=(), **kwargs):
        return robench.Job(key=key, task=task, label=label, fn=dict, after=after,
                           kwargs={"plan": {"name": LONG, "defense": "pgd-at"}, **kwargs})

    return [job("t", "train", f"train {LONG}"),
            job("a", "attack", f"autoattack-fast/apgd-t on {LONG} [source]", ("t",),
                domain="source", attack={"name": "autoattack-fast/apgd-t"}),
            job("b", "attack", f"autoattack-fast/apgd-t on {LONG} [target]", ("t",),
                domain="target", attack={"name": "autoattack-fast/apgd-t"})]


def test_a_terminal_gets_a_header_and_one_line_within_80_columns():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    with ProgressDisplay(True, _jobs(), "grid", console, 2, threads=1) as display:
        display.on_progress(f"train {LONG}", 3, 10)
        display.advance(f"train {LONG}", True, "train", 12.0)
        display.on_progress(f"autoattack-fast/apgd-t on {LONG}", 1, 6)
        display.live.refresh()
        drawn = ANSI.sub("", out.getvalue())
        display.advance(f"autoattack-fast/apgd-t on {LONG} [source]", True, "attack", 3.0)
        display.advance(f"autoattack-fast/apgd-t on {LONG} [target]", False, "attack", 3.0)
    lines = [line for chunk in ANSI.sub("\n", out.getvalue()).splitlines()
             for line in [chunk.strip("\r")] if line.strip()]
    assert lines[0] == "robench: 3 tasks on 2 workers, 1 torch thread each"
    assert all(len(line) <= 80 for line in lines), lines
    assert "1/3  apgd-t on timm:vit" in drawn and "+pgd-at [source]" in drawn
    assert "━" in drawn and "left" in drawn
    assert any("3/3  done in" in line for line in lines)
    assert any(line.startswith("failed: autoattack-fast/apgd-t") for line in lines)


def test_a_log_gets_the_header_and_the_time_left_on_each_done_line():
    out = io.StringIO()
    with ProgressDisplay(True, _jobs(), "grid", Console(file=out, force_terminal=False),
                         None, threads=2) as display:
        display.on_progress(f"train {LONG}", 3, 10)
        display.advance(f"train {LONG}", True, "train", 12.0)
        display.advance(f"autoattack-fast/apgd-t on {LONG} [source] (skipped: its model did "
                        f"not train)", True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "robench: 3 tasks on the executor's workers, 2 torch threads each"
    assert re.search(r"done grid 1/3: train \S+ in 0:00:12, about 0:00:\d\d left", lines[2])
    assert "done grid 2/3" in lines[3] and "skipped" in lines[3]


def test_the_local_executor_says_how_many_jobs_it_runs_at_once_before_running_any():
    from robench_executors.plugin import LocalExecutor

    jobs = [robench.Job(key=k, task="attack", label=k, fn=dict) for k in "abc"]
    executor = LocalExecutor(workers=2)
    outcomes = executor.run(jobs)
    assert executor.parallelism == 2
    outcomes.close()  # never started: no worker process
    local = robench.Job(key="x", task="attack", label="x", fn=dict, portable=False)
    with pytest.warns(RuntimeWarning):
        executor.run([local, *jobs])
    assert executor.parallelism == 1
    (outcome,) = LocalExecutor(workers=1).run(jobs[:1])
    assert outcome.ok and outcome.seconds is not None and outcome.seconds >= 0
