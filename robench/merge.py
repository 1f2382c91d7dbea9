"""Merge results tables from several runs or outside submissions into one leaderboard.

``robench leaderboard merge A.csv B.csv -o OUT`` is how a group keeps one public leaderboard
that anyone can add to, so its inputs are untrusted: every file is validated (columns,
types, accuracies in [0, 1]) and a problem is a :class:`robench.UsageError` naming the file,
the line and what is accepted, never a half-written leaderboard.  Rows keep where they came
from (``source_file``, and ``run``, filled from the file name when a submission has none).
The same measurement submitted twice is kept once; two files claiming different numbers for
the same model, domain, dataset, attack, eps and run are refused, naming both, because
silently keeping either would make the leaderboard untrustworthy.

``robench report RUN_DIR`` (:func:`report_run`) lives here too, because it validates the
run's results.csv like a merge input.  This module imports :mod:`robench.leaderboard`; the
leaderboard never imports this one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench.errors import UsageError
from robench.io import atomic_write_text
from robench.leaderboard import (
    DEFAULT_REPORTERS,
    eps_key,
    read_run_json,
    report_context,
    reporter_params,
    write_reports,
)
from robench.results import coerce_results

#: columns an input must have: what identifies a row and what it measured
REQUIRED_COLUMNS: tuple[str, ...] = (
    "model", "backbone", "head", "adaptor", "dataset", "domain", "attack", "threat", "eps",
    "clean_acc", "robust_acc", "n",
)
#: columns identifying one measurement; two rows with the same key must agree
KEY_COLUMNS: tuple[str, ...] = ("run", "model", "dataset", "domain", "attack", "threat", "eps")
#: the measured values compared between rows with the same key (timings may differ)
VALUE_COLUMNS: tuple[str, ...] = ("clean_acc", "robust_acc", "n", "n_robust", "n_invalid",
                                  "status")
COUNT_COLUMNS: tuple[str, ...] = ("n", "n_robust", "n_invalid", "n_verify_mismatch",
                                  "n_precision_mismatch", "grad_evals", "queries", "seed",
                                  "params")
DOMAINS: tuple[str, ...] = ("source", "target")
#: ``incomplete``: a worst-case row combining fewer attacks than the grid names (one failed)
STATUSES: tuple[str, ...] = ("ok", "invalid", "incomplete", "failed")
#: merged reports are written next to OUT as OUT-stem + this + .csv/.md/.html
LEADERBOARD_SUFFIX = ".leaderboard"
MERGE_REPORTERS: tuple[str, ...] = ("csv", "md", "html")


def _resolve(path: str | Path) -> Path:
    """A results file; a run folder stands for its results.csv."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "results.csv"
        if not candidate.is_file():
            raise UsageError(f"{path} is a folder without a results.csv; pass a results file.")
        return candidate
    if not path.exists():
        raise UsageError(f"Results file {path} does not exist.")
    return path


def _bad_values(frame: pd.DataFrame, column: str, mask: pd.Series) -> str:
    """`line 3: 'abc', line 7: ''`: the first offending values (CSV line = index + 2)."""
    shown = [f"line {i + 2}: {frame.at[i, column]!r}" for i in frame.index[mask][:3]]
    more = int(mask.sum()) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _numeric(frame: pd.DataFrame, column: str, path: Path, *, allow_blank: pd.Series,
             integer: bool = False, low: float | None = None,
             high: float | None = None) -> pd.Series:
    """``frame[column]`` as numbers, or a UsageError naming the file, lines and values."""
    text = frame[column].astype(str).str.strip()
    values = pd.to_numeric(text.where(text != "", None), errors="coerce")
    blank = text == ""
    bad = values.isna() & ~blank
    bad |= blank & ~allow_blank
    if bad.any():
        kind = "integers" if integer else "numbers"
        raise UsageError(
            f"{path}: column {column!r} must hold {kind}; found {_bad_values(frame, column, bad)}."
        )
    finite = values.dropna()
    if not np.isfinite(finite).all():
        bad = values.isin([np.inf, -np.inf])
        raise UsageError(f"{path}: column {column!r} must be finite; found "
                         f"{_bad_values(frame, column, bad)}.")
    if integer and (finite != np.floor(finite)).any():
        bad = values.notna() & (values != np.floor(values))
        raise UsageError(f"{path}: column {column!r} must hold integers; found "
                         f"{_bad_values(frame, column, bad)}.")
    out_of_range = pd.Series(False, index=values.index)
    if low is not None:
        out_of_range |= values < low
    if high is not None:
        out_of_range |= values > high
    if out_of_range.any():
        accepted = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise UsageError(f"{path}: column {column!r} must be in {accepted}; found "
                         f"{_bad_values(frame, column, out_of_range)}.")
    return values


