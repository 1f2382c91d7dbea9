"""merge_leaderboards: validated union of results files, provenance, duplicates, outputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robench.errors import UsageError
from robench.leaderboard import build_leaderboard
from robench.merge import (
    merge_leaderboards,
    merge_results,
    merged_report_paths,
    read_results,
    report_run,
)


@pytest.fixture
def two_runs(tmp_path, build_results) -> tuple[Path, Path]:
    a = tmp_path / "run-a" / "results.csv"
    b = tmp_path / "run-b.csv"
    a.parent.mkdir()
    build_results(run="run-a").to_csv(a, index=False)
    other = build_results(run="run-b")
    other["clean_acc"] -= 0.01
    other.to_csv(b, index=False)
    return a, b


def test_merge_is_the_union_with_provenance_and_writes_reports(tmp_path, two_runs,
                                                                reports_host):
    a, b = two_runs
    out = tmp_path / "out" / "merged.csv"
    merged = merge_leaderboards([a.parent, b], out, host=reports_host)  # a run folder works
    assert len(merged) == 2 * 96
    assert set(merged["run"]) == {"run-a", "run-b"}
    assert set(merged["source_file"]) == {str(a), str(b)}
    back = pd.read_csv(out)
    assert len(back) == len(merged) and "source_file" in back.columns
    paths = merged_report_paths(out)
    assert sorted(p.name for p in paths.values()) == [
        "merged.leaderboard.csv", "merged.leaderboard.html", "merged.leaderboard.md"]
    assert all(p.exists() for p in paths.values())
    board = pd.read_csv(paths["csv"])
    assert len(board) == 12 and set(board["run"]) == {"run-a", "run-b"}
    assert "source_file" in board.columns
    assert "run-a" in paths["md"].read_text()
    page = paths["html"].read_text()
    assert "run-b" in page and 'id="board"' in page
    assert 'id="examples"' not in page  # examples belong to single runs, not to a merge
    # the merged file reads back as a valid results table with the same leaderboard
    again = build_leaderboard(read_results(out))
    assert list(again["model"]) == list(board["model"])


def test_merging_into_an_existing_merge_keeps_row_provenance(tmp_path, two_runs,
                                                            build_results, reports_host):
    a, b = two_runs
    out = tmp_path / "board.csv"
    merge_leaderboards([a], out, host=reports_host)
    c = tmp_path / "run-c.csv"
    build_results(run="run-c").to_csv(c, index=False)
    merged = merge_leaderboards([out, b, c], out, host=reports_host)  # append to the board
    assert merged.groupby("run")["source_file"].first().to_dict() == {
        "run-a": str(a), "run-b": str(b), "run-c": str(c)}
    assert len(merged) == 3 * 96


def test_a_submission_without_run_names_is_named_after_its_file(tmp_path, build_results):
    path = tmp_path / "lab-x-submission.csv"
    build_results().drop(columns=["run"]).to_csv(path, index=False)
    assert set(read_results(path)["run"]) == {"lab-x-submission"}


def test_exact_duplicates_are_dropped(tmp_path, two_runs):
    a, _ = two_runs
    copy = tmp_path / "copy.csv"
    frame = pd.read_csv(a)
    frame["seconds"] = frame["seconds"] * 2  # a re-export with other timings: same numbers
    frame.to_csv(copy, index=False)
    merged = merge_results([a, copy, a])
    assert len(merged) == 96
    assert set(merged["source_file"]) == {str(a)}


def test_disagreeing_duplicates_are_refused_naming_both_files(tmp_path, two_runs):
    a, _ = two_runs
    tampered = tmp_path / "tampered.csv"
    frame = pd.read_csv(a)
    frame.loc[5, "robust_acc"] = 0.99
    frame.to_csv(tampered, index=False)
    with pytest.raises(UsageError) as error:
        merge_results([a, tampered])
    message = str(error.value)
    assert str(a) in message and str(tampered) in message
    assert "robust_acc" in message and "line 7" in message


def test_missing_columns_name_the_file_and_columns(tmp_path, two_runs):
    a, _ = two_runs
    bad = tmp_path / "no-robust.csv"
    pd.read_csv(a).drop(columns=["robust_acc", "eps"]).to_csv(bad, index=False)
    with pytest.raises(UsageError, match=r"no-robust\.csv: missing required column\(s\) eps, "
                                         r"robust_acc"):
        merge_results([a, bad])


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("robust_acc", "high", r"'robust_acc' must hold numbers; found line 4: 'high'"),
    ("clean_acc", "1.5", r"'clean_acc' must be in \[0, 1\]; found line 4: '1.5'"),
    ("robust_acc", "-0.1", r"'robust_acc' must be in \[0, 1\]"),
    ("robust_acc", "", r"'robust_acc' must hold numbers; found line 4: ''"),
    ("n", "12.5", r"'n' must hold integers"),
    ("eps", "inf", r"'eps' must be finite"),
    ("domain", "elsewhere", r"'domain' must be 'source' or 'target'"),
    ("status", "great", r"'status' must be one of ok, invalid, incomplete, failed"),
    ("model", "", r"'model' must not be blank"),
])
def test_bad_values_name_the_file_line_and_value(tmp_path, two_runs, column, value, expected):
    a, _ = two_runs
    bad = tmp_path / "bad.csv"
    frame = pd.read_csv(a, dtype=str, keep_default_na=False)
    frame.loc[2, column] = value
    frame.to_csv(bad, index=False)
    with pytest.raises(UsageError, match=r"bad\.csv: column " + expected):
        merge_results([bad])


def test_failed_rows_may_leave_accuracies_blank(tmp_path, two_runs):
    a, _ = two_runs
    path = tmp_path / "with-failure.csv"
    frame = pd.read_csv(a, dtype=str, keep_default_na=False)
    frame.loc[2, ["status", "robust_acc", "error"]] = ["failed", "", "RuntimeError: boom"]
    frame.to_csv(path, index=False)
    merged = merge_results([path])
    assert merged.loc[2, "status"] == "failed" and pd.isna(merged.loc[2, "robust_acc"])


def test_unusable_files_are_usage_errors(tmp_path, two_runs):
    a, _ = two_runs
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(pd.read_csv(a).columns) + "\n")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage\x00" * 50)
    with pytest.raises(UsageError, match=r"empty\.csv: the file is empty"):
        merge_results([a, empty])
    with pytest.raises(UsageError, match=r"header\.csv: the file has a header but no rows"):
        merge_results([header_only])
    with pytest.raises(UsageError, match=r"binary\.csv"):
        merge_results([binary])
    with pytest.raises(UsageError, match=r"missing\.csv does not exist"):
        merge_results([a, tmp_path / "missing.csv"])
    with pytest.raises(UsageError, match="results.csv"):
        merge_results([tmp_path])  # a folder without results.csv
    with pytest.raises(UsageError, match="Nothing to merge"):
        merge_results([])
    with pytest.raises(UsageError, match=r"must be a \.csv"):
        merge_leaderboards([a], tmp_path / "out.html")


def test_a_failed_merge_writes_nothing(tmp_path, two_runs, reports_host):
    a, _ = two_runs
    bad = tmp_path / "bad.csv"
    pd.read_csv(a).drop(columns=["model"]).to_csv(bad, index=False)
    out = tmp_path / "merged.csv"
    with pytest.raises(UsageError):
        merge_leaderboards([a, bad], out, host=reports_host)
    assert not out.exists()
    assert not any(p.exists() for p in merged_report_paths(out).values())


def test_incomplete_worst_case_rows_are_accepted(tmp_path, two_runs):
    a, _ = two_runs
    path = tmp_path / "incomplete.csv"
    frame = pd.read_csv(a, dtype=str, keep_default_na=False)
    worst = frame.index[frame["attack"] == "worst-case"][0]
    frame.loc[worst, ["status", "flags"]] = ["incomplete", "incomplete-worst-case:pgd"]
    frame.to_csv(path, index=False)
    merged = merge_results([path])
    assert merged.loc[worst, "status"] == "incomplete"


def test_report_run_validates_and_rebuilds(tmp_path, build_results, reports_host):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    build_results(run="disk").to_csv(run_dir / "results.csv", index=False)
    written = report_run(run_dir, reporters=["md"], host=reports_host)
    assert [p.name for p in written] == ["leaderboard.md"]
    assert "robench leaderboard: disk" in written[0].read_text()  # title from the run column
    frame = pd.read_csv(run_dir / "results.csv")
    frame.loc[0, "clean_acc"] = 7
    frame.to_csv(run_dir / "results.csv", index=False)
    with pytest.raises(UsageError, match=r"results\.csv: column 'clean_acc' must be in"):
        report_run(run_dir, reporters=["md"], host=reports_host)


def test_the_leaderboard_never_imports_merge():
    """merge imports leaderboard; the reverse would be an import cycle."""
    import subprocess
    import sys

    code = ("import sys, robench.leaderboard, robench_reports.plugin; "
            "assert 'robench.merge' not in sys.modules, 'robench.merge was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_bf16_rows_are_not_ranked_against_fp32_rows_unless_asked(tmp_path, build_results,
                                                                 reports_host):
    fp32, bf16 = tmp_path / "fp32.csv", tmp_path / "bf16.csv"
    build_results(run="full").assign(precision="fp32").to_csv(fp32, index=False)
    build_results(run="half").assign(precision="bf16").to_csv(bf16, index=False)
    with pytest.raises(UsageError, match=r"bf16, fp32.*--allow-mixed-precision"):
        merge_leaderboards([fp32, bf16], tmp_path / "out" / "m.csv", host=reports_host)
    merged = merge_leaderboards([fp32, bf16], tmp_path / "out" / "m.csv", host=reports_host,
                                allow_mixed_precision=True)
    assert set(merged["precision"]) == {"fp32", "bf16"}
    # a file from before the precision column counts as fp32: merging it with fp32 is fine
    old = tmp_path / "old.csv"
    build_results(run="old").to_csv(old, index=False)
    assert len(merge_leaderboards([old, fp32], tmp_path / "out" / "ok.csv",
                                  host=reports_host)) > 0
