"""Registers the built-in complete-classifier namespaces (filled in by robench_models)."""

from __future__ import annotations

import robench


@robench.hookimpl
def robench_register_models() -> list[robench.ModelSpec]:
    return []
