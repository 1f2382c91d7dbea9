"""The grid end to end on digits -> digits-m with tiny timm and digit-CNN backbones."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import robench
from robench.evaluation import predict
from robench.results import COLUMN_NAMES

DESIGN_COLUMNS = ["model", "backbone", "head", "adaptor", "dataset", "domain", "attack",
                  "threat", "eps", "clean_acc", "robust_acc", "n", "grad_evals", "seconds",
                  "status", "flags", "seed", "device"]


def test_results_csv_has_every_row_and_column(small_run):
    run_dir, results = small_run
    on_disk = pd.read_csv(run_dir / "results.csv")
    assert list(on_disk.columns[: len(COLUMN_NAMES)]) == COLUMN_NAMES
    assert set(DESIGN_COLUMNS) <= set(on_disk.columns)
    # 4 models x 2 domains x (3 attacks + worst-case) x 3 eps
    assert len(on_disk) == 4 * 2 * 4 * 3 == len(results)
    assert set(on_disk["status"]) == {"ok"}
    assert set(on_disk["domain"]) == {"source", "target"}
    assert set(on_disk.loc[on_disk.domain == "target", "dataset"]) == {"digits-m"}
    assert (on_disk["n"] == 120).all()


def test_cascade_is_monotone_and_worst_case_is_per_sample(small_run):
    _, results = small_run
    for _, group in results.groupby(["model", "domain", "attack"]):
        acc = group.sort_values("eps")["robust_acc"].to_numpy()
        assert (np.diff(acc) <= 1e-12).all()
        assert (acc <= group["clean_acc"].to_numpy() + 1e-12).all()
    key = ["model", "domain", "eps"]
    worst = results[results.attack == "worst-case"].set_index(key)["robust_acc"]
    best = results[results.attack != "worst-case"].groupby(key)["robust_acc"].min()
    assert (worst <= best.loc[worst.index] + 1e-12).all()


def test_pgd_beats_fgsm_and_noise_and_costs_what_it_says(small_run):
    _, results = small_run
    r = results.set_index(["model", "domain", "attack", "eps"])
    for model in results.model.unique():
        for eps in results.eps.unique():
            pgd = r.loc[(model, "source", "pgd", eps)]
            assert pgd.robust_acc <= r.loc[(model, "source", "noise", eps)].robust_acc
            assert pgd.robust_acc <= r.loc[(model, "source", "fgsm", eps)].robust_acc + 0.02
    first = results[(results.attack == "pgd") & (results.eps == results.eps.min())]
    # 5 steps on every correctly classified sample (early exit can only lower it)
    assert (first.grad_evals <= 5 * first.clean_acc * first.n + 1e-9).all()
    assert (first.grad_evals >= first.clean_acc * first.n).all()
    assert (results[results.attack == "noise"].grad_evals == 0).all()


def test_timm_backbone_learns_digits(small_run):
    _, results = small_run
    clean = results[(results.domain == "source")].groupby("model")["clean_acc"].first()
    assert clean["timm:test_resnet+linear+none"] > 0.9


def test_load_model_reproduces_the_clean_accuracy(small_run):
    run_dir, results = small_run
    model = robench.load_model(run_dir, "digits-cnn+linear+none")
    assert not model.training
    bundle = robench.PluginHost.create().build("dataset", "digits")
    x, y = robench.as_tensors(bundle.test)
    order, _ = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:120].sort()
    acc = float((predict(model, x[order]) == y[order]).float().mean())
    row = results[(results.model == "digits-cnn+linear+none") & (results.domain == "source")]
    assert acc == pytest.approx(row.clean_acc.iloc[0])
    with pytest.raises(robench.UsageError, match="digits-cnn\\+linear\\+none"):
        robench.load_model(run_dir, "no-such-model")


def test_provenance_and_reports(small_run, small_grid):
    run_dir, _ = small_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["versions"]["robench"] == robench.__version__
    assert {"torch", "timm"} <= set(run["versions"])
    assert run["config"]["attacks"] == small_grid["attacks"] and run["seed"] == 0
    assert run["device"] == "cpu"
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.html"):
        assert (run_dir / name).stat().st_size > 0
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert len(board) == 8  # one row per model and domain
    assert list(run_dir.glob("models/*.safetensors"))


def test_rerun_resumes_without_recomputing(small_run, small_grid, tmp_path):
    import shutil

    run_dir, results = small_run
    copy = tmp_path / "small"
    shutil.copytree(run_dir, copy)
    calls = []
    again = robench.run_grid({**small_grid, "out": str(tmp_path)},
                             on_grid=lambda g: calls.append(g))
    pd.testing.assert_frame_equal(
        again.drop(columns=["seconds"]), results.drop(columns=["seconds"]))
    grid = calls[0]
    assert grid.failures == []
    (rows,) = grid.store.db.execute(  # tasks; their shards are rows of their own
        "SELECT COUNT(*) FROM tasks WHERE key NOT LIKE '%.%'").fetchone()
    assert rows == 4 + 4 * 2 * 4  # no duplicate task rows


def test_corruptions_run_per_severity_with_worst_case(tmp_path):
    results = robench.run_grid({
        "name": "corrupt", "dataset": "digits", "target": "none", "backbones": ["digits-cnn"],
        "adaptors": ["none"], "attacks": ["gaussian-noise", "contrast"],
        "eps": {"corruption": [1, 3, 5]}, "limit": 40, "epochs": 1, "reporters": ["csv"],
        "out": str(tmp_path),
    })
    assert set(results.threat) == {"corruption"} and set(results.status) == {"ok"}
    assert sorted(results.eps.unique()) == [1.0, 3.0, 5.0]
    worst = results[results.attack == "worst-case"].set_index("eps")["robust_acc"]
    each = results[results.attack != "worst-case"].groupby("eps")["robust_acc"].min()
    assert (worst <= each + 1e-12).all()
    assert (results.grad_evals == 0).all()  # corruptions never ask for a gradient
