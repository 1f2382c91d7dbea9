"""The documentation agrees with the code: every hook, spec field, results column, config
key, CLI flag, eps default, sanity flag and error message the code defines is documented,
with the wording and values the code uses; every relative link resolves; the example config
parses and validates; the example plugin shown is the one shipped.  Fast: no training."""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

import robench
from robench import flags as flags_mod
from robench import hookspecs
from robench.config import (
    DEFAULT_EPS,
    PARAM_TABLES,
    GridConfig,
    build_config,
    load_toml,
    parse_eps_flag,
    tomllib,
)
from robench.errors import UsageError
from robench.evaluation import BOX_TOLERANCE, EPS_TOLERANCE
from robench.results import COLUMNS
from robench.specs import SPEC_TYPES, PluginSpec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- markdown helpers


FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)


def without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code removed (links and headings only)."""
    text = FENCE.sub("", text)
    text = re.sub(r"``.*?``", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def code_blocks(text: str, lang: str) -> list[str]:
    return [body for tag, body in FENCE.findall(text) if tag == lang]


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a full heading line) up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    end = re.search(rf"^{level} ", rest, re.M)
    return rest[: end.start()] if end else rest


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", FENCE.sub("", text), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row (header and separator rows included)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            rows.append([cell.strip() for cell in line[1:-1].split(" | ")])
    return rows


def unquote(cell: str) -> str:
    """The content of a cell that is one inline-code span (single or double backticks)."""
    if cell.startswith("``") and cell.endswith("``"):
        return cell[2:-2].strip()
    if cell.startswith("`") and cell.endswith("`"):
        return cell[1:-1]
    return cell


# --------------------------------------------------------------------------- plugins.md


SHARED_FIELDS = [f.name for f in dataclasses.fields(PluginSpec)]


def test_every_hook_has_a_heading_in_plugins_md():
    text = read("plugins.md")
    headings = set(re.findall(r"^## (robench_register_\w+)\s*$", text, re.M))
    for kind, hook in hookspecs.HOOK_KINDS.items():
        assert hook in headings, f"docs/plugins.md lacks '## {hook}' ({kind})"
    assert headings == set(hookspecs.HOOK_KINDS.values()), "a heading names no hook"


@pytest.mark.parametrize("kind", list(hookspecs.HOOK_KINDS))
def test_every_spec_field_is_documented_under_its_hook(kind):
    text = read("plugins.md")
    body = section(text, f"## {hookspecs.HOOK_KINDS[kind]}")
    spec = SPEC_TYPES[kind]
    assert f"robench.{spec.__name__}" in body
    for field in dataclasses.fields(spec):
        if field.name in SHARED_FIELDS:
            continue
        default = field.default
        assert f"| `{field.name}` |" in body, f"{spec.__name__}.{field.name} undocumented"
        literal = f'`"{default}"`' if isinstance(default, str) else f"`{default!r}`"
        row = next(line for line in body.splitlines() if line.startswith(f"| `{field.name}` |"))
        assert literal in row, f"{spec.__name__}.{field.name}: default {literal} not in {row}"


def test_shared_spec_fields_are_documented():
    shared = section(read("plugins.md"), "## Fields shared by every spec")
    for name in SHARED_FIELDS:
        assert f"| `{name}` |" in shared


def test_example_plugin_in_docs_is_the_shipped_one():
    text = read("plugins.md")
    package = DOCS / "example-plugin" / "robench_sign_noise"
    shipped = (package / "plugin.py").read_text()
    shown = [b for b in code_blocks(text, "python") if "robench_register_backbones" in b]
    assert shown and shown[0].strip() == shipped.strip(), "plugin.py shown differs from file"
    factories = (package / "factories.py").read_text()
    shown = [b for b in code_blocks(text, "python") if "Flatten -> Linear -> ReLU" in b]
    assert shown and shown[0].strip() == factories.strip(), "factories.py shown differs"
    pyproject = (DOCS / "example-plugin" / "pyproject.toml").read_text()
    blocks = [b for b in code_blocks(text, "toml") if "robench-sign-noise" in b]
    assert blocks, "the example plugin's pyproject.toml is not shown"
    for line in blocks[0].splitlines():
        assert line.strip() in pyproject, f"{line!r} is not in the example's pyproject.toml"


@pytest.fixture
def example_plugin_module(monkeypatch):
    """docs/example-plugin's module, imported from the source tree and forgotten after."""
    names = ("robench_sign_noise", "robench_sign_noise.plugin", "robench_sign_noise.factories")
    saved = {name: sys.modules.pop(name, None) for name in names}
    monkeypatch.syspath_prepend(str(DOCS / "example-plugin"))
    yield importlib.import_module("robench_sign_noise.plugin")
    for name in names:
        sys.modules.pop(name, None)
        if saved[name] is not None:
            sys.modules[name] = saved[name]


