"""What a new user tripped over (issue 23), each pinned by the user's own command or call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import robench
from robench.cli import app


def _tiny_model_and_data() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A linear model on 24 random 3x8x8 images of 3 classes: an evaluation in seconds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    images = torch.rand(24, 3, 8, 8)
    return model, (images, model(images).argmax(1).detach())


# --------------------------------------------------------------------------- evaluate(eps=)


def test_evaluate_takes_a_list_of_linf_eps_or_one_eps():
    model, data = _tiny_model_and_data()
    as_dict = robench.evaluate(model, data, attacks=["fgsm"], eps={"linf": ["0.1"]})
    as_list = robench.evaluate(model, data, attacks=["fgsm"], eps=["0.1"])
    as_one = robench.evaluate(model, data, attacks=["fgsm"], eps=0.1)
    for results in (as_list, as_one):
        attack = results[results.attack == "fgsm"]
        assert list(attack.threat) == ["linf"] and list(attack.eps) == [0.1]
        columns = ["attack", "threat", "eps", "clean_acc", "robust_acc", "n_robust"]
        assert results[columns].equals(as_dict[columns])
    fractions = robench.evaluate(model, data, attacks=["fgsm"], eps=("4/255", "8/255"))
    assert sorted(fractions[fractions.attack == "fgsm"].eps_label) == ["4/255", "8/255"]
    single_text = robench.evaluate(model, data, attacks=["fgsm"], eps={"linf": "8/255"})
    assert list(single_text[single_text.attack == "fgsm"].eps_label) == ["8/255"]


@pytest.mark.parametrize("eps", [{0.1, 0.2}, True, b"8/255", 3j])
def test_evaluate_refuses_any_other_eps_with_one_sentence(eps):
    model, data = _tiny_model_and_data()
    with pytest.raises(robench.UsageError) as error:
        robench.evaluate(model, data, attacks=["fgsm"], eps=eps)
    message = str(error.value)
    assert message.startswith("evaluate(): eps must be a dict of threat -> budgets")
    assert "a list of Linf budgets" in message and message.count(". ") == 0


def test_evaluate_refuses_a_bad_budget_in_a_list_before_any_work():
    model, data = _tiny_model_and_data()
    with pytest.raises(robench.UsageError, match=r"^Bad eps 'abc' for threat 'linf'"):
        robench.evaluate(model, data, attacks=["fgsm"], eps=["0.1", "abc"])


# --------------------------------------------------------------------------- robench plugins


def test_plugins_with_a_mistyped_kind_suggests_the_closest_kind():
    result = subprocess.run([sys.executable, "-m", "robench.cli", "plugins", "--kind", "atack"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("robench: error: Unknown plugin kind 'atack'. Did you mean "
                                    "'attack'? Kinds are dataset, backbone, head")
    assert "Traceback" not in result.stderr
    plural = CliRunner().invoke(app, ["plugins", "--kind", "attacks"])
    assert plural.exit_code == 0 and "fgsm" in plural.output
    far = CliRunner().invoke(app, ["plugins", "--kind", "zzz"])
    assert far.exit_code == 2 and "Did you mean" not in far.output


# --------------------------------------------------------------------------- py: and factories

TRAIN_CNN = '''
import robench
from torch import nn


def small_cnn():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 10))
    return robench.Classifier(module=net, num_classes=10)


def broken():
    raise RuntimeError("weights missing")
'''

BROKEN_PLUGIN = '''
import robench


class Boom:
    def __init__(self):
        raise RuntimeError("no kernel for this CPU")


@robench.hookimpl
def robench_register_attacks():
    return [robench.AttackSpec(name="boom", factory=Boom, threat="linf")]
'''


def _console_script(*args: str, cwd: Path, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess:
    """``robench ...`` as a user types it: the console script, whose ``sys.path`` holds its
    own folder, not the working directory (unlike ``python -m``)."""
    script = Path(sys.executable).with_name("robench")
    if not script.exists():
        pytest.skip("no robench console script next to this Python")
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def _paragraph(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: "), stderr
    return lines[0]


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """The folder a user runs robench from, holding their train_cnn.py (not installed)."""
    (tmp_path / "train_cnn.py").write_text(TRAIN_CNN)
    return tmp_path


def test_py_models_import_from_the_working_directory_like_python_m(user_folder):
    run = _console_script("grid", "--dataset", "mnist", "--models", "py:train_cnn:small_cnn",
                          "--attacks", "fgsm", "--limit", "20", "--workers", "1", "-q",
                          "--out", "reports", cwd=user_folder)
    assert run.returncode == 0, run.stderr
    assert (user_folder / "reports").is_dir()
    missing = _console_script("grid", "--dataset", "mnist", "--models", "py:train_cnm:small_cnn",
                              "--attacks", "fgsm", "--out", "reports", cwd=user_folder)
    assert missing.returncode == 2
    assert f"no module 'train_cnm' in the working directory ({str(user_folder)!r})" in \
        _paragraph(missing.stderr)


def test_sys_path_gets_the_working_directory_only_while_a_py_model_is_imported(
        user_folder, monkeypatch):
    from robench_models.common import import_callable

    monkeypatch.chdir(user_folder)
    monkeypatch.delitem(sys.modules, "train_cnn", raising=False)
    before = list(sys.path)
    factory = import_callable("train_cnn:small_cnn", what="Model 'py:train_cnn:small_cnn'")
    assert factory().num_classes == 10
    assert sys.path == before
    sys.modules.pop("train_cnn", None)


def test_a_raising_py_factory_is_one_paragraph_and_exit_2_with_the_traceback_under_debug(
        user_folder):
    args = ["grid", "--dataset", "mnist", "--models", "py:train_cnn:broken", "--attacks", "fgsm",
            "--limit", "20", "-q", "--out", "reports"]
    run = _console_script(*args, cwd=user_folder)
    assert run.returncode == 2, run.stderr
    message = _paragraph(run.stderr)
    assert "Model 'py:train_cnn:broken'" in message
    assert "RuntimeError: weights missing (train_cnn.py, line 13, in broken)" in message
    assert message.endswith("(`--debug` shows the full traceback.)")
    debug = _console_script(*args, "--debug", cwd=user_folder)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert 'raise RuntimeError("weights missing")' in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("robench: error: Model 'py:")


def test_a_module_that_raises_on_import_is_the_users_input(user_folder):
    (user_folder / "half_written.py").write_text("import torch\n\n1 / 0\n")
    run = _console_script("grid", "--dataset", "mnist", "--models", "py:half_written:net",
                          "--attacks", "fgsm", "-q", "--out", "reports", cwd=user_folder)
    assert run.returncode == 2, run.stderr
    assert "importing module 'half_written' raised ZeroDivisionError: division by zero " \
           "(half_written.py, line 3, in <module>)" in _paragraph(run.stderr)


def test_a_plugin_factory_that_raises_is_one_paragraph_naming_the_plugin_and_exit_1(tmp_path):
    """An installed third-party plugin (a dist-info with an entry point on the path)."""
    site = tmp_path / "site"
    (site / "broken_attack-0.1.dist-info").mkdir(parents=True)
    (site / "broken_attack.py").write_text(BROKEN_PLUGIN)
    (site / "broken_attack-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-attack\nVersion: 0.1\n")
    (site / "broken_attack-0.1.dist-info" / "entry_points.txt").write_text(
        "[robench]\nboom = broken_attack\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = _console_script("grid", "--dataset", "digits", "--target", "none", "--backbones",
                          "digits-cnn", "--adaptors", "none", "--attacks", "boom", "-q",
                          "--out", "reports", cwd=tmp_path, env=env)
    assert run.returncode == 1, run.stderr
    message = _paragraph(run.stderr)
    assert message.startswith("robench: error: The attack 'boom' (plugin 'boom', from "
                              "broken-attack 0.1) raised RuntimeError: no kernel for this CPU (")
    assert "before any work" in message and "Traceback" not in run.stderr


# --------------------------------------------------------------------------- the summary


def test_the_summary_says_at_which_threat_and_eps_the_headline_is(tmp_path):
    result = CliRunner().invoke(app, [
        "grid", "--backbones", "digits-cnn", "--adaptors", "none", "--target", "none",
        "--attacks", "fgsm", "--eps", "linf:2/255,8/255", "--epochs", "1", "--limit", "30",
        "--workers", "1", "-q", "--out", str(tmp_path), "--name", "headline"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if "headline_acc" in line)
    note = [line for line in lines[header + 1:] if line.startswith("headline_acc: ")]
    assert note == ["headline_acc: worst-case robust accuracy, linf @ 8/255"], result.output


def test_the_headline_note_says_when_it_is_the_minimum_over_attacks():
    from robench.cli_text import headline_note

    board = pd.DataFrame({"headline_metric": ["worst-case robust accuracy, l2 @ 0.5"] * 2,
                          "headline_source": ["worst-case", "min-over-attacks"]})
    assert headline_note(board) == (
        "headline_acc: worst-case robust accuracy, l2 @ 0.5 (for models without worst-case "
        "rows, the lowest robust accuracy over the attacks: an optimistic bound)")
    assert headline_note(pd.DataFrame({"model": []})) is None


# --------------------------------------------------------------------------- results.flags


def test_the_flags_column_is_read_through_the_robench_accessor_not_pandas_flags():
    model, data = _tiny_model_and_data()
    results = robench.evaluate(model, data, attacks=["fgsm"], eps=["0.1"])
    assert not isinstance(results.flags, pd.Series)  # pandas' own attribute
    flags = results.robench.flags
    assert flags.index.equals(results.index)
    assert all(isinstance(codes, list) for codes in flags)
    assert list(flags) == [[c for c in cell.split(";") if c] for cell in results["flags"]]
    # the tiny random model is near chance on some rows or none: the mask follows the column
    mask = results.robench.has_flag("near-chance")
    assert mask.dtype == bool
    assert list(mask) == ["near-chance" in cell.split(";") for cell in results["flags"]]
    with pytest.raises(robench.UsageError, match=r"'near-chanse' is not a robench flag\. Did "
                                                  r"you mean 'near-chance'\?"):
        results.robench.has_flag("near-chanse")


def test_read_results_gives_the_accessor_on_a_csv_with_empty_and_several_flags(tmp_path):
    from robench.results import COLUMN_NAMES, read_results

    path = tmp_path / "results.csv"
    frame = pd.DataFrame(
        {"model": ["a", "b", "c"], "flags": ["", "near-chance", "rises-with-eps;near-chance"]})
    frame.to_csv(path, index=False)
    results = read_results(path)
    assert list(results.columns[:len(COLUMN_NAMES)]) == COLUMN_NAMES
    assert list(results.robench.flags) == [[], ["near-chance"], ["rises-with-eps", "near-chance"]]
    assert list(results.robench.has_flag("near-chance")) == [False, True, True]
    assert list(results[results.robench.has_flag("rises-with-eps")].model) == ["c"]


# --------------------------------------------------------------------------- plugins.md


def _install_by_path(site: Path, name: str, entry_point: str) -> None:
    """What ``pip install`` leaves for importlib.metadata: a dist-info with an entry point."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[robench]\n{entry_point}\n")


def test_the_documented_example_plugin_keeps_torch_out_of_every_robench_command(tmp_path):
    """docs/plugins.md's example, installed: listing and a mistyped kind import no torch."""
    root = Path(__file__).resolve().parents[1]
    _install_by_path(tmp_path, "robench-sign-noise", "sign-noise = robench_sign_noise.plugin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), str(root / "docs" / "example-plugin"),
         *filter(None, [os.environ.get("PYTHONPATH")])])}
    probe = ("import runpy, sys\n"
             "sys.argv = ['robench', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('robench.cli', run_name='__main__')\n"
             "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")
    runs = {}
    for args, code in ((["plugins", "--kind", "attack"], 0), (["plugins", "--kind", "atack"], 2)):
        runs[code] = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                                    text=True, env=env, timeout=120)
        assert runs[code].returncode == code, runs[code].stderr
        assert runs[code].stderr.rstrip().endswith("torch imported: False"), runs[code].stderr
    assert "sign-noise" in runs[0].stdout and "robench-sign-noise" in runs[0].stdout
