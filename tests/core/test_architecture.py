"""The shape of the code: no import cycles, and plugins use only robench's public modules.

Read from the source with ``ast`` (no tool to install): every ``import``/``from ... import``
of a module of this project, at module level or inside a function, is an edge.  Imports under
``if TYPE_CHECKING:`` are not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import robench

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "robench", *sorted(p for p in (ROOT / "plugins").iterdir() if p.is_dir()
                                      and (p / "__init__.py").exists())]


def module_name(path: Path) -> str:
    base = ROOT / "plugins" if path.is_relative_to(ROOT / "plugins") else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(path: Path, known: set[str], me: str | None = None) -> set[str]:
    """The project modules ``path`` (module ``me``) imports (``from pkg import mod`` resolves
    to pkg.mod)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    me = me or module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in _roots(known))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] not in _roots(known):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {m for m in found if m in known and m != me}


def _roots(known: set[str]) -> set[str]:
    return {m.split(".")[0] for m in known}


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in package.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, known) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]], *, ignore_package_inits: bool) -> list[str]:
    """One import cycle as a list of modules, or [] when there is none.

    A package's ``__init__`` re-exporting its submodules is not a cycle with a submodule
    that imports a sibling (Python imports the package first either way), so edges *into*
    a package ``__init__`` from its own submodules are left out when asked."""
    def keep(src: str, dst: str) -> bool:
        return not (ignore_package_inits and src.startswith(dst + "."))

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if not keep(node, nxt):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_no_import_cycles_in_robench_or_the_plugins():
    cycle = find_cycle(graph(), ignore_package_inits=True)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ignore_package_inits=True) == \
        ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}, ignore_package_inits=True) == []


def test_plugins_import_only_public_robench_modules():
    public = set(robench.PUBLIC_MODULES)
    offenders = []
    for name, targets in graph().items():
        if name.split(".")[0] == "robench":
            continue
        for target in targets:
            if target.split(".")[0] == "robench" and target not in public:
                offenders.append(f"{name} imports {target}")
    assert not offenders, "plugins must use robench's public API: " + "; ".join(offenders)


def test_the_public_modules_are_documented_for_plugin_authors():
    text = (ROOT / "docs" / "plugins.md").read_text()
    for module in robench.PUBLIC_MODULES:
        assert f"`{module}`" in text, f"{module} is public but docs/plugins.md does not say so"


def test_the_core_imports_no_plugin():
    plugins = {module_name(p) for p in PACKAGES[1:]}
    for name, targets in graph().items():
        if name.split(".")[0] == "robench":
            assert not {t.split(".")[0] for t in targets} & plugins, f"{name} imports a plugin"


@pytest.mark.parametrize("source, expected", [
    ("from robench.grid import run_grid", {"robench.grid"}),
    ("from robench import jobs", {"robench.jobs"}),
    ("import robench", {"robench"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from robench.grid import Grid",
     set()),
])
def test_imports_are_read_as_written(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source + "\n")
    assert imports_of(path, set(project_modules()), me="robench_attacks.probe") == expected
