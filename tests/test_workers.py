"""The ``local`` executor's worker processes: the same numbers as one process and as Ray,
whatever the thread settings of the environment; dependencies, progress, dead workers and an
interrupted run.

Job functions live at the top level of this module: worker processes import it by name (they
get the driver's ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from robench_executors.plugin import LocalExecutor, local

import robench
from robench import jobs

#: columns that measure wall time, the only ones allowed to differ between executors
TIMING = ["seconds", "train_seconds"]

#: two models (digits-cnn with a linear and an MLP head), FGSM and 5-step PGD
GRID: dict[str, Any] = {
    "dataset": "digits", "target": "none", "backbones": ["digits-cnn"],
    "heads": ["linear", "mlp"], "adaptors": ["none"], "attacks": ["fgsm", "pgd"],
    "eps": {"linf": ["2/255", "8/255"]}, "limit": 60, "epochs": 1, "reporters": ["csv"],
    "attack": {"pgd": {"steps": 5}},
}

#: run in a fresh interpreter whose environment sets no thread count: the grid three ways
SCRIPT = """
import json, sys
import torch
import robench

grid, out = json.loads(sys.argv[1]), sys.argv[2]
print(json.dumps({"threads": torch.get_num_threads()}))
executors = {"inprocess": {"local": {"workers": 1}}, "workers2": {"local": {"workers": 2}}}
if "ray" in robench.PluginHost.create().names("executor"):
    executors["ray"] = {"ray": {"num_cpus": 2}}
for name, executor in executors.items():
    robench.run_grid({**grid, "name": name, "out": out, "executor": executor})
