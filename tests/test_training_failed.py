"""The ``training-failed`` flag on a real grid: a learning rate far too high makes the
digit CNN's training diverge, and every row of the model and its leaderboard entry say so;
the same grid at the default learning rate raises nothing."""

from __future__ import annotations

import json

import pytest

import robench
from robench.leaderboard import build_leaderboard
from robench.store import Store

GRID = {"dataset": "digits", "target": "none", "backbones": ["digits-cnn"],
        "heads": ["linear"], "adaptors": ["none"], "attacks": ["fgsm"],
        "eps": {"linf": ["8/255"]}, "epochs": 1, "limit": 60, "class_images": 0,
        "reporters": ["csv"], "executor": {"local": {"workers": 1}}}


def _has(flags, code="training-failed") -> list[bool]:
    return [code in str(f).split(";") for f in flags]


@pytest.mark.parametrize("lr, failed", [(50.0, True), (1e-3, False)])
def test_a_diverged_training_is_flagged_and_a_normal_one_is_not(tmp_path, lr, failed):
    name = "diverged" if failed else "normal"
    results = robench.run_grid({**GRID, "lr": lr, "name": name, "out": str(tmp_path)})
    assert len(results) == 2  # fgsm and the worst case
    assert _has(results["flags"]) == [failed] * 2
    board = build_leaderboard(results)
    assert _has(board["flags"]) == [failed]
    # what the flag read: the training task's own final accuracy
    store = Store(tmp_path / name / "results.sqlite")
    (train,) = [p for k, kind, p in store.db.execute(
        "SELECT key, kind, payload FROM tasks") if kind == "train"]
    train_acc = json.loads(train)["train_acc"]
    assert (train_acc <= 0.15) is failed
    if not failed:
        assert results["clean_acc"].iloc[0] > 0.5
