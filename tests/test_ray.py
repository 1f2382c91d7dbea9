"""The ``ray`` executor: the same numbers as ``local``, failures (a dead worker included)
become failed outcomes, and parameters are checked before Ray starts.

The end-to-end tests start a real local Ray instance with 2 CPUs (about 10 s) and check that
it is shut down afterwards.  Only entry-point plugins are used in grids: a Ray worker builds
its plugin host from entry points and never sees plugins registered in the driver alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import robench_ray.plugin
import torch
from grids import TINY_GRID
from robench_ray.executor import RayExecutor

import robench

ray = pytest.importorskip("ray")

#: a grid whose numbers must not depend on the executor
GRID = {**TINY_GRID, "name": "cmp", "limit": 60}
#: columns that measure wall time, the only ones allowed to differ between executors
TIMING = ["seconds", "train_seconds"]


def ray_host() -> robench.PluginHost:
    """The installed plugins, plus ``robench_ray`` where its entry point is not installed."""
    host = robench.PluginHost.create()
    if "ray" in host.names("executor"):
        return host
    return robench.PluginHost.create(plugins=[robench_ray.plugin])


@pytest.fixture(autouse=True)
def no_ray_session() -> Iterator[None]:
    """Each test starts from no Ray session and leaves none behind, even when it fails."""
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


def job(key: str, fn: Callable[..., Any], **kwargs: Any) -> robench.Job:
    return robench.Job(key=key, task="attack", label=f"job {key}", fn=fn, kwargs=kwargs)


def sleepy(seconds: float) -> dict[str, int]:
    """A job function of this module (pickled by value) that takes ``seconds``."""
    time.sleep(seconds)
    return {"pid": os.getpid()}


def torch_threads() -> dict[str, int]:
    """A job function of this module: workers can only run it when it is pickled by value."""
    return {"threads": torch.get_num_threads(), "pid": os.getpid()}


# --------------------------------------------------------------------------- no Ray started


def test_the_ray_executor_is_registered_with_its_parameters() -> None:
    host = ray_host()
    spec, _ = host.resolve("executor", "ray")
    assert "Ray" in spec.description
    executor = host.build("executor", "ray", num_cpus=2, cpus_per_task=0.5, gpus_per_task=0.25,
                          max_retries=1)
    assert isinstance(executor, RayExecutor)
    with pytest.raises(robench.UsageError, match="has no parameter 'cpus'.*cpus_per_task"):
        host.build("executor", "ray", cpus=2)


@pytest.mark.parametrize(("params", "message"), [
    ({"cpus_per_task": 0}, "cpus_per_task must be a number > 0"),
    ({"num_cpus": 1.5}, "num_cpus must be an integer >= 1"),
    ({"gpus_per_task": 1.5}, "a fraction up to 1 or a whole number"),
    ({"max_retries": -2}, "max_retries must be an integer >= -1"),
    ({"address": ""}, "address must be a Ray address"),
    ({"address": "auto", "num_cpus": 2}, "num_cpus and num_gpus size a local Ray instance"),
    ({"log_to_driver": "yes"}, "log_to_driver must be true or false"),
    ({"max_in_flight": 0}, "max_in_flight must be an integer >= 1"),
    ({"shared_run_dir": "no"}, "shared_run_dir must be true or false"),
])
def test_bad_parameters_are_usage_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(robench.UsageError, match=message):
        robench_ray.plugin.ray_executor(**params)


def test_without_ray_installed_the_factory_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(robench.UsageError, match=r"pip install robench\[ray\]"):
        robench_ray.plugin.ray_executor()


def test_tasks_reserve_gpus_only_for_gpu_jobs_and_see_their_gpu_as_cuda() -> None:
    cpu_job = job("a", dict, run_dir="reports/x", device="cpu")
    gpu_job = robench.Job(key="b", task="train", label="train", fn=dict,
                          kwargs={"run_dir": "reports/x", "device": "cuda:1"},
                          resources={"gpus": 1})
    default = RayExecutor(cpus_per_task=2)
    shared = RayExecutor(gpus_per_task=0.5)
    assert default.task_options(cpu_job)["num_gpus"] == 0
    assert default.task_options(cpu_job)["num_cpus"] == 2
    assert default.task_options(gpu_job)["num_gpus"] == 1
    assert shared.task_options(gpu_job)["num_gpus"] == 0.5
    assert shared.task_options(cpu_job)["num_gpus"] == 0
    assert default.task_options(gpu_job)["max_retries"] == 0
    prepared = default.prepare(gpu_job)
    assert prepared.kwargs["run_dir"] == os.path.abspath("reports/x")
    assert prepared.kwargs["device"] == "cuda"  # the task's own GPU is number 0
    assert gpu_job.kwargs["device"] == "cuda:1"  # the driver's job is left as it was
    assert default.prepare(cpu_job).kwargs["device"] == "cpu"
    absolute = job("c", dict, run_dir=os.path.abspath("x"))
    assert default.prepare(absolute).kwargs["run_dir"] == os.path.abspath("x")


def test_requests_that_can_never_run_are_refused_before_ray_starts() -> None:
    gpu_job = robench.Job(key="b", task="train", label="train", fn=dict,
                          resources={"gpus": 1})
    with pytest.raises(robench.UsageError, match="gpus_per_task = 0, but the run's device"):
        next(RayExecutor(gpus_per_task=0).run([gpu_job]))
    with pytest.raises(robench.UsageError, match="cpus_per_task = 4 is more than the 2 CPU"):
        next(RayExecutor(num_cpus=2, cpus_per_task=4).run([job("a", dict)]))
    assert list(RayExecutor().run([])) == []
    assert not ray.is_initialized()


def test_forwarded_plugin_switches_reach_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBENCH_DISABLE_PLUGINS", "foolbox")
    monkeypatch.delenv("ROBENCH_PLUGINS", raising=False)
    options = RayExecutor().task_options(job("a", dict))
    assert options["runtime_env"] == {"env_vars": {"ROBENCH_DISABLE_PLUGINS": "foolbox"}}


# --------------------------------------------------------------------------- a real Ray


@pytest.mark.slow
def test_ray_and_local_give_the_same_numbers(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    host = ray_host()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # what conftest set, for speed
        monkeypatch.delenv(name, raising=False)  # not inherited by local or Ray workers
    threads = torch.get_num_threads()
    # no pinning by the test: the driver runs with 2 threads, and both executors must pin
    # each task to threads_per_task = 1 themselves (the numbers depend on the thread count)
    torch.set_num_threads(2)
    try:
        local = robench.run_grid({**GRID, "name": "local", "out": str(tmp_path)}, host=host)
    finally:
        torch.set_num_threads(threads)
    remote = robench.run_grid(
        {**GRID, "name": "ray", "out": str(tmp_path), "executor": {"ray": {"num_cpus": 2}}},
        host=host)
    # the executor started its own Ray instance for the grid and shut it down afterwards
    assert not ray.is_initialized()
    on_disk = {name: pd.read_csv(tmp_path / name / "results.csv") for name in ("local", "ray")}
    assert len(on_disk["ray"]) == len(local) == len(remote) == 2 * 3  # fgsm, pgd, worst-case
    assert set(on_disk["ray"]["status"]) == {"ok"}
    local_rows, ray_rows = (on_disk[name].drop(columns=TIMING + ["run"])
                            for name in ("local", "ray"))
    pd.testing.assert_frame_equal(local_rows, ray_rows)
    assert (tmp_path / "ray" / "models").is_dir()  # weights travelled through the run folder

    # workers that do not share the run folder: models travel through Ray's object store
    from robench_ray.executor import local_run_dir

    shipped = robench.run_grid(
        {**GRID, "name": "shipped", "out": str(tmp_path),
         "executor": {"ray": {"num_cpus": 2, "shared_run_dir": False}}}, host=host)
    assert set(shipped["status"]) == {"ok"}
    shipped_rows = pd.read_csv(tmp_path / "shipped" / "results.csv").drop(
        columns=TIMING + ["run"])
    pd.testing.assert_frame_equal(local_rows, shipped_rows)
    run_id = hashlib.sha256(str((tmp_path / "shipped").resolve()).encode()).hexdigest()[:16]
    worker_models = sorted(p.name for p in (Path(local_run_dir(run_id)) / "models").iterdir())
    driver_models = sorted(p.name for p in (tmp_path / "shipped" / "models").iterdir())
    # the workers trained and evaluated in their own folder; the driver kept the same files
    assert worker_models == driver_models and len(driver_models) == 2  # weights and metadata


@pytest.mark.slow
def test_a_dead_worker_fails_its_job_and_the_others_complete() -> None:
    good = [job(f"ok{i}", dict, value=i) for i in range(4)]
    jobs = [
        job("killed", functools.partial(os._exit, 1)),  # the worker process dies
        *good,
        job("raised", functools.partial(int, "not a number")),
        job("exit", functools.partial(sys.exit, 3)),  # SystemExit is not an Exception
    ]
    with RayExecutor(num_cpus=2) as executor:
        outcomes = {o.key: o for o in executor.run(jobs)}
        assert executor.started_local and ray.is_initialized()
        # the Ray instance serves later phases too, with the same worker processes
        again = list(executor.run([job("again", dict, value=9)]))
        assert [o.result for o in again] == [{"value": 9}]
        # a function the workers cannot import (this test module) is a failed job, not a hang
        (unknown,) = executor.run([job("unknown", torch_threads)])
        assert not unknown.ok and "No module named" in unknown.error
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            threads = list(executor.run([job(f"t{i}", torch_threads) for i in range(4)]))
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        assert {o.result["threads"] for o in threads} == {1}  # one torch thread per CPU
    assert not ray.is_initialized()
    assert sorted(outcomes) == sorted(j.key for j in jobs)
    for i in range(4):
        assert outcomes[f"ok{i}"].ok and outcomes[f"ok{i}"].result == {"value": i}
    killed = outcomes["killed"]
    assert not killed.ok and killed.result is None
    assert "WorkerCrashedError" in killed.error and killed.traceback
    assert not outcomes["raised"].ok
    assert outcomes["raised"].error.startswith("ValueError: invalid literal")
    assert not outcomes["exit"].ok and outcomes["exit"].error



def test_trained_models_are_evaluated_first_and_failed_ones_skipped() -> None:
    """With 2 slots, model A's and B's evaluations are submitted before model C trains (Ray's
    own queue would run every training first), and the evaluation of a model whose training
    raised is skipped, not run."""
    def train(key: str, fn: Callable[..., Any] = sleepy, **kwargs: Any) -> robench.Job:
        return robench.Job(key=key, task="train", label=key, fn=fn,
                           kwargs=kwargs or {"seconds": 0.5})

    def evaluate(key: str, model: str) -> robench.Job:
        return robench.Job(key=key, task="attack", label=key, fn=sleepy,
                           kwargs={"seconds": 0.05}, after=(model,))

    jobs = [train("A"), evaluate("A1", "A"), train("B"), evaluate("B1", "B"), train("C"),
            evaluate("C1", "C"), train("F", functools.partial(int, "not a number")),
            evaluate("F1", "F")]
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with RayExecutor(num_cpus=2) as executor:
            submit = executor._submit
            submitted: list[str] = []

            def record(ray_module, job, threads, inputs):  # noqa: ANN001, ANN202
                submitted.append(job.key)
                return submit(ray_module, job, threads, inputs)

            executor._submit = record
            outcomes = list(executor.run(jobs))
            assert executor.slots(ray, jobs) == 2
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    order = [o.key for o in outcomes]
    by_key = {o.key: o for o in outcomes}
    assert sorted(order) == sorted(j.key for j in jobs)  # one outcome per job
    # submission order, which timing cannot change: the first slot that frees goes to the
    # evaluation of the model that just trained, ahead of the third model's training
    first = next(key for key in order if key in ("A", "B"))
    assert submitted.index(f"{first}1") < submitted.index("C")
    assert not by_key["F"].ok and not by_key["F"].skipped
    assert by_key["F1"].skipped and not by_key["F1"].ok and "job F failed" in by_key["F1"].error
    assert all(by_key[k].ok for k in ("A", "A1", "B", "B1", "C", "C1"))