def test_example_plugin_loads_with_a_host_built_from_the_module(example_plugin_module):
    module = example_plugin_module
    host = robench.PluginHost.create(entry_points=False, plugins=[module])
    assert host.names("attack") == ["sign-noise"] and host.names("backbone") == ["tiny-mlp"]
    backbone = host.build("backbone", "tiny-mlp", image_size=8, in_chans=3, width=5)
    assert backbone.num_features == 5
    attack = host.build("attack", "sign-noise")
    x = torch.rand(4, 3, 8, 8)
    x_adv = attack.perturb(backbone, x, torch.zeros(4, dtype=torch.long), 8 / 255)
    assert x_adv.shape == x.shape and 0 <= x_adv.min() and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    with pytest.raises(UsageError, match="has no parameter 'depth'"):
        host.build("backbone", "tiny-mlp", image_size=8, in_chans=3, depth=2)
    with pytest.raises(UsageError, match=r"^\[backbone.tiny-mlp\] width must be an integer "
                                         r"from 1 to 4096 \(hidden units\), got 0\.$"):
        host.build("backbone", "tiny-mlp", image_size=8, in_chans=3, width=0)


# --------------------------------------------------------------------------- results.md


def test_results_table_matches_results_columns_exactly():
    rows = [r for r in table_rows(read("results.md")) if r and r[0].startswith("`")]
    documented = [r for r in rows if len(r) == 4 and unquote(r[0]) in COLUMNS]
    expected = [[f"`{c}`", dtype, meaning] for c, (dtype, meaning) in COLUMNS.items()]
    assert [r[:3] for r in documented] == expected, (
        "docs/results.md's results.csv table must list robench.results.COLUMNS in order, "
        "with the code's dtype and meaning")


def test_leaderboard_columns_are_documented():
    from robench.leaderboard import build_leaderboard
    from robench.results import empty_results

    text = read("results.md")
    for column in build_leaderboard(empty_results()).columns:
        assert f"`{column}`" in text, f"leaderboard column {column!r} undocumented"
    assert "`robust[THREAT@EPS]`" in text and "`auc[THREAT]`" in text
    for status in ("`ok`", "`invalid`", "`failed`"):
        assert status in section(text, "### Statuses")


# --------------------------------------------------------------------------- config.md


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return repr(value)


def test_every_gridconfig_field_is_in_the_key_table_with_its_default():
    text = read("config.md")
    table = section(text, "## Top-level keys")
    defaults = GridConfig()
    for field in dataclasses.fields(GridConfig):
        if field.name == "params":
            assert "`params`" in text
            continue
        rows = [r for r in table_rows(table) if r[0] == f"`{field.name}`"]
        assert rows, f"config key {field.name!r} is not in the table of docs/config.md"
        literal = f"`{toml_literal(getattr(defaults, field.name))}`"
        assert rows[0][1].startswith(literal), (field.name, rows[0][1], literal)


def test_param_tables_and_default_eps_are_documented():
    text = read("config.md")
    for table in PARAM_TABLES:
        assert f"`[{table}.NAME]`" in text
    rows = {unquote(r[0]): r for r in table_rows(section(text, "## Eps"))}
    for threat, values in DEFAULT_EPS.items():
        assert rows[threat][1] == f"`{', '.join(values)}`", threat
    assert '[backbone."timm:' in text and "least-likely" in text and "random" in text


def test_every_grid_flag_is_documented():
    import typer

    from robench.cli import app

    grid = typer.main.get_command(app).commands["grid"]
    text = read("config.md")
    for param in grid.params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("-"):
                assert f"`{opt}`" in text, f"robench grid {opt} is not in docs/config.md"


