"""The ``html`` reporter: ``leaderboard.html``, one self-contained page per run.

The page must open from disk in any browser, offline, years later, and be safe to open when
the results came from someone else.  So: CSS and JS are inlined, every picture is a PNG data
URI, a Content-Security-Policy allows no network access at all and only the page's own
script (by hash), and the page is rendered from a Jinja2 template
(``templates/leaderboard.html.j2``) with autoescaping on: every string reaches the HTML
through the template and is escaped there; only the package's own CSS and JS are marked
safe.  The CSP is a second line of defence: if an escaping bug ever slipped through, an
injected ``<script>`` would still not run.

This module turns the leaderboard into plain view data (strings and numbers); the template
only lays it out.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

import robench
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
    significance,
)
from robench_reports.examples import ExampleSet, load_examples, perturbation_image
from robench_reports.figures import (
    curves_figure,
    diverging_css_gradient,
    domain_bars_figure,
    heatmap_figure,
    image_uri,
)
from robench_reports.formatting import (
    FileStem,
    differences_note,
    input_formats,
    is_missing,
    number,
    pct,
    plain,
    signed_pp,
)
from robench_reports.text import run_title

TEMPLATE = "leaderboard.html.j2"


def _asset(name: str) -> str:
    return resources.files("robench_reports").joinpath(name).read_text(encoding="utf-8")


def _environment() -> jinja2.Environment:
    """Templates from the package, autoescaped (whatever their name), strict about typos."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: _asset(f"templates/{name}")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


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


def _sort_number(value: Any) -> str:
    return repr(float(value)) if _finite(value) else ""


# --------------------------------------------------------------------------- the table


def _cell(text: str, sort: Any = "", *, css: str = "num", sub: str = "",
          badges: Sequence[tuple[str, str, str]] = (), title: str = "") -> dict[str, Any]:
    """One table cell as view data; ``badges`` are ``(text, css class, explanation)``."""
    return {"text": text, "sort": sort, "css": css, "sub": sub, "title": title,
            "badges": [{"text": t, "css": c, "title": e} for t, c, e in badges]}


def _pct_cell(value: Any) -> dict[str, Any]:
    return _cell(pct(value), _sort_number(value))


def _pp_cell(value: Any, *, larger_is_better: bool = True) -> dict[str, Any]:
    """A difference in percentage points, green where it is good news and red where it is
    bad: a gain is good when positive, a domain gap (source minus target) when negative."""
    css = "num"
    if _finite(value) and abs(float(value)) >= 0.0005:
        css += " pos" if (float(value) > 0) == larger_is_better else " neg"
    return _cell(signed_pp(value), _sort_number(value), css=css)


def _paired_cell(row: Mapping[str, Any], key: str, *, larger_is_better: bool = True
                 ) -> dict[str, Any]:
    """A paired difference: its mean in percentage points, its 95% interval over the seeds
    beneath, and an ``n.s.`` badge when that interval holds 0."""
    cell = _pp_cell(row[key], larger_is_better=larger_is_better)
    if not _finite(row[key]):
        return cell
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    verdict = significance(low, high, row.get("n_seeds"))
    if verdict in ("n.s.", "significant"):
        cell["sub"] = f"[{signed_pp(low)}, {signed_pp(high)}]"
    if verdict == "n.s.":
        cell["css"] = "num"  # neither good nor bad news: within the seed-to-seed spread
        cell["badges"].append({"text": "n.s.", "css": "note",
                               "title": "not significant: the 95% t-interval over the seeds "
                                        "holds 0"})
    return cell


def _gap_cell(row: Mapping[str, Any], key: str, has_target: bool) -> dict[str, Any]:
    """The domain gap belongs to the model, not to a domain: shown once, on the target row
    (where the accuracy drops); the source row of a model with a target row says where."""
    if has_target and str(row.get("domain")) == "source":
        return _cell("", "", css="num muted", title="the domain gap is on this model's "
                                                    "target row")
    return _paired_cell(row, key, larger_is_better=False)


