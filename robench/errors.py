"""Typed errors.  Each message says what was wrong and what is accepted."""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Iterable


class RobenchError(Exception):
    """Base class of robench's own errors."""


class UsageError(RobenchError):
    """Unusable input: bad config, unknown name, bad value, missing path.  CLI exit code 2."""

    exit_code = 2


class PluginError(RobenchError):
    """A plugin misbehaved while registering (duplicate names, malformed specs)."""

    exit_code = 2


class UserCodeError(UsageError):
    """The user's own code raised where robench called it: a ``py:`` factory, the module that
    holds it, an architecture for a weights file.  Exit code 2, like any input to fix; the
    original exception is the ``__cause__`` (``robench grid --debug`` prints its traceback)."""


class PluginCodeError(RobenchError):
    """A plugin's factory raised where robench called it while checking a grid, before any
    work: a fault in the plugin or what it depends on, not in the user's input.  Exit code 1;
    the original exception is the ``__cause__`` (``robench grid --debug`` prints it)."""

    exit_code = 1


def describe_exception(exc: BaseException, *, limit: int = 300) -> str:
    """``"RuntimeError: weights missing (train_cnn.py, line 7, in broken)"``: the type, the
    message on one line (cut at ``limit`` characters) and where it was raised, for a message
    of one paragraph."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    where = ""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if frames:
        frame = frames[-1]
        path = frame.filename
        try:
            relative = os.path.relpath(path)
            path = relative if not relative.startswith("..") else path
        except ValueError:  # another drive (Windows)
            pass
        where = f" ({path}, line {frame.lineno}, in {frame.name})"
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}"


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


def closest(name: str, known: Iterable[str], n: int = 3, *, cutoff: float = 0.5) -> list[str]:
    """The known names closest to ``name``, best first (``cutoff``: how alike, 0 to 1)."""
    return difflib.get_close_matches(name, sorted(known), n=n, cutoff=cutoff)


def unknown_kind(kind: str, kinds: Iterable[str]) -> UsageError:
    """The error for a plugin kind that does not exist, with the closest kinds suggested."""
    kinds = list(kinds)
    # nine short, unlike words: only a close match is a useful guess ('atack', not 'dataset')
    close = closest(kind.lower(), kinds, n=2, cutoff=0.7)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UsageError(f"Unknown plugin kind {kind!r}.{hint} Kinds are {', '.join(kinds)}.")
