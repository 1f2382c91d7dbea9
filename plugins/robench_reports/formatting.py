"""Formatting shared by the reporters: numbers for people, escaping for untrusted text.

Every string a report shows (model names, run titles, class names, flags, config values)
comes from a config, a plugin, a CSV or an npz file, any of which may be someone else's
submission; so each output format has one escaping function here and every writer uses it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd

import robench

_MD_SPECIALS = re.compile(r"([\\`*_\[\]|])")


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell or heading.

    ``|`` would end the cell; ``<``/``>``/``&`` would be raw HTML (an ``<img onerror>`` in a
    model name runs script in many Markdown viewers); backslash, backtick, ``*``, ``_`` and
    brackets would turn into formatting or links.  Newlines would break the table row.
    """
    text = "" if value is None else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIALS.sub(r"\\\1", text)
    return " ".join(text.split())


def is_missing(value: Any) -> bool:
    """True for None, NaN, pd.NA and empty strings: the cells reports show as a dash."""
    if value is None:
        return True
    if isinstance(value, str):
        return value == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def pct(value: Any, *, digits: int = 1) -> str:
    """An accuracy fraction as a percentage without the sign: ``0.9312 -> '93.1'``."""
    if is_missing(value) or not math.isfinite(float(value)):
        return "–"
    return f"{100.0 * float(value):.{digits}f}"


def signed_pp(value: Any) -> str:
    """A difference of accuracies in percentage points, with its sign: ``+3.2``."""
    if is_missing(value) or not math.isfinite(float(value)):
        return "–"
    return f"{100.0 * float(value):+.1f}"


def paired_pp(row: Mapping[str, Any], column: str, *, interval: bool = False) -> str:
    """A paired difference of a leaderboard row in percentage points: ``+3.2``, with
    ``n.s.`` when its 95% interval over the seeds holds 0 and, with ``interval``, the
    interval itself (``+3.2 [+0.4, +6.0]``)."""
    from robench.leaderboard import significance

    value = row.get(column)
    text = signed_pp(value)
    if text == "–":
        return text
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if interval and not (is_missing(low) or is_missing(high)):
        text += f" [{signed_pp(low)}, {signed_pp(high)}]"
    if significance(low, high, row.get("n_seeds")) == "n.s.":
        text += " n.s."
    return text


def pct_ci(value: Any, low: Any, high: Any) -> str:
    """``93.1 [90.2, 95.3]``: an accuracy with its 95% interval, in percent."""
    if is_missing(value):
        return "–"
    if is_missing(low) or is_missing(high):
        return pct(value)
    return f"{pct(value)} [{pct(low)}, {pct(high)}]"


def number(value: Any) -> str:
    """Counts and seconds, compactly: ``1,234`` or ``12.3``."""
    if is_missing(value):
        return "–"
    value = float(value)
    if not math.isfinite(value):
        return "–"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.1f}"


def plain(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars to Python, NaN/NA to None, paths to strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``frame`` as JSON-ready dicts (column order kept)."""
    return [plain(dict(zip(frame.columns, row, strict=True)))
            for row in frame.itertuples(index=False, name=None)]


def to_json(value: Any) -> str:
    """Strict JSON (no NaN, which most JSON parsers refuse), indented for diffs."""
    return json.dumps(plain(value), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _plain_file_name(stem: str) -> bool:
    return bool(stem) and stem not in (".", "..") and not {"/", "\\", "\x00"} & set(stem)


#: a reporter's output name: a plain file name inside the run folder, without its suffix;
#: reporters annotate ``stem`` with it and are decorated with ``robench.checked``
FileStem = Annotated[str, robench.Check(
    test=_plain_file_name, rule="a plain file name without folders, e.g. 'leaderboard'")]


def input_formats(provenance: Mapping[str, Any] | None) -> str:
    """The images each dataset of a run was served as, from its provenance:
    ``mnist 1x28x28 grey, mnist-m 3x32x32 RGB`` ("" when the provenance does not say)."""
    datasets = (provenance or {}).get("datasets")
    if not isinstance(datasets, Mapping):
        return ""
    parts = [f"{name} {facts['input']}" for name, facts in datasets.items()
             if isinstance(facts, Mapping) and facts.get("input")]
    return ", ".join(parts)


def differences_note(board: pd.DataFrame) -> str:
    """What a reader may conclude from the leaderboard's gaps and gains: untested with one
    seed, else how they were tested (plain text; the caller escapes it)."""
    from robench.leaderboard import PAIRED_CONFIDENCE

    seeds = pd.to_numeric(board.get("n_seeds"), errors="coerce") if len(board) else None
    most = int(seeds.max()) if seeds is not None and seeds.notna().any() else 1
    if most < 2:
        return ("Differences are untested: each model was trained and evaluated with one "
                "seed, so a domain gap, adaptation gain or defense gain may be seed-to-seed "
                "spread. Run several seeds (--seeds 0,1,2) to give each a "
                f"{PAIRED_CONFIDENCE:.0%} interval.")
    return (f"Differences are paired by seed (same seed, same test samples), averaged over up "
            f"to {most} seeds, with a {PAIRED_CONFIDENCE:.0%} t-interval over the seeds; "
            "n.s. marks a difference whose interval holds 0 (not significant: within the "
            "seed-to-seed spread). A row with one seed is untested (docs/protocol.md).")


def provenance_lines(provenance: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(key, text)`` pairs of a run's provenance, nested values as compact JSON."""
    lines = []
    for key, value in (provenance or {}).items():
        if isinstance(value, (Mapping, list, tuple)):
            text = json.dumps(plain(value), ensure_ascii=False, sort_keys=True)
        else:
            text = "" if value is None else str(value)
        lines.append((str(key), text))
    return lines
