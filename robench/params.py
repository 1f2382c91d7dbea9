"""One validator for every value a user writes: config keys, plugin parameters, executor options.

A value is checked against a type annotation, the way it is declared anyway: a
:class:`GridConfig` field, or a parameter of a plugin's factory.  Plain annotations say the
type (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, ``list[X]``, a path);
``typing.Annotated`` adds a :class:`Check` with bounds, a further condition and the words a
message uses::

    ImageSize = Annotated[int, robench.Check(ge=4, le=512,
                                             means="pixels per side of the square images")]

    @robench.checked("[data.my-data]")
    def my_data(*, image_size: ImageSize = 32, root: str | None = None) -> DatasetBundle: ...

The host checks the parameters of every factory it builds (``host.build``) and the grid
checks every ``[kind.NAME]`` table before any work starts, both through :func:`check_params`;
:func:`checked` applies the same check when a factory is called directly from Python.  A bad
value is a :class:`robench.UsageError` (exit code 2) that names where the value was written,
the key, what is allowed and the value given::

    [data.digits] image_size must be an integer from 4 to 512 (pixels per side of the square
    images), got 2.

Annotations this module does not know (a class, a callable, ``Any``, a name imported only for
type checkers) accept any value: checking them is the factory's business.  Values are checked,
never converted on their way to a factory (an int stays an int where a float is allowed), so
a factory receives exactly what the user wrote.  The config alone converts (``coerce``): the
command line hands it strings, and ``--epochs 3`` means the integer 3; ``lr = 1`` is the float
1.0, as the config (and so every task key) has always recorded it.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import pathlib
import types
import typing
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from robench.errors import UsageError
from robench.lazy import LazyFactory

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Check:
    """What ``Annotated[T, Check(...)]`` adds to the type ``T``.

    ``ge``/``gt``/``le``/``lt`` bound a number; ``test`` is a further condition on a value of
    the right type; ``rule`` replaces the whole generated description of what is allowed ("an
    integer >= 1 or left out") when a bound or a test needs words of its own; ``means`` says
    what the value is, in parentheses after the rule.  Bounds and ``test`` apply to values
    that are not None (None, where the annotation allows it, means "left out").
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    test: Callable[[Any], bool] | None = None
    rule: str = ""
    means: str = ""

    def bounds(self) -> str:
        """``">= 1"``, ``"from 4 to 512"``, ``"strictly between 0 and 1"``, ... or ``""``."""
        low = (">=", self.ge) if self.ge is not None else (">", self.gt) \
            if self.gt is not None else None
        high = ("<=", self.le) if self.le is not None else ("<", self.lt) \
            if self.lt is not None else None
        if low and high:
            if low[0] == ">=" and high[0] == "<=":
                return f"from {_number(low[1])} to {_number(high[1])}"
            if low[0] == ">" and high[0] == "<":
                return f"strictly between {_number(low[1])} and {_number(high[1])}"
            return (f"in {'[' if low[0] == '>=' else '('}{_number(low[1])}, "
                    f"{_number(high[1])}{']' if high[0] == '<=' else ')'}")
        if low or high:
            sign, bound = low or high  # type: ignore[misc]
            return f"{sign} {_number(bound)}"
        return ""

    def admits(self, value: Any) -> bool:
        """Whether a value of the right type meets the bounds and the test."""
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if self.ge is not None and not value >= self.ge:
                return False
            if self.gt is not None and not value > self.gt:
                return False
            if self.le is not None and not value <= self.le:
                return False
            if self.lt is not None and not value < self.lt:
                return False
        if self.test is None:
            return True
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):  # a value the test cannot even look at fails it
            return False


def _number(value: float) -> str:
    return f"{value:g}"


class _Mismatch(Exception):
    """A value does not fit an annotation (turned into a UsageError by the caller); its
    argument, when there is one, is the value as converted (``"-2"`` -> ``-2``)."""


# --------------------------------------------------------------------------- annotations


def _split(annotation: Any) -> tuple[Any, list[Check]]:
    """``Annotated[T, Check(...), ...]`` -> (T, checks); any other annotation -> (it, [])."""
    checks: list[Check] = []
    while typing.get_origin(annotation) is typing.Annotated:
        checks = [m for m in annotation.__metadata__ if isinstance(m, Check)] + checks
        annotation = annotation.__origin__
    return annotation, checks


