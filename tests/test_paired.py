"""Paired differences over seeds, end to end on a tiny digits -> digits-m grid with three
seeds: the leaderboard's domain gaps and adaptation gains are per-seed differences averaged
over the seeds with a 95% t-interval, which the test recomputes from the per-seed rows; the
reports mark a difference whose interval holds 0 as not significant, and a one-seed run says
that its differences are untested."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import robench
from robench.leaderboard import build_leaderboard, paired_interval, significance

GRID = {"name": "paired", "dataset": "digits", "target": "digits-m",
        "backbones": ["digits-cnn"], "heads": ["linear"], "adaptors": ["none", "dann"],
        "attacks": ["fgsm"], "eps": {"linf": ["8/255"]}, "epochs": 1, "limit": 60,
        "class_images": 0, "reporters": ["csv", "md", "html"],
        "executor": {"local": {"workers": 1}}}
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("paired")
    results = robench.run_grid({**GRID, "out": str(out), "seeds": SEEDS})
    return out, results


def _per_seed(results: pd.DataFrame) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(model, domain, seed) -> (clean accuracy, worst case at 8/255), from the rows."""
    out = {}
    for (model, domain, seed), rows in results.groupby(["model", "domain", "seed"]):
        worst = rows.loc[rows["attack"] == "worst-case", "robust_acc"]
        out[model, domain, seed] = (float(rows["clean_acc"].iloc[0]), float(worst.iloc[0]))
    return out


def _expected_interval(diffs: list[float]) -> tuple[float, float, float]:
    d = np.array(diffs)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_gaps_and_gains_are_paired_by_seed_with_t_intervals(three_seeds):
    out, results = three_seeds
    board = pd.read_csv(out / "paired" / "leaderboard.csv")
    acc = _per_seed(results)
    dann, none = "digits-cnn+linear+dann", "digits-cnn+linear+none"
    checked = 0
    for model in (dann, none):
        for which, index in (("clean", 0), ("robust", 1)):
            diffs = [acc[model, "source", s][index] - acc[model, "target", s][index]
                     for s in SEEDS]
            mean, low, high = _expected_interval(diffs)
            for domain in ("source", "target"):
                row = board[(board["model"] == model) & (board["domain"] == domain)].iloc[0]
                assert row["n_seeds"] == 3
                assert row[f"gap_{which}"] == pytest.approx(mean)
                assert row[f"gap_{which}_ci_low"] == pytest.approx(low)
                assert row[f"gap_{which}_ci_high"] == pytest.approx(high)
                checked += 1
    for domain in ("source", "target"):
        row = board[(board["model"] == dann) & (board["domain"] == domain)].iloc[0]
        for which, index in (("clean", 0), ("robust", 1)):
            diffs = [acc[dann, domain, s][index] - acc[none, domain, s][index] for s in SEEDS]
            mean, low, high = _expected_interval(diffs)
            assert row[f"adapt_gain_{which}"] == pytest.approx(mean)
            assert row[f"adapt_gain_{which}_ci_low"] == pytest.approx(low)
            assert row[f"adapt_gain_{which}_ci_high"] == pytest.approx(high)
            checked += 1
    assert checked == 12
    # the twin without an adaptor has no adaptation gain, so no interval either
    twin = board[board["model"] == none]
    assert twin["adapt_gain_robust_ci_low"].isna().all()


def test_reports_mark_differences_within_the_spread(three_seeds):
    out, _ = three_seeds
    board = pd.read_csv(out / "paired" / "leaderboard.csv")
    verdicts = {}
    for row in board.to_dict("records"):
        for column in ("gap_clean", "gap_robust", "adapt_gain_clean", "adapt_gain_robust"):
            if not pd.isna(row[column]):
                verdicts[row["model"], row["domain"], column] = significance(
                    row[f"{column}_ci_low"], row[f"{column}_ci_high"], row["n_seeds"])
    # on this grid some differences are within the seed-to-seed spread and some are not
    assert "n.s." in verdicts.values() and "significant" in verdicts.values()
    md = (out / "paired" / "leaderboard.md").read_text()
    assert "Differences are paired by seed" in md and "Differences are untested" not in md
    table = md[md.index("## Paired differences"):]
    for (model, domain, column), verdict in verdicts.items():
        line = next(x for x in table.splitlines()
                    if x.startswith(f"| {model.replace('_', chr(92) + '_')} | {domain} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        position = ["gap_clean", "gap_robust", "adapt_gain_clean",
                    "adapt_gain_robust"].index(column) + 3
        assert cells[position].endswith("n.s.") == (verdict == "n.s."), (model, domain, column)
    html = (out / "paired" / "leaderboard.html").read_text()
    assert "not significant: the 95% t-interval over the seeds holds 0" in html


def test_one_seed_says_its_differences_are_untested(three_seeds):
    out, results = three_seeds
    alone = results[results["seed"] == 0]
    board = build_leaderboard(alone)
    assert (board["n_seeds"] == 1).all()
    assert board["gap_clean_ci_low"].isna().all()
    one = robench.run_grid({**GRID, "out": str(out), "seed": 0, "name": "paired"})
    assert len(one) == len(alone)  # every task found in the store
    md = (out / "paired" / "leaderboard.md").read_text()
    assert "Differences are untested" in md and "n.s." not in md
    html = (out / "paired" / "leaderboard.html").read_text()
    assert "Differences are untested" in html


def test_paired_interval_units():
    assert all(math.isnan(v) for v in paired_interval([0.1]))
    assert all(math.isnan(v) for v in paired_interval([0.1, float("nan")]))
    assert paired_interval([0.2, 0.2, 0.2]) == (pytest.approx(0.2), pytest.approx(0.2))
    low, high = paired_interval([0.0, 0.1])  # t(0.975, 1) = 12.71
    assert (low, high) == (pytest.approx(0.05 - 12.706 * 0.0707107 / math.sqrt(2), abs=1e-3),
                           pytest.approx(0.05 + 12.706 * 0.0707107 / math.sqrt(2), abs=1e-3))
    assert significance(low, high, 2) == "n.s."
    assert significance(0.01, 0.2, 3) == "significant"
    assert significance(float("nan"), float("nan"), 1) == "untested"


def test_no_paired_table_where_no_row_has_a_difference(three_seeds):
    """A several-seed grid with one model on one domain has nothing to pair: no table of
    dashes (seen on reproduce_at's one-model grid)."""
    from robench_reports.text import _paired_table

    _, results = three_seeds
    alone = results[(results["adaptor"] == "none") & (results["domain"] == "source")]
    assert _paired_table(build_leaderboard(alone), defended=False) == []
    table = _paired_table(build_leaderboard(results), defended=False)
    assert table[0].startswith("## Paired differences") and len(table) == 2 + 2 + 4 + 1
