"""ImageNet-scale folders: memory bounded by the work, and the clean pass against a plain loop.

Two benchmarks, both on synthetic ImageNet-style folders (``root/{train,test}/class/*.jpg``,
10 classes, JPEGs of 256-375 px per side, resized and centre-cropped to 224 by the model's
own timm preprocessing):

* ``test_folder_grid``: ``robench grid`` (the CLI, default workers and executor) evaluates
  a complete ``timm:resnet18`` (random weights, 10 classes) with FGSM at 1/255 on a folder
  of 10,000 or 50,000 test images, ``limit`` 100 or 1,000.  Recorded in ``extra_info``:
  the peak memory of the whole process tree (the CLI, its worker processes and their loader
  workers, sampled every 0.2 s: the sum of their PSS, the tree's real footprint, and the sum
  of their RSS, which counts shared pages once per process), the time from the
  command's start to the first finished attack task (the first ``attack`` row in the store),
  the whole run's time, and the load average.  Settings changed from a user's defaults:
  ``class_images = 1`` (one class image instead of ten: 160 forward+backward passes of a
  ResNet-18 at 224 px per image would dominate a CPU benchmark; the clean row's
  ``class_images_seconds`` says what one costs).  The 50,000-image folder is the 10,000
  unique JPEGs hard-linked five times (what is measured is the cost of a folder's size:
  listing, indexing, memory; the pixels of the evaluated subset are decoded either way).
* ``test_clean_pass``: in one process, the clean pass as the clean task runs it
  (``robench.data.load_subset`` with a classify callback, loader workers decoding while the
  model runs) against a plain ``DataLoader(ImageFolder(transform=create_transform(...)))``
  + model loop over the same 256 files, with the same workers and batch size.

    ROBENCH_BENCH_FOLDERS=/tmp/folders pytest benchmarks/test_data_path_bench.py \\
        --benchmark-only --benchmark-columns=min,max --benchmark-group-by=group
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CLASSES = 10
UNIQUE = 10_000
FOLDERS = Path(os.environ.get("ROBENCH_BENCH_FOLDERS", ".benchmarks/folders"))


def _write_class(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    folder, cls, count, seed = args
    rng = np.random.default_rng(seed * 1000 + cls)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = int(rng.integers(256, 376)), int(rng.integers(256, 376))
        coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
        image.save(folder / f"{cls:02d}_{i:06d}.jpg", quality=85)


def synthetic_folder(test_images: int, train_per_class: int = 20) -> Path:
    """``FOLDERS/N``: ``test_images`` test JPEGs (10,000 unique, the rest hard links) and
    a small train split; written once and reused."""
    from concurrent.futures import ProcessPoolExecutor

    unique_root = FOLDERS / str(UNIQUE)
    done = unique_root / ".complete"
    if not done.exists():
        jobs = [(unique_root / "test" / f"class{c:02d}", c, UNIQUE // CLASSES, 0)
                for c in range(CLASSES)]
        jobs += [(unique_root / "train" / f"class{c:02d}", c, train_per_class, 1)
                 for c in range(CLASSES)]
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_write_class, jobs))
        done.write_text("ok")
    if test_images == UNIQUE:
        return unique_root
    root = FOLDERS / str(test_images)
    if not (root / ".complete").exists():
        copies = test_images // UNIQUE
        for split in ("train", "test"):
            for cls_dir in sorted((unique_root / split).iterdir()):
                target = root / split / cls_dir.name
                target.mkdir(parents=True, exist_ok=True)
                for file in cls_dir.iterdir():
                    for copy in range(copies if split == "test" else 1):
                        link = target / f"{copy}_{file.name}"
                        if not link.exists():
                            os.link(file, link)
        (root / ".complete").write_text("ok")
    return root


def tree_memory(pid: int, by_process: dict[int, int] | None = None) -> tuple[int, int]:
    """``(PSS, RSS)`` in bytes of ``pid`` and all its descendants, summed (from /proc).

    PSS (proportional set size) counts a page shared by k processes as 1/k in each: its sum
    is the tree's real memory.  The RSS sum counts shared pages (torch's libraries, the
    pages loader workers share with the process they forked from) once per process, so it
    overstates a tree of torch processes by several hundred MB each.  ``by_process`` gets
    each process's PSS."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    pss = rss = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        if by_process is not None:
                            by_process[p] = int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss


class Monitor:
    """Samples a process tree's RSS, the load and the store's first attack row."""

    def __init__(self, pid: int, store: Path) -> None:
        self.pid, self.store = pid, store
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_by_process: list[int] = []
        self.loads: list[float] = []
        self.first_attack: float | None = None
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _first_attack_done(self) -> bool:
        if not self.store.exists():
            return False
        try:
            with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=1) as db:
                row = db.execute("SELECT 1 FROM tasks WHERE kind = 'attack' AND "
                                 "status = 'ok' LIMIT 1").fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.2):
            each: dict[int, int] = {}
            pss, rss = tree_memory(self.pid, each)
            if pss > self.peak_pss:
                self.peak_by_process = sorted((v // 2**20 for v in each.values()), reverse=True)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            tick += 1
            if tick % 10 == 0:
                self.loads.append(os.getloadavg()[0])
            if self.first_attack is None and tick % 5 == 0 and self._first_attack_done():
                self.first_attack = time.monotonic() - self.start

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("limit", [100, 1000])
@pytest.mark.parametrize("images", [10_000, 50_000])
def test_folder_grid(benchmark: Any, tmp_path: Path, images: int, limit: int) -> None:
    root = synthetic_folder(images)
    config = tmp_path / "grid.toml"
    config.write_text(
        f'name = "folder"\ndataset = "imagefolder"\ntarget = "none"\n'
        f'models = ["timm:resnet18"]\nattacks = ["fgsm"]\nlimit = {limit}\n'
        f'class_images = 1\n[eps]\nlinf = ["1/255"]\n'
        f'[data.imagefolder]\npath = "{root.resolve()}"\n'
        f'[model."timm:resnet18"]\nnum_classes = {CLASSES}\n')
    benchmark.group = f"folder-grid-limit{limit}"
    outcome: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "robench.cli", "grid", str(config),
                                 "--out", str(tmp_path / "runs"), "--fresh"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        monitor = Monitor(proc.pid, tmp_path / "runs" / "folder" / "results.sqlite")
        _, stderr = proc.communicate()
        monitor.stop()
        assert proc.returncode == 0, stderr[-3000:]
        outcome.update(peak_pss_mb=round(monitor.peak_pss / 2**20),
                       peak_rss_sum_mb=round(monitor.peak_rss / 2**20),
                       peak_by_process=monitor.peak_by_process,
                       first_attack_s=round(monitor.first_attack or float("nan"), 1),
                       wall_s=round(time.monotonic() - start, 1),
                       load_mean=round(float(np.mean(monitor.loads or [0])), 2),
                       load_max=round(float(np.max(monitor.loads or [0])), 2))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(images=images, limit=limit, **outcome)
    print(f"\n{images} images, limit {limit}: {outcome}")


@pytest.fixture(scope="module")
def resnet18() -> Any:
    import timm
    import torch

    torch.set_num_threads(int(os.environ.get("ROBENCH_BENCH_THREADS", "1")))
    return timm.create_model("resnet18", num_classes=CLASSES).eval()


CLEAN_N = 256
CLEAN_BATCH = 64
CLEAN_WORKERS = 2


@pytest.mark.parametrize("pipeline", ["robench", "plain-dataloader"])
def test_clean_pass(benchmark: Any, resnet18: Any, pipeline: str) -> None:
    import torch
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    import robench
    from robench import data
    from robench.host import PluginHost
    from robench.loading import load_complete_on
    from robench.planning import ModelPlan

    root = synthetic_folder(UNIQUE)
    benchmark.group = "clean-pass"
    if pipeline == "robench":
        host = PluginHost.create()
        params = {"path": str(root)}
        bundle = host.build("dataset", "imagefolder", **params)
        plan = ModelPlan(name="timm:resnet18", model="timm:resnet18",
                         model_params={"num_classes": CLASSES})
        _m, _c, _p, view = load_complete_on(host, plan, bundle, dataset="imagefolder",
                                            dataset_params=params)
        model = robench.classifiers.fit_to_dataset(
            robench.Classifier(resnet18, CLASSES, mean=_c.mean, std=_c.std, image_size=224,
                               in_chans=3), model_name="resnet18", dataset="imagefolder",
            num_classes=CLASSES, class_names=[], image_size=224, in_chans=3)
        indices = data.subset_indices(len(view.test), None)[:CLEAN_N]

        def clean_pass() -> int:
            seen = []
            with torch.no_grad():
                data.load_subset(view.test, indices, batch_size=CLEAN_BATCH,
                                 workers=CLEAN_WORKERS,
                                 on_batch=lambda xb, _y: seen.append(model(xb).argmax(1)))
            return int(torch.cat(seen).numel())
    else:
        config = resolve_data_config({}, model=resnet18)
        folder = ImageFolder(str(root / "test"), transform=create_transform(**config))
        subset = torch.utils.data.Subset(folder, list(range(CLEAN_N)))

        def clean_pass() -> int:
            seen = []
            loader = torch.utils.data.DataLoader(subset, batch_size=CLEAN_BATCH,
                                                 num_workers=CLEAN_WORKERS)
            with torch.no_grad():
                for x, _y in loader:
                    seen.append(resnet18(x).argmax(1))
            return int(torch.cat(seen).numel())

    done = benchmark.pedantic(clean_pass, rounds=3, iterations=1, warmup_rounds=1)
    assert done == CLEAN_N
    benchmark.extra_info["images_per_s"] = round(CLEAN_N / benchmark.stats.stats.min, 2)
    benchmark.extra_info["load"] = os.getloadavg()[0]
