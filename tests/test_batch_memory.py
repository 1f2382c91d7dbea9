"""Out-of-memory back-off in a grid, and the batch size each model keeps afterwards.

A test attack runs out of memory above 16 images, as a real attack does on a GPU too small
for the configured ``eval_batch_size``.  Its first task on a model halves the batch until it
fits; its task on the model's other domain starts at the size that fitted instead of running
out of memory again, and other attacks keep the configured batch.
"""

from __future__ import annotations

import types

import pandas as pd
import torch
import torch.nn.functional as F

import robench
from robench.grid import run_grid
from robench.host import PluginHost

FITS = 16


class MemoryHungry:
    """One signed-gradient step that runs out of memory on batches above ``FITS`` images."""

    threat = "linf"
    seen: list[int] = []

    def perturb(self, model, x, y, eps, target=None):  # noqa: ANN001
        MemoryHungry.seen.append(len(x))
        if len(x) > FITS:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
        return (x + eps * grad.sign()).clamp(0, 1)


def test_oom_backoff_and_the_batch_each_model_keeps(tmp_path) -> None:
    plugin = types.ModuleType("memory_hungry")
    plugin.robench_register_attacks = robench.hookimpl(lambda: [
        robench.AttackSpec(name="hungry", factory=MemoryHungry, threat="linf")])
    host = PluginHost.create(plugins=[plugin])
    MemoryHungry.seen.clear()
    rows = run_grid({
        "name": "oom", "out": str(tmp_path), "dataset": "digits", "target": "digits-m",
        "backbones": ["digits-cnn"], "heads": ["linear"], "adaptors": ["none"],
        "attacks": ["hungry", "fgsm"], "eps": {"linf": ["2/255", "8/255"]}, "limit": 80,
        "epochs": 2, "eval_batch_size": 64, "reporters": ["csv"],
        # one shard per task: a batch of 64 needs a shard of 64 samples or more
        "shard_size": 80,
        # MemoryHungry records the batches it saw in this process: run the tasks here
        "executor": {"local": {"workers": 1}},
    }, host=host)
    hungry = rows[rows.attack == "hungry"]
    assert set(hungry.domain) == {"source", "target"}
    assert (hungry.status == "ok").all(), hungry.error.tolist()
    # the first task tried 64 and 32 (one failed chunk each) and then fitted at 16; the
    # task on the other domain started at 16 and never ran out of memory
    too_big = [n for n in MemoryHungry.seen if n > FITS]
    assert len(too_big) == 2 and too_big[0] > too_big[1] > FITS
    second = MemoryHungry.seen[MemoryHungry.seen.index(too_big[1]) + 1:]
    assert second and max(second) <= FITS
    # the numbers equal an FGSM step at the same eps (the back-off changed nothing else)
    fgsm = rows[rows.attack == "fgsm"].set_index(["domain", "eps"]).robust_acc
    pd.testing.assert_series_equal(hungry.set_index(["domain", "eps"]).robust_acc, fgsm,
                                   check_names=False, atol=1e-9)
    # the batch each task used is stored with it: hungry 16, fgsm the configured 64
    import json
    import sqlite3

    with sqlite3.connect(tmp_path / "oom" / "results.sqlite") as db:
        used = {label: json.loads(payload)["batch_size"] for label, payload in db.execute(
            "SELECT label, payload FROM tasks WHERE kind = 'attack'")}
    assert {label.split()[0] + " " + str(size) for label, size in used.items()} == {
        f"hungry {FITS}", "fgsm 64"}, used
    assert len(used) == 4
