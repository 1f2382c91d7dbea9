"""The plugin host: a pluggy manager plus a registry of the specs plugins registered.

A host is built fresh on demand (``PluginHost.create()``), with or without entry points, with
extra plugin objects passed in, and with plugins blocked by name.  Environment switches:

``ROBENCH_DISABLE_PLUGINS``   comma-separated entry-point names never to load.
``ROBENCH_PLUGINS``           if set, a comma-separated allow-list: only these entry points load.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from robench import hookspecs
from robench.config import PARAM_TABLES
from robench.errors import PluginError, UnknownNameError, UsageError, unknown_kind
from robench.hookspecs import HOOK_KINDS, PROJECT
from robench.params import parameters, table_ref
from robench.specs import SPEC_TYPES, PluginSpec

ENTRY_POINT_GROUP = "robench"
KINDS: tuple[str, ...] = tuple(HOOK_KINDS)
#: the config table of each plugin kind's parameters: dataset -> data, attack -> attack, ...
PARAM_TABLE: dict[str, str] = {kind: table for table, kind in PARAM_TABLES.items()}


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


@dataclass(frozen=True)
class HostRecipe:
    """How to build an equal plugin host in another process: entry points on or off, the
    extra plugins as importable module names, the blocked names.  ``portable`` is False when
    an extra plugin is an object that cannot be imported by name (a class defined in a
    notebook): such a host serves only its own process."""

    entry_points: bool = True
    modules: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    portable: bool = True
    #: plugins registered as objects and shared with worker processes of this machine
    #: (:meth:`PluginHost.share_objects`): the file they were pickled to, and its sha256
    shared: str = ""
    shared_sha256: str = ""

    def build(self) -> PluginHost:
        if not self.portable:
            raise PluginError(
                "This grid's plugin host holds plugins registered as Python objects, which "
                "cannot be rebuilt in another process. Register them through an entry point "
                "or as an importable module, or run the grid in one process (workers = 1)."
            )
        plugins: list[object] = [importlib.import_module(name) for name in self.modules]
        if self.shared:
            plugins += _load_shared(self.shared, self.shared_sha256)
        return PluginHost.create(entry_points=self.entry_points, plugins=plugins,
                                 blocked=self.blocked)


def _load_shared(path: str, sha256: str) -> list[object]:
    """The plugin objects the driver pickled to ``path``: read only if the file is the one
    the driver wrote (its sha256 travels with the recipe, never with the file)."""
    import hashlib
    import pickle

    blob = Path(path).read_bytes()
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise PluginError(f"The shared plugin file {path!r} changed after the driver wrote it; "
                          f"rerun the grid.")
    return list(pickle.loads(blob))  # noqa: S301 - written by this run's driver, hash-checked


def _recipe(entry_points: bool, plugins: Sequence[object], blocked: Iterable[str]) -> HostRecipe:
    modules, portable = [], True
    for plugin in plugins:
        name = getattr(plugin, "__name__", "")
        if isinstance(plugin, ModuleType) and sys.modules.get(name) is plugin and \
                name != "__main__":
            modules.append(name)
        else:
            portable = False
    return HostRecipe(entry_points=entry_points, modules=tuple(modules),
                      blocked=tuple(blocked), portable=portable)


class PluginHost:
    """Looks up, lists and builds the things plugins registered."""

    def __init__(self, pm: pluggy.PluginManager, recipe: HostRecipe | None = None) -> None:
        self.pm = pm
        self.recipe = recipe or HostRecipe(portable=False)
        #: plugins registered as objects, not importable modules (see share_objects)
        self._objects: list[object] = []
        self._registry: dict[str, dict[str, PluginSpec]] = {}
        self._fingerprints: dict[str, str] = {}
        self._distributions: dict[str, str] | None = None

    @classmethod
    def create(
        cls,
        *,
        entry_points: bool = True,
        plugins: Iterable[object] = (),
        blocked: Iterable[str] = (),
    ) -> PluginHost:
        plugins, blocked = list(plugins), list(blocked)
        host = cls(build_plugin_manager(entry_points=entry_points, plugins=plugins,
                                        blocked=blocked),
                   _recipe(entry_points, plugins, blocked))
        host._objects = [p for p in plugins if p.__class__ is not ModuleType or
                         p.__name__ not in host.recipe.modules]
        return host

    def share_objects(self, folder: str | Path) -> bool:
        """Let worker processes of this machine rebuild this host although plugins were
        registered as objects: pickle them to a file in ``folder``, which the recipe names
        with its sha256.  Only objects that pickle and whose classes import by name in
        another process qualify (not a module made on the fly, not a class of ``__main__``
        or of a notebook).  Returns whether the host is now portable."""
        import hashlib
        import pickle

        if self.recipe.portable:
            return True
        try:
            blob = pickle.dumps(self._objects)
        except Exception:  # noqa: BLE001 - a lambda, a local class, an open file: not shared
            return False
        if b"__main__" in blob or b"__mp_main__" in blob:
            return False
        path = Path(folder) / "plugins.pickle"
        path.parent.mkdir(parents=True, exist_ok=True)
        from robench.io import atomic_write_bytes

        atomic_write_bytes(path, blob)
        self.recipe = replace(self.recipe, portable=True, shared=str(path),
                                          shared_sha256=hashlib.sha256(blob).hexdigest())
        return True

    # ------------------------------------------------------------------ registry

    def plugin_distribution(self, plugin_name: str) -> str:
        """``"name version"`` of the distribution whose entry point is ``plugin_name``."""
        if self._distributions is None:  # one scan of the installed entry points per host
            self._distributions = {}
            for ep in _entry_points():
                dist = getattr(ep, "dist", None)
                if dist is not None:
                    self._distributions.setdefault(
                        ep.name, f"{dist.metadata['name']} {dist.version}")
        return self._distributions.get(plugin_name, "")

    def fingerprint(self, plugin_name: str) -> str:
        """What identifies a plugin's code, for task keys: its distribution and version,
        plus a hash of its source files when it is installed editable or from a folder (a
        plugin under development changes without a new version), or is no distribution's.
        A rerun after a plugin changed recomputes that plugin's tasks."""
        if plugin_name in self._fingerprints:
            return self._fingerprints[plugin_name]
        dist_text, editable = "", True
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            if ep.name == plugin_name and dist is not None:
                dist_text = f"{dist.metadata['name']} {dist.version}"
                editable = _installed_from_a_folder(dist) or \
                    not _in_site_packages(self.pm.get_plugin(plugin_name))
                break
        text = dist_text
        if editable:
            plugin = self.pm.get_plugin(plugin_name)
            digest = _source_hash(plugin)
            text = f"{dist_text} src:{digest}" if dist_text else f"{plugin_name} src:{digest}"
        self._fingerprints[plugin_name] = text
        return text

    def specs(self, kind: str) -> dict[str, PluginSpec]:
        """Every spec of ``kind`` by name, collected once and checked."""
        if kind not in HOOK_KINDS:
            raise unknown_kind(kind, KINDS)
        if kind in self._registry:
            return self._registry[kind]
        spec_type = SPEC_TYPES[kind]
        hook_name = HOOK_KINDS[kind]
        hook = getattr(self.pm.hook, hook_name)
        merged: dict[str, PluginSpec] = {}
        impls = hook.get_hookimpls()
        for impl in impls:
            # through pluggy's hook caller, one plugin at a time (so each spec is credited to
            # its plugin): an implementation may take fewer arguments than the spec
            others = [i.plugin for i in impls if i.plugin is not impl.plugin]
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                returned = [spec for result in caller(**hook_arguments())
                            for spec in (result or ())]
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

    def resolve(self, kind: str, name: str, *,
                validate: bool = True) -> tuple[PluginSpec, dict[str, Any]]:
        """The spec serving ``name`` and the extra factory params it implies.

        ``timm:resnet18`` resolves to the ``timm:*`` spec with ``{"name": "resnet18"}``;
        with ``validate`` the namespace checks the rest of the name (which may import its
        library: ``validate=False`` only finds the spec, fast).
        """
        specs = self.specs(kind)
        if name in specs and not specs[name].is_namespace:
            return specs[name], {}
        if ":" in name:
            prefix, _, rest = name.partition(":")
            namespace = specs.get(f"{prefix}:*")
            if namespace is not None and rest:
                if validate and namespace.validate_name is not None:
                    namespace.validate_name(rest)
                return namespace, {"name": rest}
        raise UnknownNameError(kind, name, specs)

    def build(self, kind: str, name: str, /, **params: Any) -> Any:
        """Call the factory serving ``name`` with ``params`` (checked against its signature)."""
        from robench.protocols import check_built

        spec, implied = self.resolve(kind, name)
        call = {**params, **implied}
        check_params(spec, name, call)
        return check_built(kind, name, spec.plugin, spec.factory(**call))


