"""Seeds as a grid axis, end to end on a tiny grid: each seed's tasks are those of a
one-seed run of that seed, results.csv keeps one row per seed, and the leaderboard's
aggregated row is what the per-seed rows give (mean, sample std, worst seed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import robench
from robench.leaderboard import build_leaderboard
from robench.store import Store

GRID = {"name": "seeds", "dataset": "digits", "target": "none", "backbones": ["digits-cnn"],
        "heads": ["linear"], "adaptors": ["none"], "attacks": ["fgsm"],
        "eps": {"linf": ["4/255", "8/255"]}, "epochs": 1, "limit": 60, "class_images": 0,
        "reporters": ["csv"], "executor": {"local": {"workers": 1}}}
#: one training, one clean pass and one attack per seed
TASKS_PER_SEED = 3


def _run(out, **overrides):
    grids = []
    results = robench.run_grid({**GRID, "out": str(out)}, on_grid=grids.append, **overrides)
    return results, grids[0]


def _stored_keys(run_dir) -> set[str]:
    return {key for (key,) in Store(run_dir / "results.sqlite").db.execute(
        "SELECT key FROM tasks WHERE key NOT LIKE '%.%'")}  # tasks, not their shards


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    results, grid = _run(out, seeds=[0, 1])
    return out, results, grid


def test_results_keep_one_row_per_seed(two_seeds):
    _, results, grid = two_seeds
    assert grid.reused == 0
    assert sorted(results["seed"].unique()) == [0, 1]
    assert len(results) == 2 * 4  # per seed: fgsm and the worst case at two eps
    assert (results.groupby("seed").size() == 4).all()
    # two trainings, two models: the seeds' numbers differ
    assert grid.seed_keys[0][0] != grid.seed_keys[1][0]
    numbers = results.pivot_table(index=["attack", "eps"], columns="seed",
                                  values=["clean_acc", "robust_acc"])
    assert not np.allclose(numbers.xs(0, axis=1, level=1), numbers.xs(1, axis=1, level=1))


def test_the_leaderboard_aggregates_the_seeds_rows(two_seeds):
    out, results, _ = two_seeds
    board = build_leaderboard(results)
    assert len(board) == 1
    row = board.iloc[0]
    # per seed, from the rows themselves: clean accuracy, and the worst case at each eps
    # (the headline is linf at 8/255)
    clean, worst = {}, {}
    for seed, rows in results.groupby("seed"):
        clean[seed] = rows["clean_acc"].iloc[0]
        w = rows[rows["attack"] == "worst-case"].set_index("eps_label")["robust_acc"]
        worst[seed] = w
    c = np.array([clean[0], clean[1]])
    h = np.array([worst[0]["8/255"], worst[1]["8/255"]])
    assert row["n_seeds"] == 2
    assert row["clean_acc"] == pytest.approx(c.mean())
    assert row["headline_acc"] == pytest.approx(h.mean())
    assert row["clean_acc_std"] == pytest.approx(c.std(ddof=1))
    assert row["headline_acc_std"] == pytest.approx(h.std(ddof=1))
    assert row["clean_acc_worst"] == pytest.approx(c.min())
    assert row["headline_acc_worst"] == pytest.approx(h.min())
    assert row["robust[linf@4/255]"] == pytest.approx(
        (worst[0]["4/255"] + worst[1]["4/255"]) / 2)
    fgsm = results[results["attack"] == "fgsm"]
    assert row["grad_evals"] == fgsm["grad_evals"].sum()
    assert row["seed"] == "0;1" and row["status"] == "ok"
    # each seed alone is a one-seed leaderboard of that seed
    for seed in (0, 1):
        single = build_leaderboard(results[results["seed"] == seed]).iloc[0]
        assert single["n_seeds"] == 1 and single["seed"] == seed
        assert single["headline_acc"] == pytest.approx(worst[seed]["8/255"])
        assert single["headline_acc_worst"] == single["headline_acc"]
    on_disk = pd.read_csv(out / "seeds" / "leaderboard.csv")
    assert on_disk["headline_acc"].iloc[0] == pytest.approx(row["headline_acc"])
    assert on_disk["n_seeds"].iloc[0] == 2


def test_one_seed_of_a_seeds_run_is_the_one_seed_run(two_seeds):
    """seed = 1 alone finds every task of seed 1 in the store: the same keys, rows and a
    leaderboard as before seeds existed, plus n_seeds = 1."""
    out, results, _ = two_seeds
    alone, grid = _run(out, seed=1)
    assert grid.reused == TASKS_PER_SEED
    ignore = ["seconds", "train_seconds"]
    expected = results[results["seed"] == 1].drop(columns=ignore).reset_index(drop=True)
    pd.testing.assert_frame_equal(alone.drop(columns=ignore), expected)
    board = build_leaderboard(alone)
    assert board["n_seeds"].tolist() == [1] and board["seed"].tolist() == [1]
    assert np.isnan(board["headline_acc_std"].iloc[0])
    assert board["headline_acc_worst"].iloc[0] == board["headline_acc"].iloc[0]


def test_adding_a_seed_runs_only_that_seeds_tasks(two_seeds):
    out, results, _ = two_seeds
    before = _stored_keys(out / "seeds")
    grown, grid = _run(out, seeds="0,1,2")
    assert grid.reused == 2 * TASKS_PER_SEED
    new = _stored_keys(out / "seeds") - before
    # exactly the third seed's tasks, keyed as a one-seed run of seed 2 keys them
    seed2 = {*grid.seed_keys[2][0].values(), *grid.seed_keys[2][1].values()}
    assert len(new) == TASKS_PER_SEED and seed2 <= new
    alone = robench.config.build_config({**GRID, "seed": 2})
    from robench.planning import train_key

    assert train_key(alone, grid.plans[0]) in new
    assert sorted(grown["seed"].unique()) == [0, 1, 2]
    ignore = ["seconds", "train_seconds"]
    pd.testing.assert_frame_equal(
        grown[grown["seed"] < 2].drop(columns=ignore).reset_index(drop=True),
        results.drop(columns=ignore).reset_index(drop=True))
    assert build_leaderboard(grown)["n_seeds"].tolist() == [3]
