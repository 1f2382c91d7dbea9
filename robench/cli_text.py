"""Text shown through rich: plugin names, descriptions and labels are data, not markup."""

from __future__ import annotations

from typing import Any


def plain(text: object) -> str:
    """``text`` with rich markup escaped, so ``[linf, bounded]`` is printed as written."""
    from rich.markup import escape

    return escape(str(text))


def headline_note(board: Any) -> str | None:
    """The line under the terminal summary that says what ``headline_acc`` measures, from
    the leaderboard's ``headline_metric`` (``worst-case robust accuracy, linf @ 8/255``) and
    ``headline_source``; None for a leaderboard without a headline."""
    if "headline_metric" not in board or board.empty:
        return None
    metrics = [str(m) for m in dict.fromkeys(board["headline_metric"].dropna()) if str(m)]
    if not metrics:
        return None
    note = f"headline_acc: {'; '.join(metrics)}"
    sources = set(board["headline_source"].dropna()) if "headline_source" in board else set()
    if "min-over-attacks" in sources:
        note += (" (for models without worst-case rows, the lowest robust accuracy over the "
                 "attacks: an optimistic bound)")
    return note