def _ci_text(row: Mapping[str, Any], low: str, high: str) -> str:
    if _finite(row[low]) and _finite(row[high]):
        return f"[{pct(row[low])}, {pct(row[high])}]"
    return ""


def _model_details(row: Mapping[str, Any]) -> str:
    """The hover text of a model cell: what the table leaves out (all of it is in the CSV)."""
    parts = []
    for key, label in (("backbone", "backbone"), ("head", "head"), ("adaptor", "adaptor"),
                       ("defense", "defense"), ("precision", "precision"),
                       ("dataset", "test set"), ("params", "parameters"),
                       ("train_seconds", "training s"), ("attack_seconds", "attack s"),
                       ("grad_evals", "gradient evaluations"), ("queries", "queries"),
                       ("run", "run"), ("seed", "seed"), ("device", "device"),
                       ("source_file", "source file")):
        if key not in row or is_missing(row[key]):
            continue
        value = row[key]
        text = number(value) if isinstance(value, (int, float, np.number)) else str(value)
        parts.append(f"{label}: {text}")
    return "\n".join(parts)


_HEADLINE_MARKS = {
    "incomplete": ("incomplete", "bad",
                   "an attack of the threat model failed, so fewer attacks were combined: "
                   "an optimistic value (see flags)"),
    "invalid": ("invalid", "bad",
                "an adversarial example failed verification: an upper bound at best"),
    "failed": ("failed", "bad", "the rows behind the headline failed"),
}


def _columns(board: pd.DataFrame, headline: Headline, multi_run: bool
             ) -> list[dict[str, str]]:
    def column(key: str, header: str, title: str, kind: str = "num", css: str = "num"
               ) -> dict[str, str]:
        return {"key": key, "header": header, "title": title, "type": kind, "css": css}

    robust = [c for c in board.columns if c.startswith("robust[") and c != headline.column]
    aucs = [c for c in board.columns if c.startswith("auc[")]
    head_title = (f"headline: {headline.describe()}, with its 95% Wilson interval; the "
                  "ranking uses it (models above the clean-accuracy floor only)")
    columns = [
        column("rank", "rank", "rank within this test set; near-chance models come last"),
        column("model", "model", "model name; hover for backbone, head, adaptor and costs",
               "text", "name"),
        column("n", "n", "test samples evaluated"),
        column("clean_acc", "clean %", "clean accuracy with its 95% Wilson interval"),
        column("headline_acc",
               "robust %" if headline.threat == "none"
               else f"robust % {headline.threat} {headline.eps_label}",
               head_title, css="num headline"),
        column("gap_clean", "domain gap clean pp",
               "source minus target clean accuracy of the same model (percentage points), "
               "on its target row; red: the target is worse"),
        column("gap_robust", "domain gap robust pp",
               "source minus target headline accuracy of the same model, on its target "
               "row; red: the target is worse"),
        column("adapt_gain_clean", "adapt. gain clean pp",
               "this model minus the same backbone+head without an adaptor, clean accuracy"),
        column("adapt_gain_robust", "adapt. gain robust pp",
               "this model minus the same backbone+head without an adaptor, headline"),
    ]
    if "defense_gain_clean" in board and board["defense_gain_clean"].notna().any():
        columns += [
            column("defense_gain_clean", "defense gain clean pp",
                   "this model minus the same model trained without a defense, clean accuracy"),
            column("defense_gain_robust", "defense gain robust pp",
                   "this model minus the same model trained without a defense, headline"),
        ]
    if (board["n_seeds"] > 1).any():
        columns.insert(5, column("headline_acc_std", "seeds: robust sd",
                                 "number of seeds, standard deviation of the headline over "
                                 "the seeds and its worst seed"))
    for key in robust:
        threat_eps = key[len("robust["):-1].replace("@", " ")
        columns.append(column(key, f"robust % {threat_eps}",
                              "robust accuracy at this threat and eps (worst case over "
                              "attacks where available)"))
    for key in aucs:
        columns.append(column(key, f"AUC % {key[len('auc['):-1]}",
                              "area under the robust-accuracy-vs-eps curve from eps 0 to the "
                              "grid's largest eps, normalised to [0, 100]"))
    columns.append(column("flags", "flags", "sanity flags (docs/protocol.md)", "text",
                          "flags"))
    columns.append(column("status", "status", "row statuses", "text", "status"))
    if multi_run:
        columns.append(column("run", "run", "the run (submission) the row comes from",
                              "text", "name"))
    return columns