def read_results(path: str | Path, *, source_column: bool = True) -> pd.DataFrame:
    """Read and validate one results.csv; the rows with contract dtypes.

    A blank accuracy is accepted only on a ``failed`` row (a task that raised measured
    nothing).  A file without a ``run`` column, or with blank runs, gets the file's stem, so
    two submissions of a model called the same stay apart.  ``source_column`` adds
    ``source_file`` (the path read), which a merge keeps as provenance.
    """
    frame = _read_validated(path)
    frame = frame.drop(columns=["_file", "_line"])
    if not source_column:
        frame = frame.drop(columns=["source_file"])
    return frame


def _read_validated(path: str | Path) -> pd.DataFrame:
    """:func:`read_results` plus ``source_file``, and ``_file``/``_line`` for messages."""
    path = _resolve(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except pd.errors.EmptyDataError as exc:
        raise UsageError(f"{path}: the file is empty; expected a results.csv with a header "
                         f"row and one row per model x domain x attack x eps.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable as CSV ({type(exc).__name__}: {exc}).") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(
            f"{path}: missing required column(s) {', '.join(missing)}. A results file needs "
            f"at least {', '.join(REQUIRED_COLUMNS)} (see docs/results.md)."
        )
    if frame.empty:
        raise UsageError(f"{path}: the file has a header but no rows.")
    frame = frame.reset_index(drop=True)
    status = frame["status"].str.strip() if "status" in frame else pd.Series("ok", frame.index)
    status = status.replace("", "ok")
    failed = status == "failed"
    unknown = ~status.isin(STATUSES)
    if unknown.any():
        raise UsageError(f"{path}: column 'status' must be one of {', '.join(STATUSES)}; "
                         f"found {_bad_values(frame.assign(status=status), 'status', unknown)}.")
    for column in ("model", "dataset", "domain", "attack", "threat"):
        blank = frame[column].str.strip() == ""
        if blank.any():
            raise UsageError(f"{path}: column {column!r} must not be blank; found "
                             f"{_bad_values(frame, column, blank)}.")
    bad_domain = ~frame["domain"].isin(DOMAINS)
    if bad_domain.any():
        raise UsageError(f"{path}: column 'domain' must be 'source' or 'target'; found "
                         f"{_bad_values(frame, 'domain', bad_domain)}.")
    never_blank = pd.Series(False, index=frame.index)
    numbers: dict[str, pd.Series] = {
        "eps": _numeric(frame, "eps", path, allow_blank=never_blank, low=0.0),
        "clean_acc": _numeric(frame, "clean_acc", path, allow_blank=failed, low=0.0, high=1.0),
        "robust_acc": _numeric(frame, "robust_acc", path, allow_blank=failed, low=0.0,
                               high=1.0),
        "n": _numeric(frame, "n", path, allow_blank=never_blank, integer=True, low=0.0),
    }
    anything = pd.Series(True, index=frame.index)
    for column in COUNT_COLUMNS:
        if column in frame and column not in numbers:
            numbers[column] = _numeric(frame, column, path, allow_blank=anything, integer=True)
    for column in ("seconds", "train_seconds"):
        if column in frame:
            numbers[column] = _numeric(frame, column, path, allow_blank=anything, low=0.0)
    for column, values in numbers.items():
        frame[column] = values
    frame["status"] = status
    if "run" not in frame:
        frame["run"] = ""
    frame["run"] = frame["run"].where(frame["run"].str.strip() != "", path.stem)
    # an already merged file keeps the provenance of its rows
    if "source_file" in frame:
        kept = frame["source_file"].str.strip() != ""
        frame["source_file"] = frame["source_file"].where(kept, str(path))
    else:
        frame["source_file"] = str(path)
    frame["_file"] = str(path)
    frame["_line"] = frame.index + 2
    return coerce_results(frame)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=0,
                                                                 abs_tol=1e-9)
    return a == b


