"""The ``html`` reporter: ``leaderboard.html``, one self-contained page per run.

The page must open from disk in any browser, offline, years later, and be safe to open when
the results came from someone else.  So: CSS and JS are inlined, every picture is a PNG data
URI, a Content-Security-Policy allows no network access at all and only the page's own
script (by hash), and every string that did not come from this module goes through
:func:`html.escape`.  The CSP is a second line of defence: if an escaping bug ever slipped
through, an injected ``<script>`` would still not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench.errors import UsageError
from robench.io import atomic_write_text
from robench.leaderboard import (
    GROUP_KEYS,
    HEADLINE_DOC,
    THREAT_ORDER,
    Headline,
    attack_matrix,
    build_leaderboard,
    choose_headline,
    eps_key,
    eps_labels,
    format_eps,
    robust_curves,
)
from robench_reports.examples import ExampleSet, load_examples, perturbation_image
from robench_reports.figures import (
    curves_figure,
    domain_bars_figure,
    heatmap_figure,
    image_uri,
)
from robench_reports.formatting import (
    check_stem,
    number,
    pct,
    plain,
    provenance_lines,
    signed_pp,
)
from robench_reports.text import run_title


def esc(value: Any) -> str:
    """Escape text for HTML element content and double-quoted attributes alike."""
    return html.escape("" if value is None else str(value), quote=True)


def _asset(name: str) -> str:
    return resources.files("robench_reports").joinpath(name).read_text(encoding="utf-8")


def _csp(script: str) -> str:
    """A policy allowing nothing from the network and exactly one inline script."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Column:
    """One column of the sortable table: how to show a row's value and how to sort it."""

    header: str
    show: Callable[[Mapping[str, Any]], str]  # returns HTML (already escaped)
    sort: Callable[[Mapping[str, Any]], Any]
    numeric: bool = True
    css: str = "num"
    title: str = ""


def _text_column(key: str, header: str | None = None, *, css: str = "") -> Column:
    return Column(header=header or key, show=lambda r: esc(r[key]), sort=lambda r: r[key],
                  numeric=False, css=css)


def _pct_column(key: str, header: str | None = None, title: str = "") -> Column:
    return Column(header=header or key, show=lambda r: esc(pct(r[key])), sort=lambda r: r[key],
                  title=title)


def _ci_column(key: str, low: str, high: str, header: str, title: str) -> Column:
    def show(row: Mapping[str, Any]) -> str:
        if not _finite(row[key]):
            return "–"
        ci = ""
        if _finite(row[low]) and _finite(row[high]):
            ci = f' <span class="ci">[{esc(pct(row[low]))}, {esc(pct(row[high]))}]</span>'
        return esc(pct(row[key])) + ci

    return Column(header=header, show=show, sort=lambda r: r[key], title=title)


def _pp_column(key: str, header: str, title: str) -> Column:
    return Column(header=header, show=lambda r: esc(signed_pp(r[key])), sort=lambda r: r[key],
                  title=title)


def _count_column(key: str, header: str | None = None) -> Column:
    return Column(header=header or key, show=lambda r: esc(number(r[key])),
                  sort=lambda r: r[key])


def _table_columns(board: pd.DataFrame, headline: Headline) -> list[Column]:
    columns = [
        _count_column("rank"),
        _text_column("model", css="name"),
        _text_column("backbone"), _text_column("head"), _text_column("adaptor"),
        _text_column("dataset"), _text_column("domain"),
        _count_column("n"),
        _ci_column("clean_acc", "clean_ci_low", "clean_ci_high", "clean %",
                   "clean accuracy with its 95% Wilson interval"),
        _ci_column("headline_acc", "headline_ci_low", "headline_ci_high",
                   f"robust % @ {headline.threat} {headline.eps_label}",
                   f"headline: {headline.describe()}, with its 95% Wilson interval"),
    ]
    for column in board.columns:
        if column.startswith("robust["):
            columns.append(_pct_column(column, column + " %",
                                       "worst-case robust accuracy at this threat and eps"))
    for column in board.columns:
        if column.startswith("auc["):
            columns.append(_pct_column(column, column + " %",
                                       "area under the robust-accuracy-vs-eps curve, "
                                       "normalised to [0, 100]"))
    columns += [
        _pp_column("gap_clean", "gap clean (pp)", "source minus target clean accuracy"),
        _pp_column("gap_robust", "gap robust (pp)", "source minus target headline accuracy"),
        _pp_column("adapt_gain_clean", "adapt gain clean (pp)",
                   "this model minus the same backbone+head without an adaptor"),
        _pp_column("adapt_gain_robust", "adapt gain robust (pp)",
                   "headline of this model minus the same backbone+head without an adaptor"),
        Column(header="flags", show=lambda r: esc(str(r["flags"]).replace(";", "; ")),
               sort=lambda r: r["flags"], numeric=False, css="flags"),
        Column(header="status", show=lambda r: esc(r["status"]), sort=lambda r: r["status"],
               numeric=False, css=""),
        _count_column("params"),
        _count_column("train_seconds", "train s"),
        _count_column("attack_seconds", "attack s"),
        _count_column("grad_evals", "grad evals"),
        _text_column("run", css="name"),
    ]
    if "source_file" in board.columns:
        columns.append(_text_column("source_file", "source file", css="name"))
    return columns