"""


# --------------------------------------------------------------------------- job functions


def _log(path: str, **record: Any) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def timed(*, log: str, name: str, seconds: float, steps: int = 0) -> dict[str, Any]:
    """Sleep ``seconds`` (reporting ``steps`` progress steps); log when it ran, and where."""
    start = time.time()
    _log(log, name=f"{name}:start", pid=os.getpid())
    for step in range(steps):
        time.sleep(seconds / steps)
        jobs.report_progress(f"timed {name}", step + 1, steps)
    if not steps:
        time.sleep(seconds)
    import torch

    _log(log, name=name, start=start, end=time.time(), pid=os.getpid())
    return {"pid": os.getpid(), "threads": torch.get_num_threads()}


def after_start_of(*, log: str, name: str, other: str) -> dict[str, Any]:
    """Start, then wait (60 s at most) until job ``other`` has started elsewhere: both
    workers then hold a job, whichever became ready first."""
    _log(log, name=f"{name}:start", pid=os.getpid())
    deadline = time.monotonic() + 60
    while other not in _started(log) and time.monotonic() < deadline:
        time.sleep(0.05)
    _log(log, name=name, start=time.time(), end=time.time(), pid=os.getpid())
    return {"pid": os.getpid()}


def _started(log: str) -> dict[str, int]:
    """The pid of each job that has started, by name."""
    if not os.path.exists(log):
        return {}
    with open(log) as handle:
        records = [json.loads(line) for line in handle]
    return {r["name"][:-len(":start")]: r["pid"] for r in records
            if r["name"].endswith(":start")}


def killed(*, log: str) -> dict[str, Any]:
    _log(log, name="killed", start=time.time(), pid=os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")


def affinity(*, seconds: float = 0.0) -> dict[str, Any]:
    """The CPU cores this process runs on (after ``seconds``, so that every worker gets a
    job)."""
    time.sleep(seconds)
    return {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0))}


def environment() -> dict[str, Any]:
    import torch

    return {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
            } | {"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}


def raises() -> dict[str, Any]:
    raise ValueError("a job error")


def job(key: str, fn: Any, *, task: str = "attack", after: tuple[str, ...] = (),
        **kwargs: Any) -> robench.Job:
    return robench.Job(key=key, task=task, label=key, fn=fn, kwargs=kwargs, after=after)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(("params", "message"), [
    ({"workers": 0}, r"\[executor.local\] workers must be an integer >= 1"),
    ({"workers": 1.5}, "workers must be an integer"),
    ({"threads_per_task": 0}, "threads_per_task must be an integer >= 1"),
    ({"threads_per_task": True}, "threads_per_task must be an integer"),
])
def test_bad_parameters_are_usage_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(robench.UsageError, match=message):
        local(**params)


def test_worker_count_and_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = [job(f"j{i}", dict) for i in range(8)]
    assert LocalExecutor().worker_slots(cpu, cpus=4) == [None] * 4  # one per usable core
    assert LocalExecutor(threads_per_task=2).worker_slots(cpu, cpus=4) == [None] * 2
    assert LocalExecutor(workers=3).worker_slots(cpu[:2]) == [None] * 2  # no idle workers
    assert len(LocalExecutor().worker_slots(cpu)) == min(8, jobs.usable_cpus())
    gpu = [robench.Job(key=f"g{i}", task="attack", label="g", fn=dict, resources={"gpus": 1},
                       kwargs={"device": "cuda"}) for i in range(4)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    assert LocalExecutor().worker_slots(gpu) == ["3", "5", "7"]  # one worker per GPU
    assert LocalExecutor(workers=2).worker_slots(gpu) == ["3", "5"]
    named = [robench.Job(key="n", task="attack", label="n", fn=dict, resources={"gpus": 1},
                         kwargs={"device": "cuda:1"})]
    assert LocalExecutor().worker_slots(named) == [None]  # in this process, on that GPU
    assert jobs.task_threads(LocalExecutor(threads_per_task=3)) == 3
    assert jobs.task_threads(object()) == __import__("torch").get_num_threads()


def test_in_process_pins_threads_only_while_jobs_run() -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (outcome,) = LocalExecutor(workers=1).run(
            [job("a", timed, log=os.devnull, name="a", seconds=0)])
        assert outcome.ok and outcome.result["threads"] == 1
        assert outcome.result["pid"] == os.getpid()
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(before)


def test_jobs_that_cannot_leave_this_process_run_here_with_a_warning() -> None:
    pinned = robench.Job(key="a", task="attack", label="a", fn=timed, portable=False,
                         kwargs={"log": os.devnull, "name": "a", "seconds": 0})
    with pytest.warns(RuntimeWarning, match="can run only in this process"):
        outcomes = list(LocalExecutor(workers=2).run([pinned, job("b", dict)]))
    assert [o.key for o in outcomes] == ["a", "b"] and all(o.ok for o in outcomes)
    assert outcomes[0].result == {"pid": os.getpid(), "threads": 1}


def test_workers_that_fill_the_cores_are_pinned_each_to_its_own() -> None:
    two = [None, None]
    assert LocalExecutor().worker_cores(two, cpus=[0, 1]) == [(0,), (1,)]
    assert LocalExecutor(threads_per_task=2).worker_cores(two, cpus=[3, 5, 8, 9]) == \
        [(3, 5), (8, 9)]
    # a pool smaller than the machine floats: runs side by side do not crowd the first cores
    assert LocalExecutor(workers=2).worker_cores(two, cpus=[0, 1, 2, 3]) == [None, None]
    assert LocalExecutor(workers=3).worker_cores([None] * 3, cpus=[0, 1]) == [None] * 3
    # asked for: pinned in any case, wrapping round the cores
    assert LocalExecutor(workers=3, pin_cores=True).worker_cores([None] * 3, cpus=[0, 1]) == \
        [(0,), (1,), (0,)]
    assert LocalExecutor(pin_cores=False).worker_cores(two, cpus=[0, 1]) == [None, None]
    assert LocalExecutor().worker_cores(["0", "1"], cpus=[0, 1]) == [None, None]  # GPUs
    assert LocalExecutor().worker_cores([None], cpus=[0]) == [None]  # runs in this process
    with pytest.raises(robench.UsageError, match="pin_cores must be true, false or left out"):
        local(pin_cores="yes")


def test_a_cgroup_cpu_quota_caps_the_usable_cores(tmp_path: Path) -> None:
    """A container limited to 1.5 CPUs on a bigger host: 2 workers, not one per host core."""
    def write(relative: str, text: str) -> None:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text + "\n")

    v2 = "0::/user.slice/job\n"
    assert jobs.cgroup_cpu_limit(tmp_path, v2) is None  # no cgroup files: no limit known
    write("cpu.max", "max 100000")
    assert jobs.cgroup_cpu_limit(tmp_path, v2) is None  # "max": unlimited
    write("user.slice/job/cpu.max", "150000 100000")
    assert jobs.cgroup_cpu_limit(tmp_path, v2) == 1.5
    write("cpu.max", "100000 100000")  # the container's own quota, above the process's
    assert jobs.cgroup_cpu_limit(tmp_path, v2) == 1.0
    # cgroup v1, the process's path not mounted inside the container: the mount's root
    v1 = "4:cpu,cpuacct:/docker/0123abcd\n3:memory:/docker/0123abcd\n"
    write("cpu,cpuacct/cpu.cfs_quota_us", "-1")
    write("cpu,cpuacct/cpu.cfs_period_us", "100000")
    assert jobs.cgroup_cpu_limit(tmp_path, v1) is None
    write("cpu,cpuacct/cpu.cfs_quota_us", "150000")
    assert jobs.cgroup_cpu_limit(tmp_path, v1) == 1.5
    write("cpu,cpuacct/cpu.cfs_quota_us", "not a number")
    assert jobs.cgroup_cpu_limit(tmp_path, v1) is None
    # the usable cores: the affinity mask, capped by the quota rounded up
    write("cpu,cpuacct/cpu.cfs_quota_us", "150000")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert jobs.usable_cpus(cgroup_root=tmp_path, membership=v1) == min(2, cores)
    assert jobs.usable_cpus(cgroup_root=tmp_path / "absent", membership=v1) == cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity off Linux")
def test_a_pool_that_fills_the_cores_runs_one_worker_on_each() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    outcomes = list(LocalExecutor(workers=len(cpus)).run(
        [job(f"a{i}", affinity, seconds=0.5) for i in range(2 * len(cpus))]))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    cores_of: dict[int, set[tuple[int, ...]]] = {}
    for outcome in outcomes:
        cores_of.setdefault(outcome.result["pid"], set()).add(tuple(outcome.result["cores"]))
    assert all(len(cores) == 1 for cores in cores_of.values())  # a worker stays where it is
    seen = set().union(*cores_of.values())
    assert seen <= {(core,) for core in cpus}
    assert len(seen) == len(cores_of)  # no two workers share a core


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity off Linux")
def test_a_replaced_worker_runs_on_the_cores_of_the_one_that_died() -> None:
    from robench_executors.pool import WorkerPool

    core = max(os.sched_getaffinity(0))
    pool = WorkerPool([None], threads=1, cores=[(core,)], on_progress=lambda *progress: None)
    pending = [job("after", affinity), job("dies", killed, log=os.devnull),
               job("before", affinity)]
    outcomes = {o.key: o for o in pool.run(lambda: pending.pop() if pending else None,
                                           lambda outcome: [], lambda: bool(pending))}
    assert not outcomes["dies"].ok and "SIGKILL" in outcomes["dies"].error
    before, after = outcomes["before"].result, outcomes["after"].result
    assert before["cores"] == after["cores"] == [core]
    assert before["pid"] != after["pid"]


# --------------------------------------------------------------------------- worker processes


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of 2 workers: two trainings, their evaluations, a worker killed mid-job (and
    the evaluation of its model), a job that raises and one that cannot be pickled."""
    log = str(tmp_path_factory.mktemp("workers") / "log.jsonl")
    grid = [
        job("trainA", timed, task="train", log=log, name="trainA", seconds=1.0, steps=4),
        job("evalA1", timed, after=("trainA",), log=log, name="evalA1", seconds=0.2),
        job("evalA2", timed, after=("trainA",), log=log, name="evalA2", seconds=0.2),
        job("trainK", killed, task="train", log=log),
        job("evalK", timed, after=("trainK",), log=log, name="evalK", seconds=0.1),
        job("trainB", timed, task="train", log=log, name="trainB", seconds=0.5),
        job("evalB", timed, after=("trainB",), log=log, name="evalB", seconds=0.1),
        job("raises", raises),
        job("lambda", lambda: {}),
    ]
    progress: list[tuple[str, int, int]] = []
    jobs.set_progress_callback(lambda label, done, total: progress.append((label, done, total)))
    try:
        start = time.monotonic()
        outcomes = list(LocalExecutor(workers=2).run(grid))
        seconds = time.monotonic() - start
    finally:
        jobs.set_progress_callback(None)
    with open(log) as handle:
        records = [json.loads(line) for line in handle]
    return {"outcomes": {o.key: o for o in outcomes}, "order": [o.key for o in outcomes],
            "log": {r["name"]: r for r in records}, "progress": progress, "seconds": seconds,
            "jobs": grid}


