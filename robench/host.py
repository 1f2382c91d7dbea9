"""The plugin host: a pluggy manager plus a registry of the specs plugins registered.

A host is built fresh on demand (``PluginHost.create()``), with or without entry points, with
extra plugin objects passed in, and with plugins blocked by name.  Environment switches:

``ROBENCH_DISABLE_PLUGINS``   comma-separated entry-point names never to load.
``ROBENCH_PLUGINS``           if set, a comma-separated allow-list: only these entry points load.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import pluggy

from robench import hookspecs
from robench.errors import PluginError, UnknownNameError, UsageError
from robench.hookspecs import HOOK_KINDS, PROJECT
from robench.specs import SPEC_TYPES, PluginSpec

ENTRY_POINT_GROUP = "robench"
KINDS: tuple[str, ...] = tuple(HOOK_KINDS)


def _env_list(var: str) -> list[str]:
    return [part.strip() for part in os.environ.get(var, "").split(",") if part.strip()]


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def build_plugin_manager(
    *,
    entry_points: bool = True,
    plugins: Iterable[object] = (),
    blocked: Iterable[str] = (),
) -> pluggy.PluginManager:
    """A fresh pluggy manager with robench's hookspecs.

    ``plugins`` are extra modules/objects registered directly (tests, notebooks); ``blocked``
    names plugins (entry-point names) never to load, on top of ``ROBENCH_DISABLE_PLUGINS``.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in [*blocked, *_env_list("ROBENCH_DISABLE_PLUGINS")]:
        pm.set_blocked(name)
    if entry_points:
        allow = set(_env_list("ROBENCH_PLUGINS"))
        found = _entry_points()
        seen: dict[str, str] = {}
        for ep in found:  # before importing anything: a clash is an install problem
            if ep.name in seen and seen[ep.name] != ep.value and not pm.is_blocked(ep.name):
                raise PluginError(
                    f"Two installed packages register the robench plugin name {ep.name!r}: "
                    f"{seen[ep.name]!r} and {ep.value!r}. Uninstall one, or block the name "
                    f"with ROBENCH_DISABLE_PLUGINS={ep.name}."
                )
            seen[ep.name] = ep.value
        for ep in found:
            if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            if allow and ep.name not in allow:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others
                raise PluginError(
                    f"Plugin {ep.name!r} (entry point {ep.value!r}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Fix or uninstall it, or disable it with "
                    f"ROBENCH_DISABLE_PLUGINS={ep.name}."
                ) from exc
            pm.register(module, name=ep.name)
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        if pm.is_blocked(name):
            continue
        pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc} (robench hooks are: {', '.join(HOOK_KINDS.values())})."
        ) from None
    return pm


class PluginHost:
    """Looks up, lists and builds the things plugins registered."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._registry: dict[str, dict[str, PluginSpec]] = {}

    @classmethod
    def create(
        cls,
        *,
        entry_points: bool = True,
        plugins: Iterable[object] = (),
        blocked: Iterable[str] = (),
    ) -> PluginHost:
        return cls(build_plugin_manager(entry_points=entry_points, plugins=plugins,
                                        blocked=blocked))

    # ------------------------------------------------------------------ registry

    def plugin_distribution(self, plugin_name: str) -> str:
        """``"name version"`` of the distribution whose entry point is ``plugin_name``."""
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            if ep.name == plugin_name and dist is not None:
                return f"{dist.metadata['name']} {dist.version}"
        return ""

    def specs(self, kind: str) -> dict[str, PluginSpec]:
        """Every spec of ``kind`` by name, collected once and checked."""
        if kind not in HOOK_KINDS:
            raise UsageError(f"Unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}.")
        if kind in self._registry:
            return self._registry[kind]
        spec_type = SPEC_TYPES[kind]
        hook = getattr(self.pm.hook, HOOK_KINDS[kind])
        merged: dict[str, PluginSpec] = {}
        for impl in hook.get_hookimpls():
            try:
                returned = impl.function()
            except Exception as exc:
                raise PluginError(
                    f"Plugin {impl.plugin_name!r} raised in {HOOK_KINDS[kind]}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for spec in returned or ():
                if not isinstance(spec, spec_type):
                    raise PluginError(
                        f"Plugin {impl.plugin_name!r} returned {type(spec).__name__} from "
                        f"{HOOK_KINDS[kind]}; expected robench.{spec_type.__name__}."
                    )
                spec = replace(spec, plugin=impl.plugin_name)
                if spec.name in merged:
                    raise PluginError(
                        f"The {kind} name {spec.name!r} is registered twice: by plugin "
                        f"{merged[spec.name].plugin!r} and by plugin {spec.plugin!r}. "
                        f"Disable one with ROBENCH_DISABLE_PLUGINS."
                    )
                merged[spec.name] = spec
        self._registry[kind] = dict(sorted(merged.items()))
        return self._registry[kind]

    def names(self, kind: str) -> list[str]:
        return list(self.specs(kind))

    def select(self, kind: str, pattern: str) -> list[str]:
        """Names of ``kind`` matching a shell-style wildcard (``pgd*``), natural order."""
        return [n for n in self.names(kind) if fnmatch.fnmatchcase(n, pattern)]

    def resolve(self, kind: str, name: str) -> tuple[PluginSpec, dict[str, Any]]:
        """The spec serving ``name`` and the extra factory params it implies.

        ``timm:resnet18`` resolves to the ``timm:*`` spec with ``{"name": "resnet18"}``.
        """
        specs = self.specs(kind)
        if name in specs and not specs[name].is_namespace:
            return specs[name], {}
        if ":" in name:
            prefix, _, rest = name.partition(":")
            namespace = specs.get(f"{prefix}:*")
            if namespace is not None and rest:
                if namespace.validate_name is not None:
                    namespace.validate_name(rest)
                return namespace, {"name": rest}
        raise UnknownNameError(kind, name, specs)

    def build(self, kind: str, name: str, /, **params: Any) -> Any:
        """Call the factory serving ``name`` with ``params`` (checked against its signature)."""
        spec, implied = self.resolve(kind, name)
        call = {**params, **implied}
        check_params(spec, name, call)
        return spec.factory(**call)


def check_params(spec: PluginSpec, name: str, params: dict[str, Any]) -> None:
    """Refuse parameters the factory does not accept, naming the ones it does."""
    try:
        signature = inspect.signature(spec.factory)
    except (TypeError, ValueError):
        return
    accepted = []
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          inspect.Parameter.KEYWORD_ONLY):
            accepted.append(param.name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UsageError(
            f"The {spec.spec_kind} {name!r} (plugin {spec.plugin!r}) has no parameter "
            f"{', '.join(repr(u) for u in unknown)}. Accepted parameters: "
            f"{', '.join(accepted) or '(none)'}."
        )


def plugin_table(host: PluginHost, kinds: Sequence[str] = KINDS) -> list[dict[str, str]]:
    """Rows for ``robench plugins``: kind, name, plugin, distribution, description."""
    rows = []
    for kind in kinds:
        for spec in host.specs(kind).values():
            extra = ""
            if kind == "attack":
                extra = f"[{spec.threat}, {spec.kind}{', black-box' if spec.black_box else ''}] "
            elif kind == "head":
                extra = f"[{spec.backbone_training}] "
            rows.append({
                "kind": kind,
                "name": spec.name,
                "plugin": spec.plugin,
                "distribution": host.plugin_distribution(spec.plugin),
                "description": extra + spec.description,
            })
    return rows
