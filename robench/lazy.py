"""Factories imported on first use, so that listing plugins and refusing a bad name is fast.

A plugin's registration module should import nothing heavy (torch, timm, foolbox, ray): it
only describes what it offers.  ``robench.lazy("my_package.attacks:PGD")`` stands for the
callable ``PGD`` of ``my_package.attacks`` without importing that module: the module is
imported when the factory is called or its signature is read (to check a parameter), never
when ``robench plugins`` lists the spec or when an unknown name is refused.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


class LazyFactory:
    """A callable that imports ``module:attribute`` on first use and then behaves like it."""

    def __init__(self, target: str, /, **bound: Any) -> None:
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"lazy factory {target!r}: write 'package.module:callable'")
        self.target = target
        self.bound = bound
        self._resolved: Any = None

    def resolve(self) -> Any:
        """The real callable (imported now if it was not yet)."""
        if self._resolved is None:
            module, _, attribute = self.target.partition(":")
            value: Any = importlib.import_module(module)
            for part in attribute.split("."):
                value = getattr(value, part)
            self._resolved = value
        return self._resolved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **{**self.bound, **kwargs})

    @property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self.resolve())
        if not self.bound:
            return signature
        return signature.replace(parameters=[
            p for p in signature.parameters.values() if p.name not in self.bound])

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return getattr(self._resolved, "__doc__", None) if self._resolved else None

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str, /, **bound: Any) -> LazyFactory:
    """``lazy("package.module:callable", **fixed_params)``: a factory imported on first use."""
    return LazyFactory(target, **bound)


def module_getattr(module: str, defined_in: dict[str, str]) -> Any:
    """A module ``__getattr__`` (PEP 562) that imports ``name`` from ``defined_in[name]`` on
    first use: a registration module keeps exporting the names it exported before its
    factories became lazy, without importing their modules when it is imported."""
    def __getattr__(name: str) -> Any:
        if name in defined_in:
            return getattr(importlib.import_module(defined_in[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