def _members(annotation: Any) -> tuple[list[Any], bool]:
    """The members of a union other than None, and whether None is one of them."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members, len(members) < len(typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return [], True
    return [annotation], False


def _is_path(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, (os.PathLike, pathlib.PurePath))


def checkable(annotation: Any) -> bool:
    """Whether this module checks values of ``annotation`` (else any value passes)."""
    base, checks = _split(annotation)
    if checks:
        return True
    members, _ = _members(base)
    return bool(members) and all(_known(m) for m in members)


def _known(annotation: Any) -> bool:
    base, checks = _split(annotation)
    if checks:
        return True
    if base in (bool, int, float, str) or _is_path(base):
        return True
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(_known(m) for m in _members(base)[0])
    if origin in (list, tuple, Sequence, dict, Mapping) or base in (list, tuple, dict):
        return all(_known(a) or a is Any or a is Ellipsis for a in typing.get_args(base))
    return False


def conform(annotation: Any, value: Any, *, coerce: bool = False) -> Any:
    """``value`` checked against ``annotation``: returned (converted only with ``coerce``: a
    string, or a number of another type, to the int or float asked for, so ``lr = 1`` is the
    float 1.0 as before), or :class:`_Mismatch` raised."""
    base, checks = _split(annotation)
    members, optional = _members(base)
    if value is None and optional:
        return None
    if not members:
        raise _Mismatch
    for member in members:
        try:
            result = _conform_member(member, value, coerce=coerce)
        except _Mismatch:
            continue
        if all(check.admits(result) for check in checks):
            return result
        raise _Mismatch(result)  # the value as converted: the message shows it
    raise _Mismatch


def _conform_member(annotation: Any, value: Any, *, coerce: bool) -> Any:
    if typing.get_origin(annotation) is typing.Annotated or \
            typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return conform(annotation, value, coerce=coerce)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value) if coerce else value
        if coerce and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value) if coerce else value
            raise _Mismatch
        if coerce and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise _Mismatch from None
            if math.isfinite(number):
                return number
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if _is_path(annotation):
        if isinstance(value, (str, os.PathLike)):
            return value
        raise _Mismatch
    if origin is typing.Literal:
        for choice in typing.get_args(annotation):
            if type(value) is type(choice) and value == choice:
                return value
        raise _Mismatch
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) == 1 and args[0] is not Any:
            return type(value)(conform(args[0], item, coerce=coerce) for item in value)
        return value
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        args = typing.get_args(annotation)
        if len(args) == 2:
            for key, item in value.items():
                if args[0] is not Any:
                    conform(args[0], key, coerce=coerce)
                if args[1] is not Any:
                    conform(args[1], item, coerce=coerce)
        return value
    return value  # not a type this module knows: the factory checks it


def describe(annotation: Any) -> str:
    """What ``annotation`` allows, in words: ``"an integer >= 1 or left out"``."""
    base, checks = _split(annotation)
    members, optional = _members(base)
    rule = next((c.rule for c in reversed(checks) if c.rule), "")
    if not rule:
        rule = " or ".join(_describe_member(m) for m in members) or "left out"
        bounds = " ".join(b for b in (c.bounds() for c in checks) if b)
        if bounds:
            rule = f"{rule} {bounds}"
        if optional and members:
            rule += " or left out"
    means = "; ".join(c.means for c in checks if c.means)
    return f"{rule} ({means})" if means else rule


def _describe_member(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Annotated or \
            typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return describe(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if _is_path(annotation):
        return "a path"
    if origin is typing.Literal:
        choices = [str(c) if isinstance(c, str) else repr(c) for c in typing.get_args(annotation)]
        return choices[0] if len(choices) == 1 else f"one of {', '.join(choices)}"
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = _describe_member(args[0]) if len(args) == 1 and args[0] is not Any else ""
        return f"a list of {_plural(item)}" if item else "a list"
    if origin in (dict, Mapping) or annotation is dict:
        return "a table"
    return getattr(annotation, "__name__", str(annotation))


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            noun, _, rest = text[len(article):].partition(" ")
            return f"{noun}s{' ' + rest if rest else ''}"
    return text


def check_value(annotation: Any, value: Any, *, subject: str, coerce: bool = False) -> Any:
    """``value`` if it fits ``annotation`` (converted with ``coerce``), else a UsageError:
    ``{subject} must be {what is allowed}, got {value!r}.``"""
    try:
        return conform(annotation, value, coerce=coerce)
    except _Mismatch as exc:
        # text the command line converted is shown as the number it became ('-2' -> -2)
        shown = exc.args[0] if exc.args and isinstance(value, str) else value
        raise UsageError(f"{subject} must be {describe(annotation)}, got {shown!r}.") from None


# --------------------------------------------------------------------------- factories


@dataclass(frozen=True)
class Parameters:
    """What a factory accepts: its keyword parameters' annotations (None where this module
    cannot check the annotation), and whether it takes any other keyword (``**kwargs``)."""

    annotations: dict[str, Any]
    any_keyword: bool

    @property
    def names(self) -> list[str]:
        return list(self.annotations)

    def check(self, params: Mapping[str, Any], *, where: str,
              skip: Collection[str] = ()) -> None:
        """Check each value of ``params`` that has a checkable annotation (names in ``skip``
        are the harness's own and not checked); unknown names are the caller's business."""
        for key, value in params.items():
            annotation = self.annotations.get(key)
            if annotation is not None and key not in skip:
                check_value(annotation, value, subject=f"{where} {key}")


_CACHE: weakref.WeakKeyDictionary[Any, Parameters] = weakref.WeakKeyDictionary()


def parameters(factory: Callable[..., Any]) -> Parameters | None:
    """The :class:`Parameters` of ``factory`` (a function, a class, a :func:`robench.lazy`
    reference, which this imports), or None when Python cannot tell its signature."""
    try:
        return _CACHE[factory]
    except (KeyError, TypeError):
        pass
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    namespace = _namespace(factory)
    annotations: dict[str, Any] = {}
    any_keyword = False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            any_keyword = True
        elif param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                            inspect.Parameter.KEYWORD_ONLY):
            annotations[param.name] = _resolve(param.annotation, namespace)
    result = Parameters(annotations=annotations, any_keyword=any_keyword)
    try:
        _CACHE[factory] = result
    except TypeError:  # not weakly referable (a builtin): computed each time
        pass
    return result


def _namespace(factory: Any) -> dict[str, Any]:
    """The globals the factory's annotations were written in (a class's ``__init__``'s)."""
    target = factory.resolve() if isinstance(factory, LazyFactory) else factory
    if inspect.isclass(target):
        target = target.__init__
    target = inspect.unwrap(target)
    while isinstance(target, functools.partial):
        target = target.func
    return dict(getattr(target, "__globals__", {}))


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """An annotation as an object (string annotations evaluated in the factory's module), or
    None when it is missing, unresolvable (a name imported only for type checkers) or of a
    type this module does not check."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, namespace)  # noqa: S307 - the plugin's own source
        except Exception:
            return None
    return annotation if checkable(annotation) else None


def checked(where: str) -> Callable[[F], F]:
    """Decorate a factory so that a direct call checks its keyword arguments the way the host
    checks them: ``@robench.checked("[executor.local]")``.  ``where`` starts each message; it
    is the config table the values come from.  Calls through ``host.build`` are checked
    before the call, with the table of the name the user wrote."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found = parameters(function)
            if found is not None:
                found.check(kwargs, where=where)
            return function(*args, **kwargs)

        return typing.cast(F, wrapper)

    return decorate


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def table_ref(table: str, name: str) -> str:
    """``[table.name]`` as TOML writes it: ``[data.digits]``, ``[attack."autoattack/fab"]``."""
    key = name if name and set(name) <= _BARE_KEY else '"' + name.replace('"', '\\"') + '"'
    return f"[{table}.{key}]"


__all__ = ["Check", "Parameters", "check_value", "checkable", "checked", "conform",
           "describe", "parameters", "table_ref"]