def _deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated measurements; refuse rows with one key and different numbers."""
    key = frame[list(KEY_COLUMNS)].assign(eps=frame["eps"].map(eps_key))
    keep: dict[tuple[Any, ...], int] = {}
    drop: list[int] = []
    for index, row_key in zip(frame.index, key.itertuples(index=False, name=None),
                              strict=True):
        first = keep.get(row_key)
        if first is None:
            keep[row_key] = index
            continue
        differing = [c for c in VALUE_COLUMNS
                     if not _same(frame.at[first, c], frame.at[index, c])]
        if differing:
            where = ", ".join(f"{c}={v!r}" for c, v in zip(KEY_COLUMNS, row_key, strict=True))
            values = "; ".join(
                f"{c}: {frame.at[first, c]!r} vs {frame.at[index, c]!r}" for c in differing)
            raise UsageError(
                f"Conflicting results for the same measurement ({where}): "
                f"{frame.at[first, '_file']} line {frame.at[first, '_line']} and "
                f"{frame.at[index, '_file']} line {frame.at[index, '_line']} "
                f"disagree on {values}. Remove one of them, or give one submission a "
                f"different run name."
            )
        drop.append(index)
    return frame.drop(index=drop)


def merge_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The validated union of several results files, duplicates dropped, in input order."""
    if not paths:
        raise UsageError("Nothing to merge: pass at least one results.csv.")
    frames = [_read_validated(p) for p in paths]
    merged = pd.concat(frames, ignore_index=True)
    merged = _deduplicate(merged).drop(columns=["_file", "_line"])
    return coerce_results(merged.reset_index(drop=True))


def merged_report_paths(out: str | Path) -> dict[str, Path]:
    """Where a merge writes its leaderboards: ``OUT-stem.leaderboard.{csv,md,html}``."""
    out = Path(out)
    stem = out.stem + LEADERBOARD_SUFFIX
    return {name: out.with_name(f"{stem}.{name}") for name in MERGE_REPORTERS}


def check_precisions(merged: pd.DataFrame, paths: Sequence[str | Path], *,
                     allow_mixed: bool) -> None:
    """Refuse to rank rows computed in different precisions against each other: a bf16 or
    fp16 evaluation is not the same measurement as an fp32 one."""
    if allow_mixed or "precision" not in merged:
        return
    values = merged["precision"].astype("string").fillna("").str.strip()
    found = sorted({v for v in values if v} | ({"fp32"} if (values == "").any() else set()))
    if len(found) > 1:
        raise UsageError(
            f"The files to merge ({', '.join(str(p) for p in paths)}) hold rows computed in "
            f"different precisions ({', '.join(found)}; a row without a precision is fp32): "
            f"low-precision attacks and verification are not the same measurement, so "
            f"robench does not rank them together. Merge files of one precision, or pass "
            f"--allow-mixed-precision to rank them anyway (the precision column stays in "
            f"every row).")


def merge_leaderboards(paths: Sequence[str | Path], out: str | Path, *,
                       name: str | None = None, host: Any = None,
                       allow_mixed_precision: bool = False) -> pd.DataFrame:
    """``robench leaderboard merge``: validate, merge, write OUT and its leaderboards.

    Writes the merged results table to ``out`` (a results.csv any robench tool reads back,
    with ``source_file`` telling where each row came from) and, next to it,
    ``OUT-stem.leaderboard.csv/.md/.html`` through the same reporters as a run, found via the
    plugin host (``host``; a fresh one by default).  Returns the merged results.
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise UsageError(f"Output {out} must be a .csv file (the merged results table).")
    merged = merge_results(paths)
    check_precisions(merged, paths, allow_mixed=allow_mixed_precision)
    sources = [str(_resolve(p)) for p in paths]
    atomic_write_text(out, merged.to_csv(index=False))
    runs = list(dict.fromkeys(merged["run"]))
    # example images belong to one run; a merge of several has none of its own
    context = report_context(
        out.parent, {"provenance": {"merged_from": sources, "runs": runs, "output": str(out)}},
        name=name or f"merged leaderboard ({', '.join(runs)})", examples=False)
    stem = out.stem + LEADERBOARD_SUFFIX
    params = {reporter: {"stem": stem} for reporter in MERGE_REPORTERS}
    write_reports(merged, out.parent, context, reporters=MERGE_REPORTERS, params=params,
                  host=host)
    return merged


def report_run(
    run_dir: str | Path,
    *,
    reporters: Sequence[str] | None = None,
    host: Any = None,
) -> list[Path]:
    """``robench report RUN_DIR``: rebuild a run's reports from its results.csv and run.json.

    The reporters and their parameters come from the run's config unless ``reporters`` is
    given; results.csv is validated like a merge input, so a hand-edited file fails with a
    message naming the problem instead of a broken report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"Run folder {run_dir} does not exist.")
    results = read_results(run_dir / "results.csv", source_column=False)
    context = report_context(run_dir, read_run_json(run_dir), results=results)
    config = context["config"]
    if reporters is None:
        reporters = list(config.get("reporters") or DEFAULT_REPORTERS)
    return write_reports(results, run_dir, context, reporters=reporters,
                         params=reporter_params(config), host=host)


__all__ = [
    "REQUIRED_COLUMNS",
    "STATUSES",
    "merge_leaderboards",
    "merge_results",
    "merged_report_paths",
    "read_results",
    "report_run",
]
