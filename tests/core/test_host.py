"""The plugin host: discovery, merging, duplicates, unknown names, namespaces, blocking."""

from __future__ import annotations

import re
import types

import pytest
import torch

import robench
from robench import hookspecs
from robench.host import KINDS, PluginHost, plugin_table


def _plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, robench.hookimpl(fn))
    return module


class Flip:
    def perturb(self, model, x, y, eps, target=None):
        return (1 - x).clamp(0, 1)


def test_every_hook_kind_has_a_spec_class_and_docs():
    hooks = [n for n in dir(hookspecs) if n.startswith("robench_register_")]
    assert sorted(hooks) == sorted(hookspecs.HOOK_KINDS.values())
    for name in hooks:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"


def test_entry_points_register_every_builtin():
    host = PluginHost.create()
    for kind, expected in [
        ("dataset", {"digits", "digits-m", "imagefolder", "cifar10", "mnist"}),
        ("backbone", {"timm:*", "digits-cnn"}),
        ("head", {"linear", "linear-probe", "partial", "mlp"}),
        ("adaptor", {"none", "dann", "coral"}),
        ("attack", {"fgsm", "pgd", "noise", "foolbox:*"}),
        ("executor", {"local", "ray"}),
        ("reporter", {"csv", "md", "html", "json"}),
    ]:
        assert expected <= set(host.names(kind)), kind
    rows = plugin_table(host)
    assert {r["kind"] for r in rows} == set(KINDS)
    pgd = next(r for r in rows if r["name"] == "pgd")
    assert pgd["plugin"] == "attacks" and pgd["distribution"].startswith("robench ")


def test_duplicate_names_name_both_plugins():
    spec = robench.AttackSpec(name="flip", factory=Flip, threat="linf")
    a = _plugin("plugin_a", robench_register_attacks=lambda: [spec])
    b = _plugin("plugin_b", robench_register_attacks=lambda: [spec])
    host = PluginHost.create(entry_points=False, plugins=[a, b])
    with pytest.raises(robench.PluginError) as info:
        host.specs("attack")
    assert "plugin_a" in str(info.value) and "plugin_b" in str(info.value)


def test_unknown_name_suggests_closest():
    host = PluginHost.create()
    with pytest.raises(robench.UnknownNameError) as info:
        host.resolve("attack", "pdg")
    assert "pgd" in info.value.close_matches
    assert "robench plugins --kind attack" in str(info.value)


def test_namespace_resolves_with_name_param():
    seen = {}

    def factory(*, name, image_size, in_chans):
        seen.update(name=name, image_size=image_size)
        module = torch.nn.Flatten()
        module.num_features = in_chans * image_size * image_size
        return module

    plugin = _plugin("ns", robench_register_backbones=lambda: [
        robench.BackboneSpec(name="mine:*", factory=factory)])
    host = PluginHost.create(entry_points=False, plugins=[plugin])
    spec, implied = host.resolve("backbone", "mine:wide")
    assert spec.name == "mine:*" and implied == {"name": "wide"}
    host.build("backbone", "mine:wide", image_size=8, in_chans=3)
    assert seen == {"name": "wide", "image_size": 8}
    with pytest.raises(robench.UnknownNameError):
        host.resolve("backbone", "other:wide")


def test_blocking_by_name_and_environment(monkeypatch):
    assert "pgd" not in PluginHost.create(blocked=["attacks"]).names("attack")
    monkeypatch.setenv("ROBENCH_DISABLE_PLUGINS", "attacks,foolbox")
    names = PluginHost.create().names("attack")
    assert "pgd" not in names and "foolbox:*" not in names
    monkeypatch.delenv("ROBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("ROBENCH_PLUGINS", "datasets")
    host = PluginHost.create()
    assert host.names("attack") == [] and "digits" in host.names("dataset")


def test_bad_params_are_refused_with_accepted_list():
    host = PluginHost.create()
    with pytest.raises(robench.UsageError) as info:
        host.build("head", "mlp", num_features=4, num_classes=2, hiden=3)
    assert "'hiden'" in str(info.value) and "hidden" in str(info.value)


def test_wrong_spec_type_is_a_plugin_error():
    plugin = _plugin("bad", robench_register_attacks=lambda: [
        robench.HeadSpec(name="x", factory=Flip)])
    with pytest.raises(robench.PluginError, match="expected robench.AttackSpec"):
        PluginHost.create(entry_points=False, plugins=[plugin]).specs("attack")


def test_misspelt_hook_is_caught():
    plugin = _plugin("typo", robench_register_atacks=lambda: [])
    with pytest.raises(Exception, match="robench_register_atacks"):
        PluginHost.create(entry_points=False, plugins=[plugin])


def test_two_packages_with_one_plugin_name_are_refused(tmp_path):
    """Two installed distributions (dist-info folders on the path, as pip leaves them) that
    register the entry point ``same``: the clash is refused before either is imported."""
    import os
    import subprocess
    import sys

    for package in ("pkg_a", "pkg_b"):
        info = tmp_path / f"{package}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[robench]\nsame = {package}.plugin\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "robench.cli", "plugins"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": path}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert re.search("pkg_a.plugin.*pkg_b.plugin|pkg_b.plugin.*pkg_a.plugin", proc.stderr)
    assert "Traceback" not in proc.stderr


def test_hooks_are_called_through_pluggy_with_or_without_the_arguments_of_the_spec():
    """An implementation may take fewer arguments than the hookspec (none at all), or the
    spec's ``robench_version``: pluggy passes each only what it names."""
    import types

    import robench

    seen = {}
    old = types.ModuleType("old_style")
    old.robench_register_attacks = robench.hookimpl(lambda: [
        robench.AttackSpec(name="old-style", factory=object, threat="linf")])
    new = types.ModuleType("new_style")

    def register(robench_version):
        seen["version"] = robench_version
        return [robench.AttackSpec(name="new-style", factory=object, threat="linf")]

    new.robench_register_attacks = robench.hookimpl(register)
    host = PluginHost.create(entry_points=False, plugins=[old, new])
    assert {"old-style", "new-style"} <= set(host.names("attack"))
    assert seen["version"] == robench.__version__
    assert host.specs("attack")["old-style"].plugin == "old_style"
    assert host.specs("attack")["new-style"].plugin == "new_style"


def test_a_built_object_missing_a_protocol_member_names_the_plugin():
    import types

    import robench

    plugin = types.ModuleType("half_done")
    plugin.robench_register_attacks = robench.hookimpl(lambda: [
        robench.AttackSpec(name="no-perturb", factory=object, threat="linf")])
    host = PluginHost.create(entry_points=False, plugins=[plugin])
    with pytest.raises(robench.PluginError, match=r"'no-perturb'.*'half_done'.*perturb"):
        host.build("attack", "no-perturb")