def test_every_job_has_one_outcome_and_runs_in_a_worker_with_one_thread(pool_run) -> None:
    outcomes = pool_run["outcomes"]
    assert sorted(pool_run["order"]) == sorted(j.key for j in pool_run["jobs"])
    ran = [o for key, o in outcomes.items() if key.startswith(("train", "eval")) and o.ok]
    assert {o.key for o in ran} == {"trainA", "evalA1", "evalA2", "trainB", "evalB"}
    assert {o.result["threads"] for o in ran} == {1}
    pids = {o.result["pid"] for o in ran}
    # in worker processes: 2, and a fresh one for the killed worker (the load on the machine
    # decides which of them takes which job)
    assert os.getpid() not in pids and len(pids) <= 3
    assert outcomes["raises"].error == "ValueError: a job error"
    assert "cannot be sent to a worker process" in outcomes["lambda"].error


def test_a_killed_worker_fails_only_its_job(pool_run) -> None:
    outcomes = pool_run["outcomes"]
    dead = outcomes["trainK"]
    assert not dead.ok and not dead.skipped
    assert "killed by SIGKILL" in dead.error and "while it ran this job" in dead.error
    assert outcomes["evalK"].skipped and "job trainK failed" in outcomes["evalK"].error
    assert not any(name.startswith("evalK") for name in pool_run["log"])  # never started
    killed_pid = pool_run["log"]["killed"]["pid"]
    assert killed_pid not in {o.result["pid"] for o in outcomes.values() if o.ok}


