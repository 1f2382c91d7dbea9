"""Text shown through rich: plugin names, descriptions and labels are data, not markup."""

from __future__ import annotations


def plain(text: object) -> str:
    """``text`` with rich markup escaped, so ``[linf, bounded]`` is printed as written."""
    from rich.markup import escape

    return escape(str(text))
