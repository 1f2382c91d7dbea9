"""A user's own model takes the dataset's input, or is refused before any work with one
sentence naming both shapes and how to change either (issue 23)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import robench

USER_CNNS = textwrap.dedent("""
    import torch
    from torch import nn


    def rgb32_cnn(num_classes: int = 10) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 30 * 30, num_classes))


    def any_size_cnn(num_classes: int) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, num_classes))
""")


def grey_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


def rgb32_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))


def test_evaluate_takes_mnist_in_its_native_1x28x28_grey() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = robench.evaluate(grey_cnn(), "mnist", attacks=["fgsm"], eps=["0.1"], limit=40)
    assert (rows["status"] == "ok").all(), rows[["attack", "status"]]
    assert not any("served as" in str(w.message) for w in caught)


def test_evaluate_serves_mnist_as_the_3x32x32_an_rgb_model_takes() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = robench.evaluate(rgb32_cnn(), "mnist", attacks=["fgsm"], eps=["0.1"], limit=40)
    assert (rows["status"] == "ok").all(), rows[["attack", "status"]]
    assert any("served as 3x32x32" in str(w.message) for w in caught)


def test_evaluate_refuses_tensors_the_model_cannot_take_before_any_work() -> None:
    images, labels = torch.rand(20, 3, 32, 32), torch.randint(0, 10, (20,))
    with pytest.raises(robench.UsageError) as info:
        robench.evaluate(grey_cnn(), (images, labels), attacks=["fgsm"], eps=["0.1"])
    text = str(info.value)
    assert "cannot take dataset 'memory:data''s 3x32x32 images" in text
    assert "expected input" in text and "dataset_params" in text


def test_evaluate_with_dataset_params_the_user_gave_is_not_second_guessed() -> None:
    with pytest.raises(robench.UsageError, match=r"3x32x32 images .*it takes 1x28x28"):
        robench.evaluate(grey_cnn(), "mnist", attacks=["fgsm"], eps=["0.1"], limit=40,
                         dataset_params={"channels": 3, "image_size": 32})
    with pytest.raises(robench.UsageError, match=r"1x28x28 images .*it takes 3x32x32"):
        robench.evaluate(rgb32_cnn(), "mnist", attacks=["fgsm"], eps=["0.1"], limit=40,
                         dataset_params={"channels": 1})


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-m", "robench.cli", "grid", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_py_model_is_refused_with_the_shapes_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "train_cnn.py").write_text(USER_CNNS)
    proc = _cli(["--dataset", "mnist", "--models", "py:train_cnn:rgb32_cnn", "--target", "none",
                 "--attacks", "fgsm", "--limit", "20", "--out", str(tmp_path / "runs")],
                tmp_path)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "cannot take dataset 'mnist''s 1x28x28 images" in err
    assert "it takes 3x32x32" in err and "[data.mnist] channels = 3, image_size = 32" in err
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "default" / "results.sqlite").exists()


def test_py_model_takes_the_dataset_classes_and_size_without_a_table(tmp_path: Path) -> None:
    """No [model."py:..."] table: the factory gets the dataset's num_classes, and a model of
    any input size is run on the dataset's images (was: 'the number of classes is unknown')."""
    (tmp_path / "train_cnn.py").write_text(USER_CNNS)
    out = tmp_path / "runs"
    proc = _cli(["--dataset", "mnist", "--models", "py:train_cnn:any_size_cnn", "--target",
                 "none", "--attacks", "fgsm", "--limit", "20", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    csv = (out / "default" / "results.csv").read_text()
    assert "py:train_cnn:any_size_cnn" in csv and ",failed," not in csv
