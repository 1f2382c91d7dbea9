"""Typed errors.  Each message says what was wrong and what is accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RobenchError(Exception):
    """Base class of robench's own errors."""


class UsageError(RobenchError):
    """Unusable input: bad config, unknown name, bad value, missing path.  CLI exit code 2."""

    exit_code = 2


class PluginError(RobenchError):
    """A plugin misbehaved while registering (duplicate names, malformed specs)."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A plugin name that no installed plugin registers."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if not close:
            close = [k for k in known if name.lower() in k.lower()][:3]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(known[:25]) + (", ..." if len(known) > 25 else "")
        listing = f" Installed {kind}s: {shown}." if shown and not close else ""
        if not known:
            listing = " No installed name is close to it."
        super().__init__(
            f"Unknown {kind} {name!r}.{hint}{listing} "
            f"Run `robench plugins --kind {kind}` to list them with descriptions."
        )
        self.kind = kind
        self.name = name
        self.close_matches = close


def closest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to ``name``, best first."""
    return difflib.get_close_matches(name, sorted(known), n=n, cutoff=0.5)


def unknown_kind(kind: str, kinds: Iterable[str]) -> UsageError:
    """The error for a plugin kind that does not exist, with the closest kinds suggested."""
    kinds = list(kinds)
    # nine short, unlike words: only a close match is a useful guess ('atack', not 'dataset')
    close = difflib.get_close_matches(kind.lower(), kinds, n=2, cutoff=0.7)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UsageError(f"Unknown plugin kind {kind!r}.{hint} Kinds are {', '.join(kinds)}.")