def _installed_from_a_folder(dist: Any) -> bool:
    """Whether a distribution is an editable or a local-folder install (PEP 610)."""
    import json

    try:
        direct = dist.read_text("direct_url.json")
    except Exception:  # metadata unreadable: treat as a folder, so its source is hashed
        return True
    if not direct:
        return False
    try:
        info = json.loads(direct)
    except ValueError:
        return True
    return bool(info.get("dir_info", {}).get("editable")) or \
        str(info.get("url", "")).startswith("file:")


def _in_site_packages(plugin: Any) -> bool:
    """Whether the plugin's module file lies in an installed-packages folder (an editable
    install's does not: it is the developer's checkout)."""
    import sysconfig
    from pathlib import Path

    path = getattr(plugin, "__file__", None)
    if not path:
        return False
    roots = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    return any(Path(path).resolve().is_relative_to(root) for root in roots)


def _source_hash(plugin: Any) -> str:
    """sha256 (16 hex) of the plugin's source: its package's ``.py`` files, or its module's
    file; an object without a source file hashes its type's qualified name."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    module = plugin if isinstance(plugin, ModuleType) else sys.modules.get(
        getattr(type(plugin), "__module__", ""), None)
    path = getattr(module, "__file__", None) if module is not None else None
    if not path:
        digest.update(repr(type(plugin).__qualname__).encode())
        return digest.hexdigest()[:16]
    package = getattr(module, "__package__", "") or ""
    folder = Path(path).parent
    files = sorted(folder.rglob("*.py")) if package and Path(path).parent.joinpath(
        "__init__.py").exists() else [Path(path)]
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def hook_arguments() -> dict[str, Any]:
    """The keyword arguments every registration hook is called with (see hookspecs)."""
    from robench.version import __version__

    return {"robench_version": __version__}


def check_params(spec: PluginSpec, name: str, params: dict[str, Any], *,
                 harness: Collection[str] = ()) -> None:
    """Refuse parameters the factory does not accept, naming the ones it does, and values that
    do not fit the factory's annotations (:mod:`robench.params`), naming the config table.

    ``harness`` names the parameters the harness itself passes (placeholders when the grid is
    validated): their names are checked, their values are not.
    """
    accepted = parameters(spec.factory)
    if accepted is None:
        return
    unknown = sorted(set(params) - set(accepted.names))
    if unknown and not accepted.any_keyword:
        raise UsageError(
            f"The {spec.spec_kind} {name!r} (plugin {spec.plugin!r}) has no parameter "
            f"{', '.join(repr(u) for u in unknown)}. Accepted parameters: "
            f"{', '.join(accepted.names) or '(none)'}."
        )
    table = PARAM_TABLE.get(spec.spec_kind, spec.spec_kind)
    accepted.check(params, where=table_ref(table, name), skip=harness)


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
            elif kind == "model" and spec.source:
                extra = f"[{spec.source}] "
            elif kind == "defense":
                extra = f"[{spec.stage}] "
            rows.append({
                "kind": kind,
                "name": spec.name,
                "plugin": spec.plugin,
                "distribution": host.plugin_distribution(spec.plugin),
                "description": extra + spec.description,
            })
    return rows