def _sort_attr(value: Any, numeric: bool) -> str:
    if numeric:
        return esc(repr(float(value))) if _finite(value) else ""
    return esc(value)


def _table(board: pd.DataFrame, headline: Headline) -> str:
    columns = _table_columns(board, headline)
    head = "".join(
        f'<th scope="col" tabindex="0" data-type="{"num" if c.numeric else "text"}"'
        f' class="{esc(c.css if c.numeric else "")}" title="{esc(c.title)}">{esc(c.header)}</th>'
        for c in columns
    )
    body = []
    for row in board.to_dict("records"):
        cells = []
        for c in columns:
            css = c.css
            if c.header == "status" and row["status"] != "ok":
                css = "status-bad"
            cells.append(f'<td class="{esc(css)}" data-v="{_sort_attr(c.sort(row), c.numeric)}">'
                         f"{c.show(row)}</td>")
        body.append(f'<tr data-model="{esc(row["model"])}" data-domain="{esc(row["domain"])}">'
                    + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table id="board" class="board"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


# --------------------------------------------------------------------------- figures


def _row_label(key: tuple[Any, ...], multi_run: bool) -> str:
    run, model, _, domain = key
    return f"{model} · {domain}" + (f" · {run}" if multi_run else "")


def _figure(uri: str | None, alt: str, caption: str) -> str:
    if uri is None:
        return ""
    return (f'<figure><img class="plot" src="{uri}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _figures(results: pd.DataFrame, board: pd.DataFrame, headline: Headline,
             *, dpi: int) -> dict[str, str]:
    keys = [tuple(k) for k in board[GROUP_KEYS].itertuples(index=False, name=None)]
    multi_run = board["run"].nunique() > 1
    labels = {k: _row_label(k, multi_run) for k in keys}
    out: dict[str, str] = {}

    curves = robust_curves(results)
    out["curves"] = _figure(
        curves_figure(curves, board[[*GROUP_KEYS, "clean_acc"]], labels, dpi=dpi),
        "robust accuracy versus eps, one panel per threat model",
        "Robust accuracy (worst case over attacks where available) against the budget eps; "
        "eps 0 is the clean accuracy. Solid: source domain, dashed: target domain.")

    matrix = attack_matrix(results)
    if not matrix.empty:
        threat_rank = {t: i for i, t in enumerate(THREAT_ORDER)}
        attacks = (matrix[["threat", "attack", "eps_label"]].drop_duplicates(["threat", "attack"])
                   .assign(_t=lambda f: f["threat"].map(lambda t: threat_rank.get(t, 99)),
                           _w=lambda f: f["attack"] == "worst-case")
                   .sort_values(["_t", "threat", "_w", "attack"]))
        column_keys = list(zip(attacks["threat"], attacks["attack"], strict=True))
        column_labels = [f"{a} ({t}@{lbl})" for t, a, lbl in
                         zip(attacks["threat"], attacks["attack"], attacks["eps_label"],
                             strict=True)]
        values = {(tuple(k[:4]), (k[5], k[4])): v for k, v in zip(
            matrix[[*GROUP_KEYS, "attack", "threat"]].itertuples(index=False, name=None),
            matrix["robust_acc"], strict=True)}
        grid = pd.DataFrame([[values.get((k, c), np.nan) for c in column_keys] for k in keys])
        out["heatmap"] = _figure(
            heatmap_figure(grid, [labels[k] for k in keys], column_labels, dpi=dpi),
            "heatmap of robust accuracy per model and attack",
            "Robust accuracy (%) per model and attack, each at its threat model's main eps "
            f"(the headline eps for {headline.threat}).")

    pairs = []
    for (run, model), group in board.groupby(["run", "model"], sort=False):
        source = group[group["domain"] == "source"]
        target = group[group["domain"] == "target"]
        if source.empty or target.empty:
            continue
        s, t = source.iloc[0], target.iloc[0]
        pairs.append({"label": model + (f" · {run}" if multi_run else ""),
                      "source_clean": s["clean_acc"], "target_clean": t["clean_acc"],
                      "source_robust": s["headline_acc"], "target_robust": t["headline_acc"]})
    if pairs:
        short = f"robust @ {headline.threat} {headline.eps_label}"
        out["domains"] = _figure(
            domain_bars_figure(pd.DataFrame(pairs), headline=short, dpi=dpi),
            "source versus target accuracy per model",
            "Clean and headline robust accuracy on the source and the target domain, "
            "per model: the domain gap, and what adaptation recovers.")
    return out


# --------------------------------------------------------------------------- examples


def _pixel_img(image: np.ndarray, alt: str) -> str:
    height, width = image.shape[:2]
    scale = max(1, math.ceil(64 / max(width, 1))) if width < 64 else 1
    return (f'<img class="px" src="{image_uri(image)}" width="{width * scale}" '
            f'height="{height * scale}" alt="{esc(alt)}">')


def _eps_text(example: ExampleSet, labels: Mapping[tuple[str, float], str]) -> str:
    return labels.get((example.threat, eps_key(example.eps)), format_eps(example.eps))


def _strip(example: ExampleSet, labels: Mapping[tuple[str, float], str], limit: int) -> str:
    k = min(limit, example.images_clean.shape[0])
    clean, adv = example.images_clean[:k], example.images_adv[:k]
    delta, factor = perturbation_image(clean, adv)
    rows = {"clean": [], "adversarial": [], f"perturbation ×{factor:.0f}": []}
    for i in range(k):
        truth = example.class_name(example.labels[i])
        p_clean = example.class_name(example.pred_clean[i])
        p_adv = example.class_name(example.pred_adv[i])
        ok_clean = example.pred_clean[i] == example.labels[i]
        ok_adv = example.pred_adv[i] == example.labels[i]
        rows["clean"].append(
            _pixel_img(clean[i], f"clean image of {truth}")
            + f'<div class="lbl {"ok" if ok_clean else "bad"}">{esc(p_clean)}'
            f'<br><span class="muted">true {esc(truth)}</span></div>')
        rows["adversarial"].append(
            _pixel_img(adv[i], f"adversarial image, predicted {p_adv}")
            + f'<div class="lbl {"ok" if ok_adv else "bad"}">{esc(p_adv)}</div>')
        rows[f"perturbation ×{factor:.0f}"].append(
            _pixel_img(delta[i], "amplified perturbation"))
    body = "".join(f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{c}</td>" for c in cells)
                   + "</tr>" for name, cells in rows.items())
    caption = (f"{example.domain} domain ({example.dataset}) · attack {example.attack}, "
               f"{example.threat} @ {_eps_text(example, labels)} · labels are predictions; "
               f"red = wrong")
    return (f'<figure class="example"><table class="strip">{body}</table>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _class_images(example: ExampleSet) -> str:
    images = example.class_images
    if images is None or not len(images):
        return ""
    cells = "".join(
        f"<figure>{_pixel_img(image, f'image maximising class {example.class_name(i)}')}"
        f"<figcaption>{esc(example.class_name(i))}</figcaption></figure>"
        for i, image in enumerate(images))
    return (f'<p class="muted">Images optimised from random noise to maximise each class '
            f"({esc(example.domain)} model): what the network actually learned.</p>"
            f'<div class="classes">{cells}</div>')


def _examples_section(sets: list[ExampleSet], problems: list[str], board: pd.DataFrame,
                      labels: Mapping[tuple[str, float], str], limit: int) -> str:
    if not sets and not problems:
        return ""
    order = {m: i for i, m in enumerate(dict.fromkeys(board["model"]))}
    domain_order = {"source": 0, "target": 1}
    sets = sorted(sets, key=lambda s: (order.get(s.model, len(order)), s.model,
                                       domain_order.get(s.domain, 2), s.domain, s.path.name))
    parts = ['<section id="examples"><h2>Adversarial examples</h2>',
             '<p class="doc">Per model: clean test images, their adversarial versions and '
             "the perturbation between them, amplified to be visible (mid-grey = no change). "
             "Labels are the model's predictions.</p>"]
    parts += [f'<p class="warn">Example file skipped: {esc(p)}</p>' for p in problems]
    by_model: dict[str, list[ExampleSet]] = {}
    for example in sets:
        by_model.setdefault(example.model, []).append(example)
    for model, group in by_model.items():
        parts.append(f'<div class="model-examples"><h3>{esc(model)}</h3>')
        parts += [_strip(example, labels, limit) for example in group]
        with_classes = next((e for e in group if e.class_images is not None), None)
        if with_classes is not None:
            parts.append(_class_images(with_classes))
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


# --------------------------------------------------------------------------- the page


def _provenance_section(context: Mapping[str, Any]) -> str:
    lines = provenance_lines(context.get("provenance"))
    config = context.get("config") or {}
    if not lines and not config:
        return ""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in lines)
    parts = ['<section id="provenance"><h2>Provenance</h2>']
    if items:
        parts.append(f'<dl class="prov">{items}</dl>')
    if config:
        text = json.dumps(plain(config), indent=2, sort_keys=True, ensure_ascii=False)
        parts.append(f"<details><summary>Configuration</summary><pre>{esc(text)}</pre>"
                     "</details>")
    parts.append("</section>")
    return "".join(parts)


class HtmlReporter:
    """``leaderboard.html``: sortable, filterable table, curves, heatmap, domain bars,
    adversarial examples and class-maximisation images, in one offline file.

    Parameters: ``stem`` (file name without ``.html``), ``max_examples`` (images per strip),
    ``dpi`` (of the plots; lower for smaller files).
    """

    def __init__(self, *, stem: str = "leaderboard", max_examples: int = 8,
                 dpi: int = 90) -> None:
        self.stem = check_stem(stem)
        if not isinstance(max_examples, int) or max_examples < 0:
            raise UsageError(f"Reporter parameter max_examples={max_examples!r} must be an "
                             "integer >= 0.")
        if not isinstance(dpi, int) or not 30 <= dpi <= 300:
            raise UsageError(f"Reporter parameter dpi={dpi!r} must be an integer in 30..300.")
        self.max_examples = max_examples
        self.dpi = dpi

    def render(self, results: pd.DataFrame, context: Mapping[str, Any]) -> str:
        """The page as a string (``write`` saves it atomically)."""
        board = build_leaderboard(results)
        headline = choose_headline(results)
        title = run_title(results, context)
        script = _asset("report.js")
        nav = ['<a href="#leaderboard">Leaderboard</a>']
        sections = []
        if board.empty:
            sections.append('<section id="leaderboard"><h2>Leaderboard</h2>'
                            "<p>No results.</p></section>")
        else:
            sections.append(
                '<section id="leaderboard"><h2>Leaderboard</h2>'
                '<div class="controls"><input id="filter" type="search" '
                'placeholder="Filter rows, e.g. dann target" aria-label="Filter rows">'
                '<span id="count" class="muted"></span>'
                '<span class="muted">Click a column header to sort.</span></div>'
                f"{_table(board, headline)}</section>")
            figures = _figures(results, board, headline, dpi=self.dpi)
            for key, heading in (("curves", "Robust accuracy vs eps"),
                                 ("heatmap", "Models × attacks"),
                                 ("domains", "Source vs target")):
                if figures.get(key):
                    nav.append(f'<a href="#{key}">{esc(heading)}</a>')
                    sections.append(f'<section id="{key}"><h2>{esc(heading)}</h2>'
                                    f"{figures[key]}</section>")
        examples_dir = context.get("examples_dir")
        sets, problems = load_examples(Path(examples_dir) if examples_dir else None)
        examples = _examples_section(sets, problems, board, eps_labels(results),
                                     self.max_examples)
        if examples:
            nav.append('<a href="#examples">Examples</a>')
            sections.append(examples)
        provenance = _provenance_section(context)
        if provenance:
            nav.append('<a href="#provenance">Provenance</a>')
            sections.append(provenance)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(_csp(script))}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>robench leaderboard: {esc(title)}</title>"
            f"<style>{_asset('report.css')}</style></head><body>"
            f"<header><h1>{esc(title)}</h1>"
            f'<p class="sub">robench leaderboard · {len(board)} rows · headline: '
            f"{esc(headline.describe())}</p><nav>{''.join(nav)}</nav></header>"
            f'<p class="doc">{esc(HEADLINE_DOC)}</p>'
            + "".join(sections)
            + f"<script>{script}</script></body></html>\n"
        )

    def write(self, results: pd.DataFrame, run_dir: Path, context: dict[str, Any]) -> list[Path]:
        path = Path(run_dir) / f"{self.stem}.html"
        return [atomic_write_text(path, self.render(results, context))]