def builtin_host() -> robench.PluginHost:
    """The plugins robench's own pyproject registers, without third-party entry points."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pm = robench.build_plugin_manager(entry_points=False)
    for name, module in project["project"]["entry-points"]["robench"].items():
        pm.register(importlib.import_module(module), name=name)  # named as entry points are
    return robench.PluginHost(pm)


def test_every_toml_example_in_config_md_parses():
    blocks = code_blocks(read("config.md"), "toml")
    assert blocks
    for block in blocks:
        build_config(tomllib.loads(block))


def test_complete_example_parses_and_validates_against_builtin_plugins(tmp_path):
    from robench.grid import Grid

    example = code_blocks(section(read("config.md"), "## A complete example"), "toml")[0]
    data = tomllib.loads(example)
    config = build_config(data)
    documented = {f.name for f in dataclasses.fields(GridConfig)} - {"params", "executor"}
    assert documented <= set(data), f"the complete example lacks {documented - set(data)}"
    assert set(PARAM_TABLES) - {"executor"} <= set(data)
    config.out = str(tmp_path)
    config.device = "cpu"
    Grid(config, host=builtin_host()).validate()


# --------------------------------------------------------------------------- bad inputs


def _grid_validate(tmp_path, **data):
    from robench.grid import Grid

    config = build_config({"out": str(tmp_path), "target": "none", "adaptors": ["none"],
                           **data})
    Grid(config, host=builtin_host()).validate()


def _bad_inputs(tmp_path) -> dict:
    host = builtin_host()
    bad = tmp_path / "bad.toml"
    bad.write_text("attacks = [\n")
    (tmp_path / "FILE").write_text("x")

    def check_pgd_param():
        from robench.host import check_params

        spec, _ = host.resolve("attack", "pgd")
        check_params(spec, "pgd", {"step": 20})

    return {
        "--attacks pdg": lambda: host.resolve("attack", "pdg"),
        "--heads linaer": lambda: host.resolve("head", "linaer"),
        "--dataset digitz": lambda: host.resolve("dataset", "digitz"),
        "--backbones timm:resnet181": lambda: host.resolve("backbone", "timm:resnet181"),
        "--executor slurm": lambda: host.resolve("executor", "slurm"),
        "--eps linf:-1": lambda: parse_eps_flag("linf:-1"),
        "--eps linf:abc": lambda: parse_eps_flag("linf:abc"),
        "--eps linf:8": lambda: parse_eps_flag("linf:8"),
        "--eps l0:2.5": lambda: parse_eps_flag("l0:2.5"),
        "--eps corruption:7": lambda: parse_eps_flag("corruption:7"),
        "--eps lnf:0.1": lambda: parse_eps_flag("lnf:0.1"),
        "--eps linf": lambda: parse_eps_flag("linf"),
        "--limit 0.5": lambda: build_config({}, limit="0.5"),
        "--epochs x": lambda: build_config({}, epochs="x"),
        "--seed -2": lambda: build_config({}, seed="-2"),
        "batch_size = 0": lambda: build_config({"batch_size": 0}),
        "lr = -1": lambda: build_config({"lr": -1}),
        "--device gpu": lambda: build_config({}, device="gpu"),
        "--device cuda without a GPU": "cuda",
        "--attacks ,": lambda: build_config({}, attacks=[""]),
        "--attacks pgd,pgd": lambda: build_config({}, attacks=["pgd", "pgd"]),
        "attacks = 3": lambda: build_config({"attacks": 3}),
        "--target digits (same as dataset)": lambda: build_config({}, target="digits"),
        "--adaptors dann --target none": lambda: _grid_validate(tmp_path, adaptors=["dann"]),
        "--name a/b": lambda: build_config({}, name="a/b"),
        "--out FILE": lambda: _grid_validate(tmp_path, out="FILE"),
        "missing.toml": lambda: load_toml("missing.toml"),
        "a file with attacks = [": lambda: load_toml("bad.toml"),
        'atacks = ["pgd"]': lambda: build_config({"atacks": ["pgd"]}),
        'eps = "linf:1/255"': lambda: build_config({"eps": "linf:1/255"}),
        "[eps] linf = []": lambda: build_config({"eps": {"linf": []}}),
        "[attack] steps = 20": lambda: build_config({"attack": {"steps": 20}}),
        "[attack.pgd] step = 20": check_pgd_param,
        "[attack.pgd] in a grid without pgd": lambda: _grid_validate(
            tmp_path, attacks=["fgsm"], attack={"pgd": {"steps": 20}}),
        '[attack.noise] target = "random"': lambda: _grid_validate(
            tmp_path, attacks=["noise"], attack={"noise": {"target": "random"}}),
        '[attack.pgd] target = "most-likely"': lambda: _grid_validate(
            tmp_path, attacks=["pgd"], attack={"pgd": {"target": "most-likely"}}),
        "--dataset imagefolder without path": lambda: host.build("dataset", "imagefolder"),
        "--dataset cifar10 without root": lambda: host.build("dataset", "cifar10"),
        "[data.digits] image_size = 2": lambda: host.build("dataset", "digits", image_size=2),
    }


def test_bad_input_table_quotes_the_real_messages(tmp_path, monkeypatch):
    from robench.validation import resolve_device

    monkeypatch.chdir(tmp_path)
    table = section(read("config.md"), "## Bad input (exit code 2)")
    documented = {}
    for row in table_rows(table)[2:]:
        key = re.sub(r"`", "", row[0]).strip()
        documented[key] = unquote(row[1])
    cases = _bad_inputs(tmp_path)
    assert set(documented) == set(cases), (
        f"rows without a test case: {set(documented) - set(cases)}; "
        f"cases without a row: {set(cases) - set(documented)}")
    for key, expected in documented.items():
        case = cases[key]
        if case == "cuda":
            if torch.cuda.is_available():
                continue
            case = lambda: resolve_device("cuda")  # noqa: E731
        with pytest.raises(UsageError) as info:
            case()
        actual = re.sub(r"\(torch [^)]+\)", "(torch 2.x)", str(info.value))
        if "not valid TOML" in expected:  # the parser's own wording varies with Python
            expected = expected.split(" TOML:")[0]
            actual = actual.split(" TOML:")[0]
        if "..." in expected:
            assert actual.startswith(expected.split("...")[0].rstrip()), (key, actual)
        else:
            assert actual == expected, (key, actual)


# --------------------------------------------------------------------------- protocol.md


def flag_codes() -> list[str]:
    return re.findall(r"^``([a-z0-9-]+)``", flags_mod.__doc__ or "", re.M)


def test_every_flag_code_is_explained_in_protocol_md():
    codes = flag_codes()
    assert len(codes) >= 9, codes
    text = read("protocol.md")
    headings = set(re.findall(r"^### `([a-z0-9-]+)`\s*$", text, re.M))
    for code in codes:
        assert code in headings, f"flag {code!r} has no '### `{code}`' in docs/protocol.md"
    assert headings <= set(codes), f"documented flags the code lacks: {headings - set(codes)}"


def test_protocol_states_the_tolerances():
    text = read("protocol.md")

    def forms(value: float) -> set[str]:
        return {f"{value:g}", f"{value:.0e}".replace("e-0", "e-")}

    for name, value in (("EPS_TOLERANCE", EPS_TOLERANCE), ("BOX_TOLERANCE", BOX_TOLERANCE)):
        assert any(f"`{name} = {form}`" in text for form in forms(value)), name
    assert f"{flags_mod.MARGIN:g}" in text


# --------------------------------------------------------------------------- links


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$", re.M)
MARKDOWN_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def links(path: Path) -> list[str]:
    text = without_code(path.read_text(encoding="utf-8"))
    return LINK.findall(text) + REFERENCE.findall(text)


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert path.exists(), f"{path} is missing"
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            # The README shows the committed sample run (samples/default/...) and a
            # screenshot of its HTML leaderboard (docs/leaderboard.png); both are produced
            # by running `make grid` and committing its output, so they may not exist yet.
            produced_by_sample_run = (ROOT / "samples") in resolved.parents or (
                resolved.suffix == ".png")
            if produced_by_sample_run:
                continue
        assert resolved.exists(), f"{path.name}: link {target!r} points to a missing file"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved.read_text(encoding="utf-8")), (
                f"{path.name}: link {target!r}: no heading with anchor #{anchor}")
