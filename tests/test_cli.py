"""The command line: exit codes, messages, plugins listing, outside plugin packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from robench.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
FAST = ["--backbones", "digits-cnn", "--adaptors", "none", "--target", "none",
        "--attacks", "fgsm", "--epochs", "1", "--limit", "40", "-q"]


def robench_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "robench.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)


def test_plugins_lists_every_builtin():
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    for name in ("digits-m", "timm:*", "digits-cnn", "linear-probe", "dann", "pgd",
                 "foolbox:*", "local", "html"):
        assert name in result.output
    only = runner.invoke(app, ["plugins", "--kind", "attack"])
    assert "pgd" in only.output and "digits-cnn" not in only.output
    assert runner.invoke(app, ["plugins", "--kind", "atack"]).exit_code == 2


BAD_INPUTS = [
    (["--attacks", "pdg"], "Did you mean 'pgd'"),
    (["--backbones", "timm:no_such_model_x"], "Unknown backbone"),
    (["--heads", "linaer"], "Unknown head"),
    (["--adaptors", "dan"], "Unknown adaptor"),
    (["--dataset", "digitz"], "Unknown dataset"),
    (["--executor", "slurm"], "Unknown executor"),
    (["--eps", "linf:-1"], ">= 0"),
    (["--eps", "linf:abc"], "number or a fraction"),
    (["--eps", "lnf:0.1"], "Unknown threat model"),
    (["--limit", "0.5"], "limit"),
    (["--limit", "-1"], "limit"),
    (["--epochs", "x"], "epochs"),
    (["--seed", "-2"], "seed"),
    (["--device", "cuda"], "CUDA"),
    (["--device", "gpu"], "auto, cpu, cuda"),
    (["--attacks", ","], "empty"),
    (["--adaptors", "dann", "--target", "none"], "--target"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_a_message(args, message, tmp_path):
    result = runner.invoke(app, ["grid", "--out", str(tmp_path), *FAST, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_files_exit_2(tmp_path):
    out_file = tmp_path / "file"
    out_file.write_text("x")
    cases = [
        (["grid", "--out", str(out_file), *FAST], "is a file"),
        (["grid", str(tmp_path / "missing.toml")], "does not exist"),
        (["report", str(tmp_path / "nowhere")], "does not exist"),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text("attacks = [\n")
    cases.append((["grid", str(bad)], "not valid TOML"))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('atacks = ["pgd"]\n')
    cases.append((["grid", str(unknown)], "did you mean 'attacks'"))
    param = tmp_path / "param.toml"
    param.write_text('attacks = ["fgsm"]\n[attack.fgsm]\nstepz = 3\n')
    cases.append((["grid", str(param), "--out", str(tmp_path)], "has no parameter 'stepz'"))
    folder = tmp_path / "imgs"
    cases.append((["grid", "--dataset", "imagefolder", "--out", str(tmp_path), *FAST],
                  "path"))
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not folder.exists()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = robench_cli("grid", "--attacks", "pgdd", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "Unknown attack 'pgdd'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_outside_plugin_package_runs_through_the_grid(tmp_path):
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(ROOT / "docs" / "example-plugin")],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = robench_cli("plugins", "--kind", "attack", env=env)
    assert "sign-noise" in listed.stdout and "robench-sign-noise" in listed.stdout
    proc = robench_cli("grid", "--backbones", "tiny-mlp", "--attacks", "sign-noise,fgsm",
                       "--adaptors", "none", "--target", "none", "--epochs", "3",
                       "--limit", "60", "--name", "outside", "--out", str(tmp_path), "-q",
                       env=env)
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(tmp_path / "outside" / "results.csv")
    assert set(results.attack) == {"sign-noise", "fgsm", "worst-case"}
    assert (results.backbone == "tiny-mlp").all() and (results.status == "ok").all()
    assert results.clean_acc.iloc[0] > 0.5


#: a third-party plugin whose attack always raises, installed by :func:`install_plugin`
EXPLODING = """
import robench


class Exploding:
    def perturb(self, model, x, y, eps, target=None):
        raise RuntimeError("this attack always fails")


@robench.hookimpl
def robench_register_attacks():
    return [robench.AttackSpec(name="explode", factory=Exploding, threat="linf")]
"""


def install_plugin(site: Path, module: str, source: str) -> dict[str, str]:
    """Install ``source`` as the robench plugin ``module`` into the folder ``site``, the way
    pip would (the module plus a dist-info with its entry point), and return the environment
    under which the CLI (and its worker processes) find it."""
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[robench]\n{module} = {module}\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_plugin_that_raises_fails_its_own_rows_only(tmp_path):
    env = install_plugin(tmp_path / "site", "exploding", EXPLODING)
    args = ["grid", "--out", str(tmp_path), "--name", "boom", *FAST, "--attacks", "fgsm,explode"]
    proc = robench_cli(*args, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "explode on digits-cnn+linear+none" in proc.stderr
    rows = pd.read_csv(tmp_path / "boom" / "results.csv", keep_default_na=False)
    failed = rows[rows.attack == "explode"]
    assert len(failed) and (failed.status == "failed").all()
    assert failed.error.str.contains("this attack always fails").all()
    assert (rows[rows.attack == "fgsm"].status == "ok").all()
    # the failed task is retried on rerun; the finished ones are not recomputed
    again = robench_cli(*args, env=env)
    assert again.returncode == 1, again.stderr
    assert "explode on digits-cnn+linear+none" in again.stderr


def test_warnings_are_one_line_like_errors(tmp_path):
    """The bf16-on-CPU warning (where this CPU lacks native bf16) reads as one line, without
    Python's file and source line; the unusable --out then exits 2."""
    from robench.validation import cpu_has_native_bf16

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = robench_cli("grid", "--precision", "bf16", "--device", "cpu", "--out", str(blocker))
    assert proc.returncode == 2
    assert "is a file" in proc.stderr and "Traceback" not in proc.stderr
    warned = "robench: warning: precision bf16 on a CPU without native bf16" in proc.stderr
    assert warned == (not cpu_has_native_bf16())
    assert "grid.py" not in proc.stderr
