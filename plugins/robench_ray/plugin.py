"""Registers the ``ray`` executor: ``--executor ray`` or an ``[executor.ray]`` table.

The factory checks that Ray is importable (``pip install robench[ray]``); the
``[executor.ray]`` parameters are checked against their annotations by robench's one
validator (:func:`robench.checked`); :mod:`robench_ray.executor` does the work.
"""

from __future__ import annotations

import robench
from robench.jobs import DEFAULT_THREADS_PER_TASK
from robench_ray.executor import (
    MIN_RAY_VERSION,
    Address,
    Cpus,
    CpusPerTask,
    Gpus,
    GpusPerTask,
    InFlight,
    RayExecutor,
    Retries,
    Threads,
)


def ray_executor(
    *,
    address: Address = None,
    num_cpus: Cpus = None,
    num_gpus: Gpus = None,
    cpus_per_task: CpusPerTask = 1.0,
    gpus_per_task: GpusPerTask = None,
    max_retries: Retries = 0,
    log_to_driver: bool = False,
    max_in_flight: InFlight = None,
    shared_run_dir: bool = True,
    threads_per_task: Threads = DEFAULT_THREADS_PER_TASK,
) -> RayExecutor:
    """Build the ``ray`` executor; every parameter is a key of ``[executor.ray]``.

    ``address``: a Ray cluster to join (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``);
    unset, it joins ``$RAY_ADDRESS`` if set, else starts a local Ray instance for the run.
    ``num_cpus`` / ``num_gpus``: size of that local instance (default: the whole machine).
    ``cpus_per_task``: CPUs each task reserves.
    ``gpus_per_task``: GPUs each GPU job reserves (fractions share a GPU); default 1 when the
    run's device is CUDA.  ``max_retries``: reruns of a task whose worker died.
    ``log_to_driver``: stream the workers' stdout/stderr to the terminal.
    ``max_in_flight``: tasks submitted at a time (default: what the cluster runs at once).
    ``shared_run_dir``: false when workers do not see the run folder (models then travel
    through Ray's object store).  ``threads_per_task``: torch threads of each task (1, as
    the local executor's, so both give the same numbers).
    """
    try:
        import ray
    except ImportError:
        raise robench.UsageError(
            "The ray executor needs Ray, which is not installed in this environment. Install "
            f"it with `pip install robench[ray]` (or `pip install 'ray>={MIN_RAY_VERSION}'`), "
            "or run with --executor local."
        ) from None
    return RayExecutor(
        address=address, num_cpus=num_cpus, num_gpus=num_gpus, cpus_per_task=cpus_per_task,
        gpus_per_task=gpus_per_task, max_retries=max_retries, log_to_driver=log_to_driver,
        max_in_flight=max_in_flight, shared_run_dir=shared_run_dir,
        threads_per_task=threads_per_task, ray_version=getattr(ray, "__version__", ""),
    )


@robench.hookimpl
def robench_register_executors() -> list[robench.ExecutorSpec]:
    return [robench.ExecutorSpec(supports_dependencies=True,
        name="ray", factory=ray_executor,
        description="run training and attack jobs as Ray tasks, on a local Ray instance or a "
                    "cluster ([executor.ray] address = ...); needs `pip install robench[ray]`",
    )]
