"""``compile``: torch.compile of the evaluated model changes speed, never results.

A small real grid (digits-cnn trained on digits, FGSM and PGD) runs once plain and once
compiled with ``aot_eager`` (traced by dynamo and AOTAutograd, no C++ compiler needed): every
results row must agree, gradient counts included, which also shows that the input hook of
``CountingModel`` still fires through the compiled module.  ``inductor`` (a C++ compile of
a few minutes on a small CPU) is the slow test.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from grids import TINY_GRID
from torch._dynamo import register_backend
from torch._dynamo.utils import counters
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.config import COMPILE_BACKENDS, build_config
from robench.errors import UsageError

#: small enough for a few seconds per run; pgd gives every attacked sample several gradients
# compiled graphs and the test's own backend live in this process: run the tasks here
COMPILE_GRID = {**TINY_GRID, "name": "compile", "limit": 40,
                "executor": {"local": {"workers": 1}}}
#: what a compiled run must reproduce exactly, row for row
COMPARED = ["model", "domain", "attack", "threat", "eps", "clean_acc", "robust_acc", "n",
            "n_robust", "n_invalid", "grad_evals", "queries", "status", "error"]


@register_backend
def robench_test_broken(gm, example_inputs):
    """A backend that fails as inductor does without a C++ compiler."""
    raise RuntimeError("No working C++ compiler found (robench test backend)\nsecond line")


def _graphs() -> int:
    """Graphs dynamo has compiled in this process (not cleared by torch.compiler.reset)."""
    return int(counters["stats"]["unique_graphs"])


def _rows(results: pd.DataFrame) -> pd.DataFrame:
    return results[COMPARED].sort_values(["attack", "eps"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compile")
    return {"out": out, "results": robench.run_grid({**COMPILE_GRID, "out": str(out / "plain")})}


@pytest.fixture(scope="module")
def aot_run(plain_run) -> dict:
    before = _graphs()
    results = robench.run_grid({**COMPILE_GRID, "out": str(plain_run["out"] / "aot"),
                                "compile": "aot_eager"})
    return {"results": results, "graphs": _graphs() - before}


# --------------------------------------------------------------------------- config and CLI


def test_compile_is_off_by_default_and_checked():
    assert build_config({}).compile == "off"
    for backend in COMPILE_BACKENDS:
        assert build_config({"compile": backend}).compile == backend
    # any backend torch knows is accepted, including ones registered by other packages
    assert build_config({}, compile="robench_test_broken").compile == "robench_test_broken"
    for bad in ("inducter", "on", True, 3):
        with pytest.raises(UsageError, match="use off, inductor, aot_eager, eager or "
                                             "cudagraphs"):
            build_config({"compile": bad})


def test_unknown_backend_exits_2_with_a_readable_message(tmp_path):
    result = CliRunner().invoke(app, ["grid", "--out", str(tmp_path), "--backbones",
                                      "digits-cnn", "--compile", "inducter", "-q"])
    assert result.exit_code == 2, result.output
    assert "Bad compile 'inducter' (did you mean 'inductor'?)" in result.output
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # refused before any work


# --------------------------------------------------------------------------- same numbers


def test_aot_eager_gives_the_same_rows_and_gradient_counts(plain_run, aot_run):
    plain, compiled = plain_run["results"], aot_run["results"]
    assert aot_run["graphs"] > 0, "the compiled run compiled nothing"
    assert (compiled["status"] == "ok").all(), compiled[["attack", "error"]]
    pd.testing.assert_frame_equal(_rows(compiled), _rows(plain))
    attacked = compiled[compiled["attack"].isin(["fgsm", "pgd"])]
    # the hook of CountingModel fires through the compiled module: pgd costs steps gradients
    assert (attacked["grad_evals"] > 0).all()
    pgd = attacked[attacked["attack"] == "pgd"]["grad_evals"].sum()
    fgsm = attacked[attacked["attack"] == "fgsm"]["grad_evals"].sum()
    assert pgd >= 2 * fgsm


def test_compile_is_not_part_of_the_task_keys(plain_run):
    """Switching compile on for a finished run resumes it: nothing is recomputed."""
    before = _graphs()
    again = robench.run_grid({**COMPILE_GRID, "out": str(plain_run["out"] / "plain"),
                              "compile": "aot_eager"})
    assert _graphs() == before
    pd.testing.assert_frame_equal(_rows(again), _rows(plain_run["results"]))


def test_a_failing_backend_fails_its_tasks_with_a_one_line_message(plain_run):
    out = plain_run["out"] / "broken"
    results = robench.run_grid({**COMPILE_GRID, "out": str(out),
                                "compile": "robench_test_broken"})
    failed = results[results["attack"].isin(["fgsm", "pgd"])]
    assert (failed["status"] == "failed").all()
    error = failed["error"].iloc[0]
    assert error == (
        "CompileError: torch.compile backend 'robench_test_broken' failed on this model: "
        "RuntimeError: No working C++ compiler found (robench test backend). Rerun with "
        "--compile off (or --compile aot_eager, which needs no C++ compiler); compile is not "
        "part of the task keys, so finished tasks are kept.")
    # the advice works: the same grid with compile off reruns only the failed tasks
    fixed = robench.run_grid({**COMPILE_GRID, "out": str(out)})
    pd.testing.assert_frame_equal(_rows(fixed), _rows(plain_run["results"]))
    assert fixed["train_seconds"].iloc[0] == results["train_seconds"].iloc[0]  # not retrained


# --------------------------------------------------------------------------- inductor


@pytest.mark.slow
def test_inductor_gives_the_same_rows(plain_run):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("inductor needs a C++ compiler on the CPU")
    before = _graphs()
    compiled = robench.run_grid({**COMPILE_GRID, "out": str(plain_run["out"] / "inductor"),
                                 "compile": "inductor"})
    assert _graphs() > before
    assert (compiled["status"] == "ok").all(), compiled[["attack", "error"]]
    pd.testing.assert_frame_equal(_rows(compiled), _rows(plain_run["results"]))
