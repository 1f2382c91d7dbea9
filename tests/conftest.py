"""Shared fixtures: one small grid is trained and attacked once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import robench

# One intra-op thread: on a 2-core machine that is also running another process, torch's
# default of 2 threads made small convolutions up to 70x slower (spinning OpenMP workers).
# Subprocesses started by the tests (the CLI, Ray workers) inherit the variables.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

#: a grid small enough for a test session and big enough to mean something
SMALL_GRID = {
    "name": "small",
    "dataset": "digits",
    "target": "digits-m",
    "backbones": ["timm:test_resnet", "digits-cnn"],
    "heads": ["linear"],
    "adaptors": ["none", "dann"],
    "attacks": ["fgsm", "pgd", "noise"],
    "eps": {"linf": ["2/255", "8/255", "32/255"]},
    "limit": 120,
    "epochs": 4,
    "reporters": ["csv", "md", "html", "json"],
    "attack": {"pgd": {"steps": 5}},
}


@pytest.fixture(scope="session")
def small_grid() -> dict:
    return dict(SMALL_GRID)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("runs")
    results = robench.run_grid({**SMALL_GRID, "out": str(out)})
    return out / "small", results
