"""What a new user tripped over (issue 15), each pinned by a test that failed before."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.config import build_config
from robench.errors import UsageError
from robench.eta import TimeLeft, Work
from robench.host import PluginHost
from robench.planning import model_plans, train_key
from robench.progress import ProgressDisplay

TINY = ["--backbones", "digits-cnn", "--adaptors", "none", "--target", "none",
        "--attacks", "fgsm", "--epochs", "1", "--limit", "30", "--workers", "1"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose output is a pipe, as in CI or a log file."""
    return subprocess.run([sys.executable, "-m", "robench.cli", *args], capture_output=True,
                          text=True, timeout=600)


# --------------------------------------------------------------------------- running


def test_a_log_gets_a_timestamped_line_when_each_task_starts_and_ends_and_resuming_says_so(
        tmp_path):
    first = _cli("grid", *TINY, "--out", str(tmp_path), "--name", "log")
    assert first.returncode == 0, first.stderr
    stamp = r"^\d\d:\d\d:\d\d "
    assert "robench: 3 tasks on 1 worker, 1 torch thread each" in first.stderr
    assert re.search(stamp + r"start train digits-cnn\+linear\+none", first.stderr, re.M)
    assert re.search(stamp + r"done grid 1/3: train digits-cnn\+linear\+none in \d:\d\d:\d\d",
                     first.stderr, re.M), first.stderr
    assert re.search(stamp + r"start clean digits-cnn\+linear\+none \[source\]", first.stderr,
                     re.M)
    assert re.search(stamp + r"done grid 3/3: fgsm on", first.stderr, re.M)
    assert "━" not in first.stderr  # no progress bar drawn into a log
    again = _cli("grid", *TINY, "--out", str(tmp_path), "--name", "log")
    assert again.returncode == 0, again.stderr
    assert "3 of 3 tasks reused from the store" in again.stderr
    assert "--fresh" in again.stderr


def test_a_long_task_in_a_log_gets_heartbeats():
    from rich.console import Console

    text = io.StringIO()
    job = robench.Job(key="k", task="train", label="train m", fn=dict)
    with ProgressDisplay(True, [job], "grid", Console(file=text, force_terminal=False),
                         heartbeat=0.0) as bar:
        bar.on_progress("train m", 1, 10)
        bar.on_progress("train m", 5, 10)
        bar.advance("train m", True, "train", 3.0)
    lines = text.getvalue().splitlines()
    assert any("start train m" in line for line in lines)
    assert any("running train m: 5/10 after" in line for line in lines)
    assert any("done grid 1/1: train m in 0:00:03" in line for line in lines)


def test_the_time_left_comes_from_finished_tasks_of_each_type():
    # the estimator itself is tested in tests/test_progress.py
    works = [Work("t1", "train", "m1"), Work("t2", "train", "m2"),
             *(Work(f"a{i}", "attack", "m1", "source", f"x{i}", after=("t1",))
               for i in range(3))]
    left = TimeLeft(works, workers=1)
    assert left.estimate(0.0) is None
    left.finished("t1", 60.0)
    # one training left at 60 s, three attacks at the only mean known (60 s)
    assert left.estimate(0.0) == pytest.approx(60 + 3 * 60)
    left.finished("a0", 6.0)
    assert left.estimate(0.0) == pytest.approx(60 + 2 * 6)


def test_plugins_keeps_the_threat_prefix_that_rich_would_read_as_markup():
    result = CliRunner().invoke(app, ["plugins", "--kind", "attack"])
    assert result.exit_code == 0
    assert "[linf, bounded]" in result.output
    assert "[l2, minimal]" in result.output


# --------------------------------------------------------------------------- trust


def test_the_showcase_target_and_adaptors_apply_to_the_showcase_dataset_only():
    default = build_config({})
    assert default.target == "digits-m" and default.adaptors == ["none", "dann"]
    other = build_config({"dataset": "mnist"})
    assert other.target is None and other.adaptors == ["none"]
    asked = build_config({"dataset": "mnist", "target": "mnist-m", "adaptors": ["dann"]})
    assert asked.target == "mnist-m" and asked.adaptors == ["dann"]
    only_models = build_config({"models": ["timm:resnet18"]})
    assert only_models.backbones == []


PLUGIN = '''
import robench


class Scale:
    def perturb(self, model, x, y, eps, target=None):
        return (x * (1 - eps)).clamp(0, 1)


@robench.hookimpl
def robench_register_attacks():
    return [robench.AttackSpec(name="scale", factory=Scale, threat="linf")]
'''


def test_changing_a_plugins_code_changes_its_tasks_keys(tmp_path, monkeypatch):
    """A plugin installed from a folder (or registered as a module) is keyed by a hash of its
    source, so a rerun after its code changed recomputes its rows instead of reusing them."""
    package = tmp_path / "scaleplugin"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))

    def keys() -> tuple[str, str]:
        import importlib

        sys.modules.pop("scaleplugin", None)
        module = importlib.import_module("scaleplugin")
        host = PluginHost.create(plugins=[module])
        config = build_config({"target": "none", "adaptors": ["none"]})
        from robench.validation import fingerprints

        plan = model_plans(config, {"none": "none"}, fingerprints(host))[0]
        return host.fingerprint("scaleplugin"), train_key(config, plan)

    before, train_before = keys()
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN).replace("1 - eps", "1 - 2 * eps"))
    after, train_after = keys()
    assert before != after and "src:" in after
    assert train_before == train_after  # the change is in an attack: trainings are reused
    assert PluginHost.create().fingerprint("attacks").startswith("robench ")


# --------------------------------------------------------------------------- messages


def test_a_plural_parameter_table_suggests_the_singular():
    with pytest.raises(UsageError, match=r"\[attacks\.pgd\].*\[attack\.pgd\]"):
        build_config({"attacks": {"pgd": {"steps": 5}}})


def test_the_limit_message_says_0_is_accepted():
    with pytest.raises(UsageError, match=r">= 1, or 0 or 'all'"):
        build_config({"limit": "half"})
    assert build_config({"limit": 0}).limit is None


def test_the_known_keys_list_names_each_key_once():
    with pytest.raises(UsageError) as error:
        build_config({"atacks": ["pgd"]})
    known = str(error.value).split("Known keys: ")[1]
    names = [k.strip(" .") for k in known.split(",")]
    assert len(names) == len(set(names)) and "executor" in names


def test_load_model_with_an_unknown_name_lists_the_runs_models(tmp_path):
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    (models / "k.json").write_text('{"plan": {"name": "digits-cnn+linear+none"}, "key": "k"}')
    with pytest.raises(UsageError) as error:
        robench.load_model(tmp_path / "run", "digits-cnn+linear+nnoe")
    message = str(error.value)
    assert "digits-cnn+linear+none" in message and "--kind model" not in message


def test_the_summary_names_every_report_written(tmp_path):
    result = CliRunner().invoke(app, ["grid", *TINY, "-q", "--out", str(tmp_path),
                                      "--name", "wrote"])
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "leaderboard.csv", "leaderboard.md", "leaderboard.html",
                 "leaderboard.json", "run.json"):
        assert str(Path(tmp_path) / "wrote" / name) in result.output.replace("\n", "")
