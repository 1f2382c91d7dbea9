"""Complete classifiers in the grid: ``robench.evaluate``, ``--models``, and what is refused.

A small CNN is trained once on real MNIST digits (the shipped subset), saved as a package
that ``py:`` can import and as a TorchScript file, and evaluated through every path; the
paths must give the same rows, because they are one evaluation.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import robench
from robench.cli import app

ATTACKS = ["fgsm", "pgd"]
EPS = {"linf": ["0.05", "0.2"]}
#: MNIST as LeNet-size models take it (the dataset's native default, stated so the grids
#: below do not depend on it)
MNIST = {"image_size": 28, "channels": 1}
NUMBERS = ["clean_acc", "robust_acc", "n", "n_robust", "grad_evals", "status"]

FACTORY = '''
import torch
from torch import nn


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, num_classes))


class Recording(nn.Module):
    """A model that appends the id of the process running each forward pass to a file."""

    def __init__(self, model: nn.Module, path: str) -> None:
        super().__init__()
        self.model, self.path = model, path

    def forward(self, x):
        import os

        with open(self.path, "a") as handle:
            handle.write(f"{os.getpid()} ")
        return self.model(x)


def trained(path: str, num_classes: int = 10) -> nn.Module:
    from safetensors.torch import load_file

    model = small_cnn(num_classes)
    model.load_state_dict(load_file(path))
    return model.eval()
'''


@pytest.fixture(scope="module")
def trained_package(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A package ``evalpkg`` with the CNN's factory, and the CNN trained on mnist."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("pkg")
    (root / "evalpkg").mkdir()
    (root / "evalpkg" / "__init__.py").write_text("")
    (root / "evalpkg" / "nets.py").write_text(textwrap.dedent(FACTORY))
    sys.path.insert(0, str(root))
    from evalpkg.nets import small_cnn  # noqa: PLC0415

    bundle = robench.PluginHost.create().build("dataset", "mnist", **MNIST)
    x, y = robench.as_tensors(bundle.train)
    model = small_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch in torch.randperm(len(y), generator=generator)[:2000].split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(root / "weights.safetensors"))
    yield root, model
    sys.path.remove(str(root))


def _numbers(frame: pd.DataFrame) -> pd.DataFrame:
    keep = frame[frame.attack.isin([*ATTACKS, "worst-case"])]
    return keep.sort_values(["attack", "eps"])[["attack", "eps", *NUMBERS]] \
        .reset_index(drop=True)


def test_evaluate_an_in_memory_model_equals_the_same_model_through_py(trained_package,
                                                                      tmp_path):
    root, model = trained_package
    in_memory = robench.evaluate(model, "mnist", attacks=ATTACKS, eps=EPS, limit=120,
                                 dataset_params=MNIST)
    assert set(in_memory.model) == {"memory:model"}
    clean = in_memory.clean_acc.iloc[0]
    assert clean > 0.8, f"the trained CNN should be accurate on real MNIST, got {clean}"
    worst = in_memory[(in_memory.attack == "worst-case")].sort_values("eps")
    assert (worst.status == "ok").all()
    assert worst.robust_acc.iloc[-1] < worst.robust_acc.iloc[0] <= clean

    name = "py:evalpkg.nets:trained"
    through_py = robench.run_grid({
        "name": "py", "out": str(tmp_path), "dataset": "mnist", "models": [name],
        "attacks": ATTACKS, "eps": EPS, "limit": 120, "reporters": ["csv"],
        "model": {name: {"path": str(root / "weights.safetensors"), "num_classes": 10}},
        "data": {"mnist": MNIST},
    })
    assert set(through_py.model) == {name}
    assert (through_py.backbone.fillna("") == "").all()
    pd.testing.assert_frame_equal(_numbers(in_memory), _numbers(through_py))


def test_evaluate_runs_a_models_shards_on_worker_processes(trained_package, tmp_path):
    """A model whose class imports by name is pickled into the run folder once and its
    attacks' shards run on a worker per core; a model that cannot travel (a class local to
    this function) is evaluated in this process.  Same numbers either way."""
    import os

    from evalpkg.nets import Recording  # noqa: PLC0415

    _, model = trained_package
    shared, alone = tmp_path / "shared.pids", tmp_path / "alone.pids"

    class Local(nn.Module):  # not importable by name: stays in this process
        def __init__(self) -> None:
            super().__init__()
            self.inner = Recording(model, str(alone))

        def forward(self, x):
            return self.inner(x)

    common = {"attacks": ATTACKS, "eps": EPS, "limit": 120, "dataset_params": MNIST}
    on_workers = robench.evaluate(Recording(model, str(shared)), "mnist", **common)
    in_process = robench.evaluate(Local(), "mnist", **common)
    workers = set(shared.read_text().split()) - {str(os.getpid())}
    assert len(workers) == 2, workers  # both cores took shards (limit 120: 4 shards a task)
    assert set(alone.read_text().split()) == {str(os.getpid())}
    pd.testing.assert_frame_equal(_numbers(on_workers), _numbers(in_process))


def test_evaluate_on_tensors_and_with_an_output_folder(trained_package, tmp_path):
    _, model = trained_package
    bundle = robench.PluginHost.create().build("dataset", "mnist", **MNIST)
    x, y = robench.as_tensors(bundle.test)
    results = robench.evaluate(model, (x[:64], y[:64]), attacks=["fgsm"],
                               eps={"linf": ["0.1"]}, out=tmp_path, name="tensors")
    assert set(results.dataset) == {"memory:data"}
    assert (results.n == 64).all()
    assert (tmp_path / "tensors" / "leaderboard.html").exists()
    with pytest.raises(robench.UsageError, match=r"\[0, 1\]"):
        robench.evaluate(model, (x[:8] * 255, y[:8]), attacks=["fgsm"])


def test_a_model_with_other_classes_than_the_dataset_is_refused_before_any_work(
        trained_package, tmp_path):
    name = "py:evalpkg.nets:small_cnn"
    runner = CliRunner()
    (tmp_path / "bad.toml").write_text(textwrap.dedent(f'''
        dataset = "mnist"
        models = ["{name}"]
        attacks = ["fgsm"]
        [data.mnist]
        image_size = 28
        channels = 1
        [model."{name}"]
        num_classes = 7
    '''))
    result = runner.invoke(app, ["grid", str(tmp_path / "bad.toml"), "--out", str(tmp_path),
                                 "--name", "bad7", "-q"])
    assert result.exit_code == 2, result.output
    assert "7" in result.output and "10" in result.output and "mnist" in result.output
    assert not (tmp_path / "bad7" / "results.sqlite").exists()


def test_two_complete_models_and_a_trained_one_share_one_leaderboard(trained_package,
                                                                     tmp_path):
    root, model = trained_package
    scripted = root / "cnn.pt"
    torch.jit.save(torch.jit.script(model), str(scripted))
    py_name = "py:evalpkg.nets:trained"
    file_name = f"file:{scripted}"
    results = robench.run_grid({
        "name": "mixed", "out": str(tmp_path), "dataset": "mnist", "target": "none",
        "models": [py_name, file_name], "backbones": ["digits-cnn"], "adaptors": ["none"],
        "epochs": 1, "attacks": ["fgsm"], "eps": {"linf": ["0.1"]}, "limit": 100,
        "model": {py_name: {"path": str(root / "weights.safetensors"), "num_classes": 10},
                  file_name: {"num_classes": 10, "image_size": 28, "in_chans": 1}},
        "data": {"mnist": MNIST}, "reporters": ["csv", "html"],
    })
    assert set(results.model) == {py_name, file_name, "digits-cnn+linear+none"}
    board = pd.read_csv(tmp_path / "mixed" / "leaderboard.csv")
    assert set(board.model) == {py_name, file_name, "digits-cnn+linear+none"}
    assert len(board) == 3 and board["rank"].min() == 1  # one ranking for all three
    # the TorchScript copy and the factory's model are one model: same numbers
    a = results[results.model == py_name]
    b = results[results.model == file_name]
    assert list(a.robust_acc) == list(b.robust_acc)
    html = (tmp_path / "mixed" / "leaderboard.html").read_text()
    assert py_name.split(":")[1] in html and "digits-cnn+linear+none" in html


def test_plugins_lists_the_model_namespaces_with_where_they_load_from():
    result = CliRunner().invoke(app, ["plugins", "--kind", "model"])
    assert result.exit_code == 0, result.output
    for name in ("timm:*", "robustbench:*", "file:*", "py:*"):
        assert name in result.output
    assert "model_dir" in result.output or "RobustBench" in result.output


def test_evaluate_on_digits_needs_no_target(tmp_path):
    """digits' showcase defaults add the dann adaptor, which needs a target domain: a
    complete model trains nothing, so evaluate() must not inherit it (it was refused)."""
    bundle = robench.PluginHost.create().build("dataset", "digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(
        bundle.in_chans * bundle.image_size ** 2, bundle.num_classes)).eval()
    rows = robench.evaluate(model, "digits", attacks=["fgsm"], limit=20)
    assert set(rows.model) == {"memory:model"} and set(rows.status) == {"ok"}
    assert set(rows.adaptor.fillna("none")) <= {"none", ""}
