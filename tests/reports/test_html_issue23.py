"""The HTML report's points of issue 23: the domain gap coloured as bad news and shown once,
and a heatmap colour scale that a baseline near the clean accuracy does not flatten."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from robench_reports.figures import heatmap_range
from robench_reports.html_report import HtmlReporter

from robench.leaderboard import build_leaderboard


def _gap_cells(page: str, model: str) -> dict[str, list[str]]:
    """Per domain block, the two domain-gap cells (class and text) of ``model``'s row."""
    header = re.findall(r">([^<>]+)</th>", re.search(r"<thead>(.*?)</thead>", page,
                                                      re.S).group(1))
    first = header.index("domain gap clean pp")
    out = {}
    for row in re.findall(r'<tr[^>]*data-model="([^"]*)"[^>]*data-domain="([^"]*)"[^>]*>'
                          r'(.*?)</tr>', page, re.S):
        name, domain, body = row
        if name != model:
            continue
        cells = re.findall(r'<td class="([^"]*)"[^>]*>(.*?)</td>', body, re.S)
        out[domain] = [(css, re.sub(r"<[^>]+>", "", text).strip())
                       for css, text in cells[first:first + 2]]
    return out


def test_the_domain_gap_is_red_when_the_target_is_worse_and_shown_once(build_results):
    results = build_results()
    page = HtmlReporter().render(results, {})
    board = build_leaderboard(results)
    model = "digits-cnn+linear+none"  # 95% clean on source, 60% on target: a 35 pp gap
    target = board[(board.model == model) & (board.domain == "target")].iloc[0]
    assert target["gap_clean"] > 0
    cells = _gap_cells(page, model)
    assert set(cells) == {"source", "target"}, page[:2000]
    # on the target row, in red (a larger gap is worse) ...
    (css, text), _ = cells["target"]
    assert "neg" in css.split() and "pos" not in css.split()
    assert text.startswith("+35")
    # ... and not repeated on the source row
    assert [text for _, text in cells["source"]] == ["", ""]


def test_a_target_better_than_its_source_is_green(build_results):
    results = build_results()
    swap = {"source": "target", "target": "source"}
    flipped = results.assign(domain=results["domain"].map(swap),
                             dataset=results["dataset"].map({"digits": "digits-m",
                                                             "digits-m": "digits"}))
    page = HtmlReporter().render(flipped, {})
    (css, text), _ = _gap_cells(page, "digits-cnn+linear+none")["target"]
    assert text.startswith("−35") or text.startswith("-35")
    assert "pos" in css.split()


def test_the_heatmap_colours_span_the_attacks_not_the_noise_baseline():
    values = np.array([[12.0, 20.0, 91.0], [4.0, 30.0, 88.0]])
    # noise (the last column) would make 4-30 the bottom fifth of a 0-100 scale
    assert heatmap_range(values, [True, True, False]) == (4.0, 30.0)
    assert heatmap_range(values) == (4.0, 91.0)
    assert heatmap_range(values, [False, False, False]) == (4.0, 91.0)
    # near-equal values keep a 10-point range; nothing finite: 0-100
    assert heatmap_range(np.array([[50.0, 51.0]])) == (45.5, 55.5)
    assert heatmap_range(np.array([[0.0, 0.0]])) == (0.0, 10.0)
    assert heatmap_range(np.array([[np.nan]])) == (0.0, 100.0)


def test_the_report_scales_its_heatmap_without_the_noise_column(build_results, monkeypatch):
    import robench_reports.html_report as html

    seen = {}

    def spy(matrix, row_labels, column_labels, *, dpi, scale_columns=None):
        seen.update(labels=list(column_labels), scaled=list(scale_columns))
        return None

    monkeypatch.setattr(html, "heatmap_figure", spy)
    results = build_results(noise=True)
    assert isinstance(results, pd.DataFrame)
    HtmlReporter().render(results, {})
    by_label = dict(zip(seen["labels"], seen["scaled"], strict=True))
    assert any(label.startswith("noise") for label in by_label)
    assert all(not scaled for label, scaled in by_label.items() if label.startswith("noise"))
    assert all(scaled for label, scaled in by_label.items() if not label.startswith("noise"))
