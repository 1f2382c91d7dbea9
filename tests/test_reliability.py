"""Runs that lose nothing: determinism, SIGKILL + resume, Ctrl-C, corrupt stores."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

TINY = """
name = "tiny"
dataset = "digits"
target = "none"
backbones = ["digits-cnn", "timm:test_resnet"]
heads = ["linear"]
adaptors = ["none"]
attacks = ["fgsm", "pgd", "noise"]
limit = 60
epochs = 1
[eps]
linf = ["2/255", "8/255"]
[attack.pgd]
steps = 3
"""
TIMING = ["seconds", "train_seconds"]


def _default_sigint() -> None:
    """In the child before it runs: Ctrl-C handled as in a terminal.  A process started in
    the background (``nohup make test &``) inherits SIGINT as ignored, and Python then
    installs no KeyboardInterrupt handler, so the child would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(config: Path, out: Path, *extra: str, interruptible: bool = False) -> subprocess.Popen:
    """``robench grid CONFIG`` in a subprocess; ``interruptible``: it takes Ctrl-C (SIGINT)
    even when the tests themselves run with SIGINT ignored."""
    return subprocess.Popen(
        [sys.executable, "-m", "robench.cli", "grid", str(config), "--out", str(out), "-q",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint if interruptible else None,
    )


def finished_tasks(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM tasks WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def numbers(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "results.csv")
    return frame.drop(columns=TIMING).sort_values(["model", "attack", "eps"]).reset_index(
        drop=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    config = root / "tiny.toml"
    config.write_text(TINY)
    proc = start(config, root / "a")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return config, root


@pytest.mark.slow
def test_same_seed_twice_gives_identical_numbers(tiny):
    config, root = tiny
    proc = start(config, root / "b")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    pd.testing.assert_frame_equal(numbers(root / "a" / "tiny"), numbers(root / "b" / "tiny"))


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny):
    config, root = tiny
    out = root / "killed"
    store = out / "tiny" / "results.sqlite"
    proc = start(config, out)
    deadline = time.time() + 300
    while finished_tasks(store) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the grid finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = finished_tasks(store)
    # 2 trainings + 2 x (clean + 3 attacks in 2 shards each, and the 3 merged tasks)
    assert 3 <= done_before < 2 + 2 * (1 + 3 * 3)
    rerun = start(config, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    pd.testing.assert_frame_equal(numbers(root / "a" / "tiny"), numbers(out / "tiny"))
    with sqlite3.connect(store) as db:
        keys = [k for (k,) in db.execute("SELECT key FROM tasks WHERE key NOT LIKE '%.%'")]
    assert len(keys) == len(set(keys)) == 2 + 2 * 4


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_finished_tasks(tiny):
    config, root = tiny
    out = root / "interrupted"
    store = out / "tiny" / "results.sqlite"
    proc = start(config, out, interruptible=True)
    while finished_tasks(store) < 1 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert finished_tasks(store) >= 1


def test_corrupt_store_exits_2(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    store = tmp_path / "tiny" / "results.sqlite"
    store.parent.mkdir()
    store.write_bytes(b"this is not a database" * 100)
    proc = start(config, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "not a readable robench store" in err and "--fresh" in err
    assert "Traceback" not in err


def test_checkpoints_never_unpickle_code(tmp_path):
    import torch

    from robench.errors import UsageError
    from robench.models import load_state_file

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, path)
    with pytest.raises(UsageError, match="weights_only"):
        load_state_file(path)
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(2)}, good)
    assert torch.equal(load_state_file(good)["weight"], torch.ones(2))