def _row_cells(row: Mapping[str, Any], columns: list[dict[str, str]], *,
               has_target: bool = False) -> list[dict[str, Any]]:
    """``has_target``: the model has a target-domain row too (its domain gap goes there)."""
    cells = []
    for col in columns:
        key = col["key"]
        if key == "rank":
            cells.append(_cell(str(row["rank"]), row["rank"]))
        elif key == "model":
            badges = []
            if row.get("near_chance"):
                badges.append(("near chance", "warn",
                               "clean accuracy at most 1.5x chance: ranked after every model "
                               "above the floor; its robust accuracy means nothing"))
            cells.append(_cell(str(row["model"]), str(row["model"]), css="name",
                               badges=badges, title=_model_details(row)))
        elif key == "n":
            cells.append(_cell(number(row["n"]), _sort_number(row["n"])))
        elif key == "clean_acc":
            cells.append(_cell(pct(row["clean_acc"]), _sort_number(row["clean_acc"]),
                               sub=_ci_text(row, "clean_ci_low", "clean_ci_high")))
        elif key == "headline_acc":
            mark = _HEADLINE_MARKS.get(str(row.get("headline_status", "")))
            badges = [mark] if mark else []
            if row.get("headline_source") == "min-over-attacks" and _finite(row[key]):
                badges.append(("min over attacks", "note",
                               "no worst-case rows: the lowest robust accuracy of any "
                               "attack, an optimistic bound"))
            cells.append(_cell(pct(row[key]), _sort_number(row[key]), css="num headline",
                               sub=_ci_text(row, "headline_ci_low", "headline_ci_high"),
                               badges=badges))
        elif key == "headline_acc_std":
            cells.append(_cell(pct(row[key]), _sort_number(row[key]),
                               sub=f"{number(row['n_seeds'])} seeds, worst "
                                   f"{pct(row['headline_acc_worst'])}"))
        elif key.startswith("gap_"):
            cells.append(_gap_cell(row, key, has_target))
        elif key.startswith(("adapt_gain_", "defense_gain_")):
            cells.append(_paired_cell(row, key))
        elif key == "flags":
            flags = str(row["flags"] or "")
            cells.append(_cell(flags.replace(";", "; "), flags, css="flags"))
        elif key == "status":
            status = str(row["status"])
            cells.append(_cell(status, status,
                               css="status" if status == "ok" else "status status-bad"))
        elif key == "run":
            cells.append(_cell(str(row["run"]), str(row["run"]), css="name"))
        else:
            cells.append(_pct_cell(row[key]))
    return cells


def _table_view(board: pd.DataFrame, headline: Headline) -> dict[str, Any]:
    multi_run = board["run"].nunique() > 1
    columns = _columns(board, headline, multi_run)
    blocks: list[dict[str, Any]] = []
    targets = board[board["domain"] == "target"]
    with_target = set(zip(targets["run"].astype(str), targets["model"].astype(str),
                          strict=True))
    for (dataset, domain), group in board.groupby(["dataset", "domain"], sort=False):
        rows = group.to_dict("records")
        floor = sum(bool(r.get("near_chance")) for r in rows)
        label = (f"{str(domain).capitalize()} domain · test set {dataset} · "
                 f"{len(rows)} model{'s' if len(rows) != 1 else ''}")
        if floor:
            label += f" ({floor} near chance, ranked last)"
        blocks.append({
            "domain": str(domain), "dataset": str(dataset), "label": label,
            "rows": [{"model": str(r["model"]), "domain": str(r["domain"]),
                      "near_chance": bool(r.get("near_chance")),
                      "cells": _row_cells(r, columns,
                                          has_target=(str(r["run"]), str(r["model"]))
                                          in with_target)}
                     for r in rows],
        })
    return {"columns": columns, "blocks": blocks, "rows": len(board)}


