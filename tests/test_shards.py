"""Sample shards: an attack task split into jobs over consecutive samples.

The rows of a grid are the same, every column but timings, for any executor (in-process,
two worker processes, Ray) at a given shard size; between shard sizes the per-sample results
are compared and the number of samples that differ is asserted as measured (none: random
draws come from per-sample streams).  A preset's members chain shard by shard.  A store
written without shards resumes without recomputing anything, and a first member stored
unsharded feeds a sharded second member.  A worker killed with SIGKILL in the middle of a
sharded task costs only the shards it was running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from grids import TINY_GRID

import robench
from robench.grid import Grid
from robench.shards import (
    merge_payloads,
    resolve_shard_size,
    shard_key,
    shard_ranges,
)
from robench.store import Store, pack_mask, unpack_mask

#: columns that measure wall time, the only ones allowed to differ between runs
TIMING = ["seconds", "train_seconds", "run"]

#: 100 samples: 4 shards of 32 (the last of 4), or 2 of 64 (the last of 36).  FGSM, PGD with
#: its random start, the noise baseline (random draws only) and the fast AutoAttack preset
#: (two members chained), made cheap
GRID: dict[str, Any] = {
    **TINY_GRID, "limit": 100, "class_images": 0,
    "attacks": ["fgsm", "pgd", "noise", "autoattack-fast"],
    "attack": {"pgd": {"steps": 3}, "noise": {"draws": 3},
               "autoattack-fast/apgd-ce": {"steps": 8},
               "autoattack-fast/apgd-t": {"steps": 8, "n_target_classes": 2}},
}

EXECUTORS: dict[str, dict[str, Any]] = {
    "inprocess": {"local": {"workers": 1}},
    "workers2": {"local": {"workers": 2}},
    "ray": {"ray": {"num_cpus": 2}},
}


def _host() -> robench.PluginHost:
    host = robench.PluginHost.create()
    if "ray" in host.names("executor"):
        return host
    import robench_ray.plugin

    return robench.PluginHost.create(plugins=[robench_ray.plugin])


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in TIMING if c in frame]).reset_index(drop=True)


def _masks(run_dir: Path) -> dict[tuple[str, float], np.ndarray]:
    """Per attack task (its label) and eps, the per-sample robust mask the store holds."""
    db = sqlite3.connect(run_dir / "results.sqlite")
    out = {}
    for key, label, payload in db.execute(
            "SELECT key, label, payload FROM tasks WHERE kind='attack'"):
        data = json.loads(payload)
        if "outcomes" not in data or "." in key:  # a shard: its task holds its samples
            continue
        for outcome in data["outcomes"]:
            out[(label, float(outcome["eps"]))] = unpack_mask(outcome["robust"], data["n"])
    db.close()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Grid]]:
    """The grid unsharded, and at shard sizes 32 and 64 on every executor."""
    pytest.importorskip("ray")
    out = tmp_path_factory.mktemp("shards")
    host = _host()
    grids: dict[str, tuple[Path, Grid]] = {}
    plans = [("whole", 100, "inprocess")] + [
        (f"s{size}-{executor}", size, executor)
        for size in (32, 64) for executor in EXECUTORS]
    for name, size, executor in plans:
        config = robench.config.build_config(
            {**GRID, "name": name, "out": str(out), "shard_size": size,
             "executor": EXECUTORS[executor]})
        grid = Grid(config, host=host)
        grid.run()
        grids[name] = (out / name, grid)
    return grids


@pytest.mark.slow
def test_rows_are_identical_for_every_executor_and_shard_size(runs) -> None:
    tables = {name: _rows(pd.read_csv(path / "results.csv")) for name, (path, _) in runs.items()}
    assert set(tables["whole"]["status"]) == {"ok"}
    assert len(tables["whole"]) == 5 * 2 + 2  # fgsm, pgd, noise, 2 members, worst case
    for size in (32, 64):
        for executor in EXECUTORS:
            pd.testing.assert_frame_equal(tables[f"s{size}-{executor}"],
                                          tables[f"s{size}-inprocess"])
    # between shard sizes: the samples whose outcome differs, counted per task and eps.
    # Measured: none (per-sample streams; digits-cnn's kernels agree across batch shapes)
    reference = _masks(runs["whole"][0])
    assert len(reference) == 10
    for size in (32, 64):
        masks = _masks(runs[f"s{size}-inprocess"][0])
        assert masks.keys() == reference.keys()
        differing = sum(int((masks[k] != reference[k]).sum()) for k in reference)
        assert differing == 0
        pd.testing.assert_frame_equal(tables[f"s{size}-inprocess"], tables["whole"])


@pytest.mark.slow
def test_each_shard_is_a_job_and_a_store_row(runs) -> None:
    _, grid = runs["s32-workers2"]
    attack_jobs = [key for key in grid.ran if "." in key]
    # 5 attack tasks (fgsm, pgd, noise, two preset members) x 4 shards
    assert len(attack_jobs) == 5 * 4 and len(grid.sharded) == 5
    store = Store(runs["s32-workers2"][0] / "results.sqlite")
    for task, sharded in grid.sharded.items():
        assert len(sharded.keys) == 4 and all(store.status(k) == "ok" for k in sharded.keys)
        merged = store.get(task)
        assert merged["shards"] == 4 and merged["shard_size"] == 32 and merged["n"] == 100
        parts = [store.get(k) for k in sharded.keys]
        assert [(p["start"], p["stop"]) for p in parts] == shard_ranges(100, 32)
        assert merged["n_correct"] == sum(p["n_correct"] for p in parts)
    store.close()


@pytest.mark.slow
def test_an_unsharded_store_resumes_without_recomputing(runs, tmp_path: Path) -> None:
    source, _ = runs["whole"]
    copy = tmp_path / "whole"
    shutil.copytree(source, copy)
    config = robench.config.build_config(
        {**GRID, "name": "whole", "out": str(tmp_path), "shard_size": 32,
         "executor": EXECUTORS["inprocess"]})
    grid = Grid(config)
    grid.run()
    assert grid.ran == []  # every task was in the store, unsharded
    assert grid.reused == len(grid.sharded) + 2  # the attack tasks, training, clean pass
    pd.testing.assert_frame_equal(_rows(pd.read_csv(copy / "results.csv")),
                                  _rows(pd.read_csv(source / "results.csv")))

    # the preset's second member lost: it runs sharded on what the first member (stored
    # unsharded, its masks for all 100 samples) left robust, and nothing else runs
    store = Store(copy / "results.sqlite")
    member = next(t for t, s in grid.sharded.items() if "apgd-t" in s.label)
    store.db.execute("DELETE FROM tasks WHERE key=?", (member,))
    store.db.commit()
    store.close()
    again = Grid(config)
    again.run()
    assert sorted(again.ran) == sorted(grid.sharded[member].keys)
    pd.testing.assert_frame_equal(_rows(pd.read_csv(copy / "results.csv")),
                                  _rows(pd.read_csv(source / "results.csv")))


# --------------------------------------------------------------------------- kill -9

#: a slower grid for the kill: PGD with 200 steps over 8 shards of 24 samples (seconds each)
KILL_GRID: dict[str, Any] = {
    **TINY_GRID, "limit": 192, "class_images": 0, "attacks": ["pgd"],
    "eps": {"linf": ["2/255", "8/255"]}, "attack": {"pgd": {"steps": 200}}, "shard_size": 24,
}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


def _stored(run_dir: Path) -> dict[str, str]:
    path = run_dir / "results.sqlite"
    if not path.exists():
        return {}
    try:
        db = sqlite3.connect(path, timeout=5)
        rows = dict(db.execute("SELECT key, status FROM tasks WHERE kind='attack'"))
        db.close()
    except sqlite3.Error:
        return {}
    return rows


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds worker processes in /proc")
def test_a_worker_killed_mid_task_costs_only_its_shard(tmp_path: Path) -> None:
    config_file = tmp_path / "grid.toml"
    lines = [f"{k} = {json.dumps(v)}" for k, v in KILL_GRID.items()
             if not isinstance(v, dict)]
    lines += ['[eps]', 'linf = ["2/255", "8/255"]', '[attack.pgd]', 'steps = 200',
              '[executor.local]', 'workers = 2']
    config_file.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "kill"
    command = [sys.executable, "-m", "robench.cli", "grid", str(config_file),
               "--name", "kill", "--out", str(tmp_path), "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until the attack's shards are under way
            if sum(s == "ok" for s in _stored(run_dir).values()) >= 2:
                break
            if driver.poll() is not None:
                pytest.fail(f"the grid ended before the kill: {driver.communicate()[1]}")
            time.sleep(0.2)
        else:
            pytest.fail("no shard was stored within 4 minutes")
        workers = _children(driver.pid)
        before = {pid: _cpu_ticks(pid) for pid in workers}
        time.sleep(0.3)
        busy = [pid for pid in workers if _cpu_ticks(pid) > before[pid] >= 0]
        assert busy, "no worker was computing"
        os.kill(busy[0], signal.SIGKILL)
        _, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, stderr  # a failed shard: its rows say so
    first = _stored(run_dir)
    assert list(first.values()).count("failed") >= 2  # the shard, and its task
    missing = [k for k, status in first.items() if status != "ok" and "." in k]
    assert len(missing) == 1

    config = robench.config.build_config(
        {**KILL_GRID, "name": "kill", "out": str(tmp_path),
         "executor": {"local": {"workers": 2}}})
    resumed = Grid(config)
    resumed.run()
    assert resumed.ran == missing  # only the shard in flight ran again
    assert set(pd.read_csv(run_dir / "results.csv")["status"]) == {"ok"}

    reference = Grid(robench.config.build_config(
        {**KILL_GRID, "name": "reference", "out": str(tmp_path),
         "executor": {"local": {"workers": 2}}}))
    reference.run()
    pd.testing.assert_frame_equal(_rows(pd.read_csv(run_dir / "results.csv")),
                                  _rows(pd.read_csv(tmp_path / "reference" / "results.csv")))


# --------------------------------------------------------------------------- units


def test_auto_shards_split_a_task_in_eight_of_at_least_32_samples() -> None:
    assert resolve_shard_size("auto", 300) == 38
    assert resolve_shard_size("auto", 1000) == 125
    assert resolve_shard_size("auto", 100) == 32
    assert resolve_shard_size("auto", 20) == 32  # one shard
    assert resolve_shard_size(64, 1000) == 64
    assert shard_ranges(100, 32) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert shard_ranges(20, 32) == [(0, 20)]
    assert shard_ranges(0, 32) == [(0, 0)]
    ranges = shard_ranges(5000, resolve_shard_size("auto", 5000))
    assert len(ranges) == 8 and ranges[-1][1] == 5000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    # a task of one shard keeps its task key: stores written before shards resume
    assert shard_key("abc", 0, 20, 20) == "abc"
    assert shard_key("abc", 32, 64, 100) == "abc.32-64"


def test_merged_payloads_concatenate_masks_and_add_counts() -> None:
    def part(start: int, robust: list[bool], correct: int, **counts: int) -> dict[str, Any]:
        n = len(robust)
        outcome = {"eps": 0.1, "eps_label": "0.1", "robust": pack_mask(np.array(robust)),
                   "n_robust": sum(robust), "robust_acc": sum(robust) / n,
                   "n_invalid": counts.get("invalid", 0), "n_verify_mismatch": 0,
                   "n_precision_mismatch": 0, "grad_evals": counts.get("grads", 0),
                   "queries": 2 * n, "seconds": 1.5, "reasons": counts.get("reasons", {})}
        return {"threat": "linf", "kind": "bounded", "black_box": False, "targeted": False,
                "target": "", "n": n, "clean_acc": correct / n, "n_correct": correct,
                "start": start, "stop": start + n, "attack_params": {}, "examples": 1,
                "batch_size": 32, "outcomes": [outcome]}

    merged = merge_payloads([
        part(0, [True, False, True], 3, grads=30, invalid=1, reasons={"outside-[0,1]": 1}),
        part(3, [False, True], 1, grads=20, reasons={"outside-[0,1]": 2}),
    ])
    (outcome,) = merged["outcomes"]
    assert merged["n"] == 5 and merged["n_correct"] == 4 and merged["clean_acc"] == 0.8
    assert unpack_mask(outcome["robust"], 5).tolist() == [True, False, True, False, True]
    assert outcome["n_robust"] == 3 and outcome["robust_acc"] == 0.6
    assert outcome["grad_evals"] == 50 and outcome["queries"] == 10
    assert outcome["n_invalid"] == 1 and outcome["reasons"] == {"outside-[0,1]": 3}
    assert outcome["seconds"] == 3.0 and merged["shards"] == 2 and merged["shard_size"] == 3
    assert "start" not in merged and merged["examples"] == 2


@pytest.mark.parametrize("value", ["0", "-3", "many", "1.5"])
def test_a_bad_shard_size_is_refused_in_one_paragraph(value: str) -> None:
    with pytest.raises(robench.UsageError, match="shard_size.*an integer >= 1"):
        robench.config.build_config({}, shard_size=value)
    assert robench.config.build_config({}, shard_size="48").shard_size == 48
    assert robench.config.build_config({}).shard_size == "auto"


def test_progress_counts_jobs_and_says_how_many_are_shards() -> None:
    from robench.progress import ProgressDisplay

    def job(key: str, label: str) -> robench.Job:
        return robench.Job(key=key, task="attack", label=label, fn=dict)

    jobs = [job("t", "train digits-cnn+linear+none"),
            *(job(f"a.{i}", f"pgd on digits-cnn+linear+none [source, shard {i}/3]")
              for i in (1, 2, 3))]
    display = ProgressDisplay(True, jobs, "grid", None, 2, threads=1)
    assert display.header() == ("robench: 4 jobs (3 of them attack shards) on 2 workers, "
                                "1 torch thread each")
    assert ProgressDisplay(True, jobs[:1], "grid", None, 2, threads=1).header() == \
        "robench: 1 task on 2 workers, 1 torch thread each"
