"""build_leaderboard: columns, ranking, headline choice, intervals, AUC, gaps and totals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from robench.leaderboard import (
    HEADLINE_DOC,
    build_leaderboard,
    choose_headline,
    main_eps,
    normalised_auc,
    report_context,
    reporter_params,
    wilson_interval,
)
from robench.results import coerce_results


def test_one_row_per_model_and_domain_with_documented_columns(results):
    board = build_leaderboard(results)
    assert len(board) == 6
    assert not board.duplicated(["model", "domain"]).any()
    for column in ["rank", "model", "backbone", "head", "adaptor", "dataset", "domain", "n",
                   "clean_acc", "clean_ci_low", "clean_ci_high", "headline_acc",
                   "headline_ci_low", "headline_ci_high", "headline_metric", "headline_source",
                   "robust[linf@2/255]", "robust[linf@4/255]", "robust[linf@8/255]",
                   "robust[linf@16/255]", "robust[l2@0.5]", "robust[l2@1]", "auc[linf]",
                   "auc[l2]", "gap_clean", "gap_robust", "adapt_gain_clean",
                   "adapt_gain_robust", "flags", "status", "params", "train_seconds",
                   "attack_seconds", "grad_evals", "queries", "run", "seed", "device"]:
        assert column in board.columns, column
    robust = [c for c in board.columns if c.startswith("robust[")]
    assert robust == ["robust[linf@2/255]", "robust[linf@4/255]", "robust[linf@8/255]",
                      "robust[linf@16/255]", "robust[l2@0.5]", "robust[l2@1]"]
    assert set(board["headline_metric"]) == {"worst-case robust accuracy, linf @ 8/255"}
    assert "worst-case robust accuracy" in HEADLINE_DOC


def test_headline_is_the_worst_case_row_at_the_main_eps(results):
    board = build_leaderboard(results)
    for row in board.itertuples():
        expected = results[(results["model"] == row.model) & (results["domain"] == row.domain)
                           & (results["attack"] == "worst-case") & (results["threat"] == "linf")
                           & np.isclose(results["eps"], 8 / 255)]["robust_acc"]
        assert row.headline_acc == pytest.approx(float(expected.iloc[0]))
        assert row.headline_source == "worst-case"


def test_rows_are_ranked_best_first_within_each_test_set(results):
    board = build_leaderboard(results)
    assert list(board["domain"]) == ["source"] * 3 + ["target"] * 3
    for _, block in board.groupby("domain"):
        assert list(block["rank"]) == [1, 2, 3]
        assert list(block["headline_acc"]) == sorted(block["headline_acc"], reverse=True)


def test_ties_on_the_headline_are_broken_by_clean_accuracy(build_results, model_spec):
    # identical robustness curve (decay 1 * clean) would differ; make headline equal instead
    models = [
        model_spec("a", "linear", "none", {"source": 0.80}, {"source": 0.5}, name="low-clean"),
        model_spec("b", "linear", "none", {"source": 0.90}, {"source": 0.5}, name="high-clean"),
    ]
    results = build_results(models, domains=("source",))
    worst = (results["attack"] == "worst-case") & (results["threat"] == "linf")
    results.loc[worst, "robust_acc"] = 0.5  # same worst case everywhere
    board = build_leaderboard(results)
    assert list(board["model"]) == ["high-clean", "low-clean"]
    assert list(board["rank"]) == [1, 2]


def test_headline_eps_is_the_grid_eps_closest_to_the_reference():
    assert main_eps("linf", [2 / 255, 4 / 255, 16 / 255]) == pytest.approx(4 / 255)
    assert main_eps("linf", [4 / 255, 12 / 255]) == pytest.approx(12 / 255)  # tie: larger
    assert main_eps("l2", [0.25, 1.0]) == pytest.approx(0.25)
    assert main_eps("mystery", [1.0, 2.0, 3.0, 4.0]) == 2.0  # lower median


def test_headline_without_linf_uses_the_next_threat(build_results):
    results = build_results()
    results = results[results["threat"] == "l2"]
    headline = choose_headline(results)
    assert (headline.threat, headline.eps_label) == ("l2", "0.5")
    board = build_leaderboard(results)
    assert board["headline_acc"].notna().all()
    assert set(board["headline_metric"]) == {"worst-case robust accuracy, l2 @ 0.5"}


def test_without_worst_case_rows_the_headline_is_the_minimum_over_attacks(build_results):
    results = build_results(worst_case=False)
    board = build_leaderboard(results)
    assert set(board["headline_source"]) == {"min-over-attacks"}
    first = board.iloc[0]
    at = results[(results["model"] == first["model"]) & (results["domain"] == first["domain"])
                 & (results["threat"] == "linf") & np.isclose(results["eps"], 8 / 255)]
    assert first["headline_acc"] == pytest.approx(at["robust_acc"].min())


def test_a_clean_only_run_is_ranked_by_clean_accuracy(build_results):
    results = build_results()
    results = results[results["attack"] == "fgsm"].copy()
    results["threat"], results["attack"], results["eps"] = "none", "clean", 0.0
    results = results.drop_duplicates(["model", "domain"])
    board = build_leaderboard(results)
    assert choose_headline(results).threat == "none"
    assert list(board["headline_acc"]) == list(board["clean_acc"])
    assert list(board[board["domain"] == "source"]["clean_acc"]) == [0.95, 0.93, 0.90]


def test_wilson_interval_matches_a_hand_computation():
    # 90 of 100: centre (0.9 + z^2/200) / (1 + z^2/100), half-width as in Wilson (1927)
    z = 1.959963984540054
    centre = (0.9 + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(0.9 * 0.1 / 100 + z * z / 40000) / (1 + z * z / 100)
    low, high = wilson_interval(0.9, 100)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.8256, 0.9448), abs=1e-4)  # textbook value
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, z * z / (10 + z * z)), abs=1e-12)
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0))
    assert all(math.isnan(v) for v in wilson_interval(float("nan"), 10))


def test_leaderboard_intervals_use_n(results):
    board = build_leaderboard(results)
    row = board.iloc[0]
    assert (row["clean_ci_low"], row["clean_ci_high"]) == pytest.approx(
        wilson_interval(row["clean_acc"], 200))
    assert (row["headline_ci_low"], row["headline_ci_high"]) == pytest.approx(
        wilson_interval(row["headline_acc"], 200))
    assert row["clean_ci_low"] < row["clean_acc"] < row["clean_ci_high"]


def test_auc_matches_a_hand_computed_trapezoid(build_results, model_spec):
    # clean 0.9; robust 0.8, 0.6, 0.4, 0.1 at eps 2, 4, 8, 16 (/255):
    # area = 2*(0.9+0.8)/2 + 2*(0.8+0.6)/2 + 4*(0.6+0.4)/2 + 8*(0.4+0.1)/2 = 7.1 (/255)
    expected = 7.1 / 16
    eps = [2 / 255, 4 / 255, 8 / 255, 16 / 255]
    assert normalised_auc(eps, [0.8, 0.6, 0.4, 0.1], 0.9, max_eps=16 / 255) == pytest.approx(
        expected)
    results = build_results([model_spec("m", "linear", "none", {"source": 0.9},
                                        {"source": 0.5})], domains=("source",), l2=False)
    worst = results["attack"] == "worst-case"
    for e, value in zip(eps, [0.8, 0.6, 0.4, 0.1], strict=True):
        results.loc[worst & np.isclose(results["eps"], e), "robust_acc"] = value
    board = build_leaderboard(results)
    assert board.loc[0, "auc[linf]"] == pytest.approx(expected)
    # a curve missing its largest eps has no comparable area
    assert math.isnan(normalised_auc(eps[:3], [0.8, 0.6, 0.4], 0.9, max_eps=16 / 255))


def test_domain_gap_and_adaptation_gain(results):
    board = build_leaderboard(results).set_index(["model", "domain"])
    none = "digits-cnn+linear+none"
    dann = "digits-cnn+linear+dann"
    assert board.loc[(none, "source"), "gap_clean"] == pytest.approx(0.95 - 0.60)
    assert board.loc[(none, "target"), "gap_clean"] == pytest.approx(0.95 - 0.60)
    assert board.loc[(none, "source"), "gap_robust"] == pytest.approx(
        board.loc[(none, "source"), "headline_acc"] - board.loc[(none, "target"),
                                                                "headline_acc"])
    assert board.loc[(dann, "target"), "adapt_gain_clean"] == pytest.approx(0.75 - 0.60)
    assert board.loc[(dann, "target"), "adapt_gain_robust"] == pytest.approx(
        board.loc[(dann, "target"), "headline_acc"] - board.loc[(none, "target"),
                                                                "headline_acc"])
    assert board.loc[(dann, "source"), "adapt_gain_clean"] == pytest.approx(0.93 - 0.95)
    assert board[board["adaptor"] == "none"]["adapt_gain_clean"].isna().all()


def test_flags_status_and_cost_totals(results):
    results = results.copy()
    model = "digits-cnn+linear+none"
    mine = (results["model"] == model) & (results["domain"] == "source")
    results.loc[mine & (results["attack"] == "fgsm"), "flags"] = "robust>clean;eps-monotone"
    results.loc[mine & (results["attack"] == "pgd"), "flags"] = "zero-grad"
    failed = mine & (results["attack"] == "pgd-l2") & np.isclose(results["eps"], 1.0)
    results.loc[failed, ["status", "robust_acc"]] = ["failed", np.nan]
    invalid = mine & (results["attack"] == "pgd") & np.isclose(results["eps"], 2 / 255)
    results.loc[invalid, "status"] = "invalid"
    board = build_leaderboard(results).set_index(["model", "domain"])
    row = board.loc[(model, "source")]
    assert row["flags"] == "eps-monotone;robust>clean;zero-grad"
    assert row["status"] == "ok 14, invalid 1, failed 1"
    # fgsm 4 + pgd 4 + pgd-l2 2 attack rows of 0.5 s and 2000 gradients; worst-case excluded
    assert row["attack_seconds"] == pytest.approx(5.0)
    assert row["grad_evals"] == 10 * 2000
    # the l2 worst-case row at eps 1 still exists, so the curve is complete
    assert np.isfinite(row["auc[l2]"])
    assert board.loc[(model, "target"), "status"] == "ok"


def test_merged_runs_share_a_ranking_and_keep_their_run(build_results):
    a = build_results(run="run-a")
    b = build_results(run="run-b")
    b["clean_acc"] = b["clean_acc"] - 0.05
    board = build_leaderboard(pd.concat([a, b], ignore_index=True))
    assert len(board) == 12
    source = board[board["domain"] == "source"]
    # equal headlines per model; run-b's lower clean accuracy breaks each tie
    assert list(source["rank"]) == list(range(1, 7))
    assert list(source["run"]) == ["run-a", "run-b"] * 3
    assert set(board["run"]) == {"run-a", "run-b"}
    # the adaptation baseline is looked up inside the same run
    assert board["adapt_gain_clean"].notna().sum() == 4


def test_empty_results_give_an_empty_board_with_columns():
    board = build_leaderboard(coerce_results(pd.DataFrame()))
    assert board.empty
    assert {"rank", "model", "clean_acc", "headline_acc"} <= set(board.columns)


def _broken_and_good(build_results, model_spec, *, flag: bool = True):
    """A near-chance model that is never fooled (14% clean, robust = clean) and a useful one."""
    models = [
        model_spec("a", "linear", "none", {"source": 0.95, "target": 0.14},
                   {"source": 0.0, "target": 0.0}, name="broken"),
        model_spec("b", "linear", "none", {"source": 0.90, "target": 0.25},
                   {"source": 0.5, "target": 1.0}, name="useful"),
    ]
    results = build_results(models)
    if flag:
        rows = (results["model"] == "broken") & (results["domain"] == "target")
        results.loc[rows, "flags"] = "near-chance"
    return results


def test_a_near_chance_model_is_ranked_last_and_marked(build_results, model_spec):
    results = _broken_and_good(build_results, model_spec)
    board = build_leaderboard(results)
    target = board[board["domain"] == "target"]
    broken = target.set_index("model").loc["broken"]
    useful = target.set_index("model").loc["useful"]
    assert broken["headline_acc"] > useful["headline_acc"]  # never fooled: a higher number
    assert list(target["model"]) == ["useful", "broken"]  # ... but it does not win
    assert list(target["rank"]) == [1, 2]
    assert bool(broken["near_chance"]) and not bool(useful["near_chance"])
    # on the source test set it is a good model and ranks normally
    source = board[board["domain"] == "source"]
    assert list(source["model"]) == ["broken", "useful"]
    assert not source["near_chance"].any()
    assert "near chance" in HEADLINE_DOC and "1.5 times chance" in HEADLINE_DOC


def test_a_num_classes_column_sets_the_floor_without_flags(build_results, model_spec):
    results = _broken_and_good(build_results, model_spec, flag=False)
    assert list(build_leaderboard(results).query("domain == 'target'")["model"]) == [
        "broken", "useful"]  # without flag or class count nothing marks it
    results["num_classes"] = 10  # floor 15%
    board = build_leaderboard(results)
    target = board[board["domain"] == "target"]
    assert list(target["model"]) == ["useful", "broken"]
    assert list(target["near_chance"]) == [False, True]


def test_an_incomplete_worst_case_marks_the_headline(build_results):
    results = build_results()
    model = "digits-cnn+linear+dann"
    at = ((results["model"] == model) & (results["domain"] == "target")
          & (results["attack"] == "worst-case") & (results["eps_label"] == "8/255"))
    results.loc[at, ["status", "flags"]] = ["incomplete", "incomplete-worst-case:pgd"]
    elsewhere = ((results["model"] == model) & (results["domain"] == "source")
                 & (results["attack"] == "worst-case") & (results["eps_label"] == "2/255"))
    results.loc[elsewhere, "status"] = "incomplete"  # not the headline eps: no mark
    board = build_leaderboard(results).set_index(["model", "domain"])
    assert board.loc[(model, "target"), "headline_status"] == "incomplete"
    assert board.loc[(model, "source"), "headline_status"] == "ok"
    assert board.loc[(model, "target"), "status"] == "ok 15, incomplete 1"
    # without worst-case rows, a failed attack at the headline eps leaves the minimum over
    # fewer attacks: incomplete too
    results = build_results(worst_case=False)
    failed = ((results["model"] == model) & (results["domain"] == "source")
              & (results["attack"] == "pgd") & (results["eps_label"] == "8/255"))
    results.loc[failed, ["status", "robust_acc"]] = ["failed", np.nan]
    board = build_leaderboard(results).set_index(["model", "domain"])
    assert board.loc[(model, "source"), "headline_status"] == "incomplete"
    assert board.loc[(model, "target"), "headline_status"] == "ok"


def test_upcoming_columns_and_complete_models_are_tolerated(build_results, model_spec):
    models = [
        model_spec("", "", "", {"source": 0.9, "target": 0.5}, {"source": 0.5, "target": 0.5},
                   name="timm:resnet18"),
        model_spec("", "", "", {"source": 0.8, "target": 0.4}, {"source": 0.2, "target": 0.2},
                   name="file:model.pt"),
        model_spec("digits-cnn", "linear", "none", {"source": 0.9, "target": 0.5},
                   {"source": 0.5, "target": 0.5}),
    ]
    results = build_results(models)
    results["precision"] = ["bf16" if i % 3 else "" for i in range(len(results))]
    results["defense"] = np.where(results["model"] == "file:model.pt", "pgd-at", "")
    results.loc[results["model"] == "timm:resnet18", "defense"] = pd.NA
    board = build_leaderboard(results)
    assert len(board) == 6
    assert {"precision", "defense"} <= set(board.columns)
    assert list(board.columns).index("defense") < list(board.columns).index("dataset")
    rows = board.set_index(["model", "domain"])
    assert rows.loc[("file:model.pt", "source"), "defense"] == "pgd-at"
    assert rows.loc[("timm:resnet18", "source"), "defense"] == ""
    assert rows.loc[("timm:resnet18", "source"), "precision"] == "bf16"
    assert rows.loc[("timm:resnet18", "source"), "backbone"] == ""
    # a complete model has no adaptor, so no adaptation gain; its domain gap still exists
    assert rows.loc[("timm:resnet18", "target"), ["adapt_gain_clean"]].isna().all()
    assert rows.loc[("timm:resnet18", "target"), "gap_clean"] == pytest.approx(0.4)
    assert board["headline_acc"].notna().all()


def test_report_context_is_built_in_one_place(tmp_path, build_results):
    run_json = {"name": "grid-run", "config": {"name": "grid-run", "reporters": ["md"],
                                               "params": {"reporter": {"md": {"stem": "x"}}}},
                "versions": {"torch": "2"}, "seed": 3}
    ctx = report_context(tmp_path, run_json)
    assert ctx == {"name": "grid-run", "config": run_json["config"],
                   "provenance": {"versions": {"torch": "2"}, "seed": 3},
                   "examples_dir": tmp_path / "examples"}
    assert reporter_params(ctx["config"]) == {"md": {"stem": "x"}}
    assert reporter_params({}) == {} and reporter_params({"params": {"reporter": 3}}) == {}
    merged = report_context(tmp_path, {"provenance": {"runs": ["a", "b"]}}, name="merged",
                            examples=False)
    assert merged == {"name": "merged", "config": {}, "provenance": {"runs": ["a", "b"]},
                      "examples_dir": None}
    bare = report_context(tmp_path / "folder", None, results=build_results(run="from-csv"))
    assert bare["name"] == "from-csv" and bare["provenance"] == {}
    assert report_context(tmp_path / "folder")["name"] == "folder"


# --------------------------------------------------------------------------- seeds


def _two_model_seeds(build_results, model_spec, decays):
    """Per seed, two models: A decays by ``decays[seed][0]``, B by ``decays[seed][1]``."""
    frames = []
    for seed, (a, b) in decays.items():
        models = (model_spec("digits-cnn", "linear", "none", {"source": 0.9}, {"source": a},
                             name="A"),
                  model_spec("digits-cnn", "mlp", "none", {"source": 0.9}, {"source": b},
                             name="B"))
        frames.append(build_results(models, domains=("source",), l2=False, seed=seed))
    return pd.concat(frames, ignore_index=True)


def test_seeds_rank_by_the_mean_with_spread_and_worst_seed(build_results, model_spec):
    """A wins seed 0 but loses on average: B ranks first; each entry carries n_seeds, the
    standard deviation over seeds and its worst seed, all from the per-seed boards."""
    results = _two_model_seeds(build_results, model_spec, {0: (0.3, 0.4), 1: (0.9, 0.35),
                                                            2: (0.8, 0.3)})
    seed0 = build_leaderboard(results[results.seed == 0]).set_index("model")
    assert seed0.loc["A", "rank"] == 1
    board = build_leaderboard(results).set_index("model")
    assert len(board) == 2 and board.loc["B", "rank"] == 1 and board.loc["A", "rank"] == 2
    singles = [build_leaderboard(results[results.seed == s]).set_index("model")
               for s in (0, 1, 2)]
    for model in ("A", "B"):
        head = np.array([s.loc[model, "headline_acc"] for s in singles])
        row = board.loc[model]
        assert row["n_seeds"] == 3 and row["seed"] == "0;1;2"
        assert row["headline_acc"] == pytest.approx(head.mean())
        assert row["headline_acc_std"] == pytest.approx(head.std(ddof=1))
        assert row["headline_acc_worst"] == pytest.approx(head.min())
        assert row["clean_acc_std"] == pytest.approx(0.0)
        assert row["auc[linf]"] == pytest.approx(
            np.mean([s.loc[model, "auc[linf]"] for s in singles]))
        # the interval is the Wilson interval of the mean over the n samples
        low, high = wilson_interval(row["headline_acc"], row["n"])
        assert (row["headline_ci_low"], row["headline_ci_high"]) == pytest.approx((low, high))
        assert row["grad_evals"] == sum(s.loc[model, "grad_evals"] for s in singles)


def test_one_seed_board_is_the_board_of_before_plus_n_seeds(results):
    board = build_leaderboard(results)
    assert (board["n_seeds"] == 1).all() and board["seed"].dtype.kind == "i"
    assert board["headline_acc_std"].isna().all() and board["clean_acc_std"].isna().all()
    assert np.allclose(board["headline_acc_worst"], board["headline_acc"], equal_nan=True)