# --------------------------------------------------------------------------- figures


def _baseline(attack: str, threat: str) -> bool:
    """A column that measures no adversary: random noise, a corruption, no attack."""
    return attack == "noise" or threat in ("corruption", "none")


def _model_label(key: tuple[Any, ...], multi_run: bool) -> str:
    run, model, _, _ = key
    return str(model) + (f" · {run}" if multi_run else "")


def _figures(results: pd.DataFrame, board: pd.DataFrame, headline: Headline,
             *, dpi: int) -> list[dict[str, str]]:
    keys = [tuple(k) for k in board[GROUP_KEYS].itertuples(index=False, name=None)]
    multi_run = board["run"].nunique() > 1
    near = {k for k, flag in zip(keys, board["near_chance"], strict=True) if flag}
    out: list[dict[str, str]] = []

    curves = robust_curves(results)
    uri = curves_figure(curves, board[[*GROUP_KEYS, "clean_acc"]],
                        {k: _model_label(k, multi_run) for k in keys}, dpi=dpi,
                        near_chance=near)
    if uri:
        out.append({
            "id": "curves", "heading": "Robust accuracy vs eps", "uri": uri,
            "alt": "robust accuracy versus eps, one panel per threat model and test domain",
            "caption": "Robust accuracy (worst case over attacks where available) against "
                       "the budget eps, one panel per threat model and test domain, one "
                       "colour per model; eps 0 is the clean accuracy. Dotted: near-chance "
                       "models."})

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
        row_labels = [f"{_model_label(k, multi_run)} · {k[3]}" for k in keys]
        # the baselines (random noise, corruptions) are not attacks: near the clean
        # accuracy, they would stretch the colour scale and flatten the attacks' contrast
        scaled = [not _baseline(a, t) for t, a in column_keys]
        uri = heatmap_figure(grid, row_labels, column_labels, dpi=dpi, scale_columns=scaled)
        if uri:
            out.append({
                "id": "heatmap", "heading": "Models × attacks", "uri": uri,
                "alt": "heatmap of robust accuracy per model and attack",
                "caption": "Robust accuracy (%) per model and attack, each at its threat "
                           f"model's main eps (the headline eps for {headline.threat}). "
                           "The colours span the attacks' range; baselines (noise, "
                           "corruptions) above it show its top colour, with their number."})

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
        uri = domain_bars_figure(pd.DataFrame(pairs), headline=short, dpi=dpi)
        if uri:
            out.append({
                "id": "domains", "heading": "Source vs target", "uri": uri,
                "alt": "source versus target accuracy per model",
                "caption": "Clean and headline robust accuracy on the source and the target "
                           "domain, per model: the domain gap, and what adaptation recovers. "
                           "Every bar is labelled; a 0% bar is a short stub at the axis."})
    return out


# --------------------------------------------------------------------------- examples


def _picture(image: np.ndarray, alt: str) -> dict[str, Any]:
    height, width = image.shape[:2]
    scale = max(1, math.ceil(64 / max(width, 1))) if width < 64 else 1
    return {"uri": image_uri(image), "width": width * scale, "height": height * scale,
            "alt": alt}


def _eps_text(example: ExampleSet, labels: Mapping[tuple[str, float], str],
              eps: float | None = None, threat: str | None = None) -> str:
    eps = example.eps if eps is None else eps
    threat = example.threat if threat is None else threat
    return labels.get((threat, eps_key(eps)), format_eps(eps))


