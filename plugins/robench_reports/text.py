"""The plain-text reporters: ``csv``, ``md`` and ``json``.

Each is a small class whose constructor takes the reporter's parameters (the config's
``[reporter.NAME]`` table) and whose ``write`` builds the leaderboard with
:func:`robench.leaderboard.build_leaderboard`, so all formats rank identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import robench
from robench.io import atomic_write_text
from robench.leaderboard import HEADLINE_DOC, build_leaderboard, choose_headline
from robench.results import COLUMNS
from robench_reports.formatting import (
    FileStem,
    differences_note,
    input_formats,
    md_escape,
    number,
    pct,
    paired_pp,
    pct_ci,
    provenance_lines,
    records,
    to_json,
)

#: headline statuses that make the headline untrustworthy, and how reports mark them
HEADLINE_MARKS: dict[str, str] = {
    "incomplete": "(incomplete)",
    "invalid": "(invalid)",
    "failed": "(failed)",
}


def run_title(results: pd.DataFrame, context: Mapping[str, Any]) -> str:
    """The run's name for headings: the context's, else the runs in the table."""
    name = context.get("name")
    if name:
        return str(name)
    if "run" in results and len(results):
        runs = [r for r in dict.fromkeys(results["run"].astype(str)) if r]
        if runs:
            return ", ".join(runs)
    return "robench run"


class CsvReporter:
    """``leaderboard.csv``: the full leaderboard table, every column, full precision."""

    @robench.checked("[reporter.csv]")
    def __init__(self, *, stem: FileStem = "leaderboard") -> None:
        self.stem = stem

    def write(self, results: pd.DataFrame, run_dir: Path, context: dict[str, Any]) -> list[Path]:
        board = build_leaderboard(results)
        path = Path(run_dir) / f"{self.stem}.csv"
        return [atomic_write_text(path, board.to_csv(index=False))]


class JsonReporter:
    """``results.json`` and ``leaderboard.json``: the tables plus provenance, for tools.

    Unlike the CSVs these carry the run's name, config and provenance in the same file, so
    a JSON consumer (a website, a notebook) needs nothing else.  NaN becomes null.
    """

    @robench.checked("[reporter.json]")
    def __init__(self, *, stem: FileStem = "leaderboard",
                 results_stem: FileStem = "results") -> None:
        self.stem = stem
        self.results_stem = results_stem

    def write(self, results: pd.DataFrame, run_dir: Path, context: dict[str, Any]) -> list[Path]:
        run_dir = Path(run_dir)
        board = build_leaderboard(results)
        headline = choose_headline(results)
        head = {
            "name": run_title(results, context),
            "provenance": context.get("provenance") or {},
            "config": context.get("config") or {},
        }
        results_doc = {
            **head,
            "columns": {c: {"dtype": d, "meaning": m} for c, (d, m) in COLUMNS.items()},
            "results": records(results),
        }
        board_doc = {
            **head,
            "headline": {
                "threat": headline.threat,
                "eps": headline.eps,
                "eps_label": headline.eps_label,
                "column": headline.column,
                "metric": headline.describe(),
                "definition": HEADLINE_DOC,
            },
            "columns": list(board.columns),
            "leaderboard": records(board),
        }
        return [
            atomic_write_text(run_dir / f"{self.results_stem}.json", to_json(results_doc)),
            atomic_write_text(run_dir / f"{self.stem}.json", to_json(board_doc)),
        ]


def _md_table(header: list[str], rows: list[list[str]], *, right: set[int]) -> list[str]:
    """A GitHub-flavoured Markdown table; cells must already be escaped."""
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _paired_table(board: pd.DataFrame, defended: bool) -> list[str]:
    """The paired differences of a several-seed leaderboard with their intervals: the rows
    that have one (a grid without a target, an adaptor or a defense has none: no table)."""
    from robench.leaderboard import PAIRED_CONFIDENCE

    names = [("gap", "domain gap"), ("adapt_gain", "adaptation gain")]
    if defended:
        names.append(("defense_gain", "defense gain"))
    columns = [f"{key}_{kind}" for key, _ in names for kind in ("clean", "robust")]
    records = [r for r in board.to_dict("records")
               if any(pd.notna(r.get(c)) for c in columns)]
    if not records:
        return []
    header = ["model", "domain", "seeds"]
    header += [f"{label} {kind} (pp)" for _, label in names for kind in ("clean", "robust")]
    rows = [[md_escape(r["model"]), md_escape(r["domain"]), number(r["n_seeds"]),
             *(paired_pp(r, column, interval=True) for column in columns)]
            for r in records]
    return [f"## Paired differences: mean over seeds [{PAIRED_CONFIDENCE:.0%} t-interval]", "",
            *_md_table(header, rows, right=set(range(2, len(header)))), ""]


class MarkdownReporter:
    """``leaderboard.md``: the ranking for a README or a pull request, readable as text.

    One main table (rank, model, test set, clean and headline accuracy with 95% intervals,
    AUC per threat, domain gap, adaptation gain, flags, status), then robust accuracy at
    every eps, then the run's provenance.  Every cell is escaped with :func:`md_escape`.
    """

    @robench.checked("[reporter.md]")
    def __init__(self, *, stem: FileStem = "leaderboard") -> None:
        self.stem = stem

    def render(self, results: pd.DataFrame, context: dict[str, Any]) -> str:
        board = build_leaderboard(results)
        headline = choose_headline(results)
        title = run_title(results, context)
        lines = [f"# robench leaderboard: {md_escape(title)}", ""]
        lines += [f"**Headline metric: {md_escape(headline.describe())}.** "
                  f"{md_escape(HEADLINE_DOC)}", ""]
        formats = input_formats(context.get("provenance"))
        if formats:
            lines += [f"**Input**: {md_escape(formats)}.", ""]
        if board.empty:
            lines += ["_No results._", ""]
        else:
            auc_cols = [c for c in board.columns if c.startswith("auc[")]
            robust_cols = [c for c in board.columns if c.startswith("robust[")]
            multi_run = board["run"].nunique() > 1
            at = f"{md_escape(headline.threat)} {md_escape(headline.eps_label)}"
            header = ["rank", "model", "dataset", "domain", "n", "clean % [95% CI]",
                      f"robust % @ {at} [95% CI]" if headline.threat != "none"
                      else "headline: clean %"]
            header += [md_escape(c) + " %" for c in auc_cols]
            seeded = bool((board["n_seeds"] > 1).any())
            defended = bool("defense_gain_clean" in board
                            and board["defense_gain_clean"].notna().any())
            if seeded:
                header.append("seeds: robust sd / worst")
            header += ["domain gap clean / robust (pp)", "adaptation gain clean / robust (pp)"]
            if defended:
                header.append("defense gain clean / robust (pp)")
            header += ["flags", "status"]
            if multi_run:
                header.append("run")
            rows = []
            for row in board.to_dict("records"):
                model = md_escape(row["model"])
                if row.get("near_chance"):
                    model += " **(near chance: ranked last)**"
                head = pct_ci(row["headline_acc"], row["headline_ci_low"],
                              row["headline_ci_high"])
                if row.get("headline_status") in HEADLINE_MARKS:
                    head += f" **{HEADLINE_MARKS[row['headline_status']]}**"
                cells = [
                    str(row["rank"]), model, md_escape(row["dataset"]),
                    md_escape(row["domain"]), number(row["n"]),
                    pct_ci(row["clean_acc"], row["clean_ci_low"], row["clean_ci_high"]),
                    head,
                ]
                cells += [pct(row[c]) for c in auc_cols]
                if seeded:
                    cells.append(f"{number(row['n_seeds'])}: "
                                 f"{pct(row['headline_acc_std'])} / "
                                 f"{pct(row['headline_acc_worst'])}")
                pairs = ["gap", "adapt_gain", *(["defense_gain"] if defended else [])]
                cells += [f"{paired_pp(row, f'{p}_clean')} / {paired_pp(row, f'{p}_robust')}"
                          for p in pairs]
                cells += [
                    md_escape(row["flags"].replace(";", ", ")) or "–",
                    md_escape(row["status"]),
                ]
                if multi_run:
                    cells.append(md_escape(row["run"]))
                rows.append(cells)
            lines += _md_table(header, rows, right={
                0, 4, 5, 6, *range(7, 9 + len(auc_cols) + seeded + defended)})
            lines += ["", f"**{md_escape(differences_note(board))}**", ""]
            if seeded:
                lines += _paired_table(board, defended)
            if robust_cols:
                lines += ["## Robust accuracy per threat and eps (%)", ""]
                header = ["model", "domain", *(md_escape(c) for c in robust_cols)]
                rows = [[md_escape(r["model"]), md_escape(r["domain"]),
                         *(pct(r[c]) for c in robust_cols)] for r in board.to_dict("records")]
                lines += _md_table(header, rows, right=set(range(2, len(header))))
                lines.append("")
            lines += ["Columns: accuracies in percent; pp = percentage points. Domain gap = "
                      "source minus target of the same model; adaptation gain = this model "
                      "minus the same backbone and head trained without an adaptor. "
                      "*near chance*: clean accuracy at most 1.5x chance, ranked after every "
                      "other model of its test set. A headline marked *incomplete* combines "
                      "fewer attacks than the grid names (one failed), *invalid* includes "
                      "examples that failed verification: both are optimistic. The full "
                      "table is in leaderboard.csv.", ""]
        provenance = provenance_lines(context.get("provenance"))
        if provenance:
            lines += ["## Provenance", ""]
            lines += [f"- **{md_escape(key)}**: {md_escape(text)}" for key, text in provenance]
            lines.append("")
        return "\n".join(lines)

    def write(self, results: pd.DataFrame, run_dir: Path, context: dict[str, Any]) -> list[Path]:
        path = Path(run_dir) / f"{self.stem}.md"
        return [atomic_write_text(path, self.render(results, context))]
