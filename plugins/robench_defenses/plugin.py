"""Registers the built-in defenses."""

from __future__ import annotations

import robench


def _none() -> None:
    return None


@robench.hookimpl
def robench_register_defenses() -> list[robench.DefenseSpec]:
    return [robench.DefenseSpec(name="none", factory=_none, stage="none",
                                description="no defense: the model as trained")]