def _strip_title(example: ExampleSet, labels: Mapping[tuple[str, float], str]
                 ) -> tuple[str, str, str]:
    """The strip's label (``apgd-t at 8/255``), its tag and the sentence saying why these
    examples: the attack behind the headline, or a fallback and what it stands in for."""
    eps_text = _eps_text(example, labels)
    title = f"{example.attack} at {eps_text}"
    if example.role == "headline":
        return title, "headline attack", (
            f"the attack behind the headline: of the attacks at {example.threat} {eps_text}, "
            f"it fooled the most samples")
    if example.role == "fallback":
        if example.headline_attack and math.isfinite(example.headline_eps):
            eps_text = _eps_text(example, labels, example.headline_eps,
                                 example.headline_threat)
            wanted = (f"the headline attack, {example.headline_attack} at {eps_text}, kept no "
                      f"adversarial example")
        else:
            wanted = "no attack of the headline's threat has a number for this model"
        return title, "fallback", f"shown because {wanted}"
    return title, "", "an attack's examples (the file does not say how it was chosen)"


def _per_255(value: float) -> str:
    return f"{value * 255:.2g}/255"


def _strip(example: ExampleSet, labels: Mapping[tuple[str, float], str],
           limit: int) -> dict[str, Any]:
    k = min(limit, example.images_clean.shape[0])
    clean, adv = example.images_clean[:k], example.images_adv[:k]
    view = perturbation_image(clean, adv)
    clean_cells, adv_cells, delta_cells = [], [], []
    for i in range(k):
        truth = example.class_name(example.labels[i])
        p_clean = example.class_name(example.pred_clean[i])
        p_adv = example.class_name(example.pred_adv[i])
        notes = []
        if len(example.example_attacks) > i and example.example_attacks[i] != example.attack:
            notes.append(f"by {example.example_attacks[i]}")
        if len(example.found_eps) > i and eps_key(example.found_eps[i]) < eps_key(example.eps):
            notes.append(f"found at {_eps_text(example, labels, example.found_eps[i])}")
        clean_cells.append({**_picture(clean[i], f"clean image of {truth}"),
                            "label": p_clean, "truth": f"true {truth}",
                            "ok": bool(example.pred_clean[i] == example.labels[i]),
                            "plain": False})
        adv_cells.append({**_picture(adv[i], f"adversarial image, predicted {p_adv}"),
                          "label": p_adv, "truth": ", ".join(notes),
                          "ok": bool(example.pred_adv[i] == example.labels[i]),
                          "plain": False})
        delta_cells.append({**_picture(view.images[i], "local mean of the perturbation"),
                            "label": f"±{_per_255(float(view.scales[i]))}", "truth": "",
                            "ok": True, "plain": True})
    title, tag, why = _strip_title(example, labels)
    caption = (f"{example.domain} domain ({example.dataset}) · {example.threat} · {why} · "
               f"labels are predictions; red = wrong")
    return {"title": title, "tag": tag, "caption": caption, "scale": view.label,
            "rows": [("clean", clean_cells), ("adversarial", adv_cells),
                     (f"change, {view.window}×{view.window} mean", delta_cells)]}


def _examples_view(sets: list[ExampleSet], problems: list[str], board: pd.DataFrame,
                   labels: Mapping[tuple[str, float], str], limit: int
                   ) -> dict[str, Any] | None:
    if not sets and not problems:
        return None
    order = {m: i for i, m in enumerate(dict.fromkeys(board["model"]))}
    domain_order = {"source": 0, "target": 1}
    sets = sorted(sets, key=lambda s: (order.get(s.model, len(order)), s.model,
                                       domain_order.get(s.domain, 2), s.domain, s.path.name))
    by_model: dict[str, list[ExampleSet]] = {}
    for example in sets:
        by_model.setdefault(example.model, []).append(example)
    models = []
    for model, group in by_model.items():
        classes = []
        with_classes = next((e for e in group if e.class_images is not None
                             and len(e.class_images)), None)
        if with_classes is not None:
            classes = [{**_picture(image, "image maximising class "
                                   f"{with_classes.class_name(i)}"),
                        "name": with_classes.class_name(i)}
                       for i, image in enumerate(with_classes.class_images)]
        alignment = ""
        if "perceptual_alignment" in board and classes:
            values = pd.to_numeric(board.loc[board["model"] == model, "perceptual_alignment"],
                                   errors="coerce").dropna()
            if len(values):
                alignment = (f"perceptual alignment {values.iloc[0]:.2f} (chance "
                             f"{1 / len(classes):.2f}): the fraction of these images closest "
                             f"to the mean training image of their own class")
        models.append({
            "name": model, "strips": [_strip(e, labels, limit) for e in group],
            "classes": classes, "alignment": alignment,
            "classes_domain": with_classes.domain if with_classes is not None else "",
        })
    return {"problems": problems, "models": models, "gradient": diverging_css_gradient()}


