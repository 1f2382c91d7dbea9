"""The order in which a grid runs its jobs, and what happens when a model does not train.

With an executor that honours ``Job.after`` (``local``, ``ray``) the driver hands it the whole
grid: each model is evaluated right after it trains (on a cluster, while others still train),
and the evaluations of a model whose training failed are skipped, not stored, so that they
run once it trains.  An executor that ignores ``after`` gets the two-phase protocol (all
training, then the evaluations of the models that trained) and the same numbers.
"""

from __future__ import annotations

import sqlite3
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import robench
from robench.grid import run_grid
from robench.host import PluginHost


class Broken(nn.Module):
    """A backbone whose forward pass always fails: its model cannot train."""

    num_features = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this backbone cannot run")


class TwoPhase:
    """An outside executor that runs jobs in order and knows nothing of ``Job.after``."""

    def run(self, jobs):  # noqa: ANN001, ANN201
        for job in jobs:
            yield job.execute()


def _plugin() -> types.ModuleType:
    plugin = types.ModuleType("order_plugins")
    plugin.robench_register_backbones = robench.hookimpl(lambda: [robench.BackboneSpec(
        name="broken", factory=lambda image_size, in_chans: Broken())])
    plugin.robench_register_executors = robench.hookimpl(lambda: [robench.ExecutorSpec(
        name="two-phase", factory=TwoPhase)])
    return plugin


GRID = {"dataset": "digits", "target": "none", "backbones": ["broken", "digits-cnn"],
        "heads": ["linear", "mlp"], "adaptors": ["none"], "attacks": ["fgsm"],
        "eps": {"linf": ["8/255"]}, "limit": 40, "epochs": 1, "reporters": ["csv"],
        "shard_size": 40}  # one job per task: the order of tasks is what is tested


def _run(tmp_path: Path, executor: str) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    # the store's order is the order jobs finished: one worker makes it the order they ran
    table = {"executor": {"local": {"workers": 1}}} if executor == "local" else \
        {"executor": executor}
    rows = run_grid({**GRID, "name": executor, "out": str(tmp_path), **table},
                    host=PluginHost.create(plugins=[_plugin()]))
    with sqlite3.connect(tmp_path / executor / "results.sqlite") as db:
        tasks = list(db.execute("SELECT label, status FROM tasks ORDER BY rowid"))
    return rows, tasks


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("order")
    return {name: _run(tmp_path, name) for name in ("local", "two-phase")}


def test_each_model_is_evaluated_right_after_it_trains(runs) -> None:
    _, tasks = runs["local"]
    assert [label for label, _ in tasks] == [
        "train broken+linear+none", "train broken+mlp+none",
        "train digits-cnn+linear+none", "clean digits-cnn+linear+none [source]",
        "fgsm on digits-cnn+linear+none [source]",
        "train digits-cnn+mlp+none", "clean digits-cnn+mlp+none [source]",
        "fgsm on digits-cnn+mlp+none [source]"]
    # the evaluations of the models that did not train were skipped, not stored as failed
    assert [status for _, status in tasks[:2]] == ["failed", "failed"]
    assert all(status == "ok" for _, status in tasks[2:])


def test_failed_training_fails_only_its_models_rows(runs) -> None:
    rows, _ = runs["local"]
    broken = rows[rows.backbone == "broken"]
    assert len(broken) and (broken.status == "failed").all()
    assert broken.error.str.contains("this backbone cannot run").all()
    working = rows[rows.backbone == "digits-cnn"]
    assert len(working) and (working.status == "ok").all()


def test_an_executor_without_dependencies_gets_two_phases_and_the_same_numbers(runs) -> None:
    _, tasks = runs["two-phase"]
    labels = [label for label, _ in tasks]
    assert [label.split()[0] for label in labels[:4]] == ["train"] * 4
    assert len(labels) == 8 and not any(label.startswith("train") for label in labels[4:])
    numbers = ["model", "attack", "eps", "clean_acc", "robust_acc", "grad_evals", "status"]
    local, two_phase = runs["local"][0], runs["two-phase"][0]
    pd.testing.assert_frame_equal(
        local[numbers].sort_values(["model", "attack", "eps"]).reset_index(drop=True),
        two_phase[numbers].sort_values(["model", "attack", "eps"]).reset_index(drop=True))