def test_evaluations_start_after_their_training_finished(pool_run) -> None:
    log = pool_run["log"]
    for evaluation, training in (("evalA1", "trainA"), ("evalA2", "trainA"),
                                 ("evalB", "trainB")):
        assert log[evaluation]["start"] >= log[training]["end"], (evaluation, training)
    order = pool_run["order"]
    for evaluation, training in (("evalA1", "trainA"), ("evalB", "trainB")):
        assert order.index(evaluation) > order.index(training)


def test_progress_of_workers_reaches_the_driver(pool_run) -> None:
    steps = [p for p in pool_run["progress"] if p[0] == "timed trainA"]
    assert steps and steps[-1] == ("timed trainA", 4, 4)  # the last step always arrives
    assert all(total == 4 and 1 <= done <= 4 for _, done, total in steps)


def test_closing_the_run_stops_the_workers(tmp_path: Path) -> None:
    """What Ctrl-C does to the driver's generator: finished outcomes stay, workers end."""
    log = str(tmp_path / "log.jsonl")
    run = LocalExecutor(workers=2).run([
        job("quick", after_start_of, log=log, name="quick", other="long"),
        job("long", timed, log=log, name="long", seconds=120, steps=120),
    ])
    # "quick" ends only once "long" runs on the other worker (a worker that became ready
    # after "quick" ended would otherwise get "long" only when the generator is resumed)
    first = next(run)
    assert first.key == "quick" and first.ok
    pids = {first.result["pid"], _started(log)["long"]}
    start = time.monotonic()
    run.close()
    assert time.monotonic() - start < 30
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped and gone


def test_a_worker_sees_only_its_gpu_and_its_thread_count() -> None:
    """Worker ``i`` of a CUDA run gets the ``i``-th visible GPU as its only one (checked here
    without a GPU: the variable is what CUDA reads when the worker first touches it)."""
    from robench_executors.pool import WorkerPool

    pool = WorkerPool(["7"], threads=2, on_progress=lambda *progress: None)
    pending = [job("env", environment)]
    (outcome,) = pool.run(lambda: pending.pop() if pending else None, lambda outcome: [],
                          lambda: bool(pending))
    assert outcome.ok, outcome.error
    assert outcome.result == {"CUDA_VISIBLE_DEVICES": "7", "OMP_NUM_THREADS": "2",
                              "threads": 2, "interop": 2}


# --------------------------------------------------------------------------- the same numbers


@pytest.mark.slow
def test_one_process_two_workers_and_ray_give_the_same_rows(tmp_path: Path) -> None:
    """In an interpreter whose environment pins no threads (the suite's conftest sets
    OMP_NUM_THREADS=1 for speed): every executor must pin them itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(GRID), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = json.loads(done.stdout.splitlines()[0])["threads"]
    if jobs.usable_cpus() > 1:
        assert threads > 1  # torch's own default: the executors had something to pin
    names = sorted(p.name for p in tmp_path.iterdir() if (p / "results.csv").exists())
    expected = {"inprocess", "workers2"} | ({"ray"} if importlib.util.find_spec("ray") else set())
    assert set(names) == expected, done.stderr[-3000:]
    rows = {name: pd.read_csv(tmp_path / name / "results.csv").drop(columns=TIMING + ["run"])
            for name in names}
    reference = rows["inprocess"]
    # 2 models x 2 eps x (fgsm, pgd, worst-case)
    assert len(reference) == 2 * 2 * 3 and set(reference["status"]) == {"ok"}
    for name in names:
        pd.testing.assert_frame_equal(reference, rows[name], obj=name)