# --------------------------------------------------------------------------- provenance


def _tree(value: Any) -> list[dict[str, Any]]:
    """A mapping as nested definition-list items: ``{"key", "kind", "value"}`` where kind is
    ``map`` (value: items), ``seq`` (value: a list of item lists) or ``text``."""
    items = []
    for key, item in (value or {}).items():
        item = plain(item)
        if isinstance(item, dict):
            items.append({"key": str(key), "kind": "map" if item else "text",
                          "value": _tree(item) if item else "(none)"})
        elif isinstance(item, list) and any(isinstance(v, (dict, list)) for v in item):
            items.append({"key": str(key), "kind": "seq",
                          "value": [_tree(v) if isinstance(v, dict)
                                    else [{"key": "", "kind": "text", "value": _text(v)}]
                                    for v in item]})
        else:
            items.append({"key": str(key), "kind": "text", "value": _text(item)})
    return items


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) if value else "(none)"
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# --------------------------------------------------------------------------- the page


#: ``[reporter.html]`` parameters, checked by robench's one validator (``robench.checked``)
MaxExamples = Annotated[int, robench.Check(ge=0, means="images per strip")]
Dpi = Annotated[int, robench.Check(ge=30, le=300, means="of the plots; lower for smaller files")]


class HtmlReporter:
    """``leaderboard.html``: sortable, filterable table, curves, heatmap, domain bars,
    adversarial examples and class-maximisation images, in one offline file.

    Parameters: ``stem`` (file name without ``.html``), ``max_examples`` (images per strip),
    ``dpi`` (of the plots; lower for smaller files).
    """

    @robench.checked("[reporter.html]")
    def __init__(self, *, stem: FileStem = "leaderboard", max_examples: MaxExamples = 8,
                 dpi: Dpi = 90) -> None:
        self.stem = stem
        self.max_examples = max_examples
        self.dpi = dpi

    def render(self, results: pd.DataFrame, context: Mapping[str, Any]) -> str:
        """The page as a string (``write`` saves it atomically)."""
        board = build_leaderboard(results)
        headline = choose_headline(results)
        script = _asset("report.js")
        examples_dir = context.get("examples_dir")
        sets, problems = load_examples(Path(examples_dir) if examples_dir else None)
        page = {
            "title": run_title(results, context),
            "headline": headline.describe(),
            "headline_doc": HEADLINE_DOC,
            "differences": differences_note(board) if not board.empty else "",
            "input": input_formats(context.get("provenance")),
            "rows": len(board),
            "table": _table_view(board, headline) if not board.empty else None,
            "figures": _figures(results, board, headline, dpi=self.dpi)
            if not board.empty else [],
            "examples": _examples_view(sets, problems, board, eps_labels(results),
                                       self.max_examples),
            "provenance": _tree(context.get("provenance") or {}),
            "config": _tree(context.get("config") or {}),
            "csp": _csp(script),
            # the package's own files, the only strings not escaped
            "css": Markup(_asset("report.css")),
            "script": Markup(script),
        }
        return _environment().get_template(TEMPLATE).render(page=page)

    def write(self, results: pd.DataFrame, run_dir: Path, context: dict[str, Any]) -> list[Path]:
        path = Path(run_dir) / f"{self.stem}.html"
        return [atomic_write_text(path, self.render(results, context))]
