"""One validator (robench.params) for config keys, plugin factory parameters and executor
options: the same rules, the same one-paragraph message, exit code 2 from the CLI."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.config import build_config
from robench.host import PluginHost, check_params
from robench.params import Check, check_value, describe, parameters, table_ref

runner = CliRunner()
Count = Annotated[int, Check(ge=1)]


@pytest.mark.parametrize(("annotation", "value", "message"), [
    (Count, 0, "k must be an integer >= 1, got 0."),
    (Annotated[int | None, Check(ge=1, means="per core")], 0,
     "k must be an integer >= 1 or left out (per core), got 0."),
    (Annotated[float, Check(gt=0, lt=1)], 1, "k must be a number strictly between 0 and 1"),
    (Annotated[int, Check(ge=4, le=512)], 2, "k must be an integer from 4 to 512, got 2."),
    (Annotated[float, Check(ge=0, lt=1)], 1.0, "k must be a number in [0, 1), got 1.0."),
    (int, True, "k must be an integer, got True."),  # a bool is not a number
    (int, 3.0, "k must be an integer, got 3.0."),  # nor is a TOML float an integer
    (float, float("nan"), "k must be a number, got nan."),
    (bool, "no", "k must be true or false, got 'no'."),
    (Literal["fp32", "bf16"], "fp8", "k must be one of fp32, bf16, got 'fp8'."),
    (list[str] | None, ["a", 1], "k must be a list of strings or left out"),
    (str | os.PathLike[str] | None, 3, "k must be a string or a path or left out, got 3."),
    (Annotated[str, Check(test=str.isidentifier, rule="a Python name")], "1x",
     "k must be a Python name, got '1x'."),
])
def test_a_bad_value_is_one_sentence_naming_key_rule_and_value(annotation, value, message):
    with pytest.raises(robench.UsageError) as info:
        check_value(annotation, value, subject="k")
    assert str(info.value).startswith(message)


def test_good_values_pass_unchanged_and_only_the_config_converts():
    assert check_value(float, 3, subject="k") == 3 and type(check_value(float, 3,
                                                                        subject="k")) is int
    assert check_value(str | os.PathLike[str] | None, Path("x"), subject="k") == Path("x")
    assert check_value(Count | None, None, subject="k") is None
    with pytest.raises(robench.UsageError, match="got '3'"):
        check_value(int, "3", subject="k")
    assert check_value(int, " 3", subject="k", coerce=True) == 3
    with pytest.raises(robench.UsageError, match="got -2"):  # the converted value is shown
        check_value(Annotated[int, Check(ge=0)], "-2", subject="k", coerce=True)
    assert describe(Annotated[int | None, Check(ge=1)]) == "an integer >= 1 or left out"
    assert table_ref("data", "digits-m") == "[data.digits-m]"
    assert table_ref("attack", "autoattack/fab") == '[attack."autoattack/fab"]'


def test_config_keys_go_through_the_same_validator():
    assert build_config({}, epochs="3", lr="0.01", limit="all").epochs == 3
    # the config records numbers as the field's type, as task keys always saw them
    config = build_config({"lr": 1, "weight_decay": 0})
    assert (repr(config.lr), repr(config.weight_decay)) == ("1.0", "0.0")
    with pytest.raises(robench.UsageError, match=r"got -1\.$"):  # as written, not -1.0
        build_config({"lr": -1})
    with pytest.raises(robench.UsageError,
                       match=r"^Config key 'batch_size' must be an integer >= 1, got 0\.$"):
        build_config({"batch_size": 0})
    with pytest.raises(robench.UsageError, match="Config key 'fresh' must be true or false"):
        build_config({"fresh": "yes"})


# --------------------------------------------------------------------------- executors


def test_executor_options_are_checked_by_the_host_and_by_the_class_alike():
    from robench_executors.plugin import LocalExecutor
    from robench_ray.plugin import ray_executor

    host = PluginHost.create()
    expected = r"^\[executor.local\] workers must be an integer >= 1 or left out"
    with pytest.raises(robench.UsageError, match=expected):
        host.build("executor", "local", workers=0)
    with pytest.raises(robench.UsageError, match=expected):
        LocalExecutor(workers="2")
    with pytest.raises(robench.UsageError, match=r"\[executor.local\] threads_per_task must "
                                                 r"be an integer >= 1"):
        host.build("executor", "local", threads_per_task=1.5)
    with pytest.raises(robench.UsageError, match=r"^\[executor.ray\] cpus_per_task must be a "
                                                 r"number > 0, got 0\.$"):
        ray_executor(cpus_per_task=0)


def test_bad_executor_options_exit_2_before_any_work(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('[executor.local]\nworkers = "2"\n')
    result = runner.invoke(app, ["grid", str(config), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 2, result.output
    assert "[executor.local] workers must be an integer >= 1" in result.output
    assert "got '2'" in result.output and "Traceback" not in result.output
    flag = runner.invoke(app, ["grid", "--workers", "0", "--out", str(tmp_path), "-q"])
    assert flag.exit_code == 2 and "--workers must be an integer >= 1" in flag.output
    assert not (tmp_path / "default" / "results.sqlite").exists()


# --------------------------------------------------------------------------- factories


@pytest.mark.parametrize(("table", "message"), [
    ('attacks = ["pgd"]\n[attack.pgd]\nsteps = "ten"\n',
     "[attack.pgd] steps must be an integer, got 'ten'."),
    ('attacks = ["fgsm"]\n[attack.fgsm]\nrandom_start = 1\n', "has no parameter"),
    ('[data.digits]\nimage_size = 32.0\n',
     "[data.digits] image_size must be an integer from 4 to 512"),
    ('[reporter.html]\ndpi = 10\n', "[reporter.html] dpi must be an integer from 30 to 300"),
    ('[head.linear]\nbackbone_lr_scale = "low"\n',
     "[head.linear] backbone_lr_scale must be a number or left out, got 'low'."),
    ('attacks = ["pgd"]\n[attack.pgd]\neot_samples = 0\n',
     "[attack.pgd] eot_samples must be an integer >= 1, got 0."),
])
def test_a_factory_parameter_of_the_wrong_type_exits_2(tmp_path, table, message):
    config = tmp_path / "grid.toml"
    config.write_text('backbones = ["digits-cnn"]\n' + table)
    result = runner.invoke(app, ["grid", str(config), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


class _Classes:
    """Stands for a type that robench.params does not know: any value passes."""


def _probe(*, num_features: int, width: Annotated[int, Check(ge=1, le=64)] = 8,
           mode: Literal["a", "b"] = "a", extra: _Classes | None = None,
           hidden: Any = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(uses_target=False, loss=lambda *a, **k: 0,
                                 width=width, mode=mode, extra=extra, hidden=hidden)


def test_a_third_party_factory_gets_the_same_checks():
    plugin = types.ModuleType("probe_plugin")
    plugin.robench_register_adaptors = robench.hookimpl(lambda: [
        robench.AdaptorSpec(name="probe", factory=_probe, uses_target=False)])
    host = PluginHost.create(entry_points=False, plugins=[plugin])
    built = host.build("adaptor", "probe", num_features=4, width=64, extra="anything",
                       hidden=object())
    assert built.width == 64 and built.extra == "anything"
    with pytest.raises(robench.UsageError,
                       match=r"^\[adaptor.probe\] width must be an integer from 1 to 64, got 65"):
        host.build("adaptor", "probe", num_features=4, width=65)
    with pytest.raises(robench.UsageError, match=r"mode must be one of a, b, got 'c'"):
        host.build("adaptor", "probe", num_features=4, mode="c")
    # the values the harness passes itself are placeholders while the grid is validated
    spec, _ = host.resolve("adaptor", "probe")
    check_params(spec, "probe", {"num_features": None}, harness=["num_features"])
    assert parameters(_probe).names == ["num_features", "width", "mode", "extra", "hidden"]


def test_checked_applies_the_rules_to_direct_calls():
    checked = robench.checked("[adaptor.probe]")(_probe)
    with pytest.raises(robench.UsageError, match=r"^\[adaptor.probe\] width must be"):
        checked(num_features=4, width=0)
    assert checked(num_features=4, width=3).width == 3
    assert parameters(checked).names == parameters(_probe).names
