"""Wall time of the default grid: worker processes with one thread each, against one process.

Three ways to run the built-in default grid (``robench grid`` with no arguments), each on an
idle machine and next to one competing busy process (a Python busy loop, as another user's
job on a shared machine):

* ``1proc-2threads``: the old ``local`` executor, every job in this process with 2 torch
  threads (``[executor.local] workers = 1, threads_per_task = 2``);
* ``1worker``: every job in this process with 1 thread (``workers = 1``);
* ``2workers``: two worker processes with 1 thread each (``workers = 2``), each pinned to
  its own core (the default when the workers fill the machine's cores);
* ``2workers-floating``: the same, not pinned (``pin_cores = false``): where the kernel
  puts them.

Each run is one round in a fresh run folder (nothing cached), 1-4 minutes on a 2-core
machine; the 1-minute load average is sampled during the run and kept in ``extra_info``
(``load_mean``, ``load_max``), because a shared machine's neighbours move the numbers.
``ROBENCH_BENCH_GRID=tiny`` runs a one-model grid instead, to check the benchmark itself.

    pytest benchmarks/test_grid_workers_bench.py --benchmark-only \\
        --benchmark-columns=min --benchmark-group-by=group
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from robench_executors.plugin import LocalExecutor

import robench
from robench import jobs

#: name -> [executor.local] parameters
LAYOUTS: dict[str, dict[str, Any]] = {
    "1proc-2threads": {"workers": 1, "threads_per_task": 2},
    "1worker": {"workers": 1},
    "2workers": {"workers": 2},
    "2workers-floating": {"workers": 2, "pin_cores": False},
}
#: a one-model grid that checks the benchmark in seconds (ROBENCH_BENCH_GRID=tiny)
TINY: dict[str, Any] = {
    "target": "none", "backbones": ["digits-cnn"], "heads": ["linear"], "adaptors": ["none"],
    "attacks": ["fgsm"], "limit": 60, "epochs": 1,
}


class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(params=["idle", "busy"])
def neighbour(request: pytest.FixtureRequest) -> Iterator[str]:
    """Nothing, or one busy Python process beside the grid for the whole measurement."""
    if request.param == "idle":
        yield "idle"
        return
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield "busy"
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_default_grid_wall_time(benchmark: Any, tmp_path: Path, layout: str,
                                neighbour: str) -> None:
    grid: dict[str, Any] = TINY if os.environ.get("ROBENCH_BENCH_GRID") == "tiny" else {}
    benchmark.group = f"default grid, {neighbour} machine ({jobs.usable_cpus()} cores)"
    options = LAYOUTS[layout]
    config = {**grid, "name": layout, "out": str(tmp_path), "reporters": ["csv"],
              "executor": {"local": options}}
    # the cores the workers run on (None: not pinned), as the executor decides them here
    cores = LocalExecutor(**options).worker_cores([None] * options["workers"])
    with LoadSampler() as load:
        rows = benchmark.pedantic(robench.run_grid, args=(config,), rounds=1, iterations=1)
    assert len(rows) and set(rows["status"]) == {"ok"}, rows.get("error")
    benchmark.extra_info.update({
        "layout": layout, "neighbour": neighbour, "rows": len(rows), "cores": str(cores),
        "load_mean": round(sum(load.samples) / len(load.samples), 2),
        "load_max": round(max(load.samples), 2),
    })
