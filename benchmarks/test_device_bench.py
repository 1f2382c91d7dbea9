"""Throughput of one PGD-10 pass per device and precision, against the ideal.

On the CPU always; on CUDA whenever torch sees a GPU (the session that runs this on a GPU
records the card, precision and numbers in benchmarks/RESULTS.md).  The model is timm's
``resnet18`` at 32 px, random weights, eval mode, frozen, in ``channels_last``; labels are
its own predictions and eps is tiny, so nothing is fooled and every implementation does the
full 10 forward+backward passes: the ratio to the ideal is pure overhead.  bf16 runs through
``robench.models.with_precision`` (autocast, float32 logits), as the grid does.

    pytest benchmarks/test_device_bench.py --benchmark-only --benchmark-columns=min,median
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from robench.models import freeze, with_precision

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PRECISIONS = ["fp32", "bf16"]
STEPS = 10


def _setting(device: str, precision: str):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    batch = 256 if device == "cuda" else 16
    model = freeze(timm.create_model("resnet18", num_classes=10)).to(device)
    model = model.to(memory_format=torch.channels_last)
    model = with_precision(model, precision, device)
    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["ideal-10x-fwd-bwd", "robench-pgd"])
def test_pgd_images_per_second(benchmark: Any, device: str, precision: str,
                               implementation: str) -> None:
    from robench_attacks.plugin import PGD

    model, x, y = _setting(device, precision)
    attack = PGD(steps=STEPS, random_start=False)

    def ideal() -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        for _ in range(STEPS):
            loss = torch.nn.functional.cross_entropy(model(xg), y)
            (grad,) = torch.autograd.grad(loss, xg)
        _sync(device)
        return grad

    def robench_pgd() -> torch.Tensor:
        out = attack.perturb(model, x, y, 1e-6)
        _sync(device)
        return out

    run = ideal if implementation.startswith("ideal") else robench_pgd
    benchmark.group = f"pgd10 resnet18 32px {device} {precision} (batch {len(x)})"
    benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        precision=precision, images_per_second=round(len(x) / benchmark.stats["min"], 1),
    )
