"""PGD-10 speed: robench against torchattacks, foolbox and the ideal, on identical inputs.

The ideal is 10 forward+backward passes of the whole batch, the least any 10-step PGD can
do without early exit.  Every implementation uses the same eps, 10 steps of
``2.5 * eps / 10`` and a random start; each benchmark records the robust accuracy it reached
(``extra_info``) so that speed is never bought with strength.  Run with::

    .venv/bin/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import robench_attacks.plugin
import torch
import torch.nn.functional as F

import robench

STEPS = 10
IMPLEMENTATIONS = ["ideal-10x-fwd-bwd", "robench-pgd", "torchattacks-PGD", "foolbox-LinfPGD"]
SETTINGS = ["resnet_setting", "digits_setting"]


def _ideal(setting: Any) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        x = setting.x
        for _ in range(STEPS):
            x_req = x.detach().requires_grad_(True)
            loss = F.cross_entropy(setting.model(x_req), setting.y)
            (grad,) = torch.autograd.grad(loss, x_req)
        return (setting.x + 0.0 * grad).detach()

    return run


def _robench(setting: Any) -> Callable[[], torch.Tensor]:
    host = robench.PluginHost.create(entry_points=False, plugins=[robench_attacks.plugin])
    attack = host.build("attack", "pgd", steps=STEPS)
    return lambda: attack.perturb(setting.model, setting.x, setting.y, setting.eps)


def _torchattacks(setting: Any) -> Callable[[], torch.Tensor]:
    torchattacks = pytest.importorskip("torchattacks")
    attack = torchattacks.PGD(setting.model, eps=setting.eps, alpha=2.5 * setting.eps / STEPS,
                              steps=STEPS, random_start=True)
    return lambda: attack(setting.x, setting.y)


def _foolbox(setting: Any) -> Callable[[], torch.Tensor]:
    fb = pytest.importorskip("foolbox")
    fmodel = fb.PyTorchModel(setting.model, bounds=(0, 1), device="cpu")
    attack = fb.attacks.LinfPGD(steps=STEPS, abs_stepsize=2.5 * setting.eps / STEPS)

    def run() -> torch.Tensor:
        _, clipped, _ = attack(fmodel, setting.x, setting.y, epsilons=setting.eps)
        return clipped

    return run


BUILDERS: dict[str, Callable[[Any], Callable[[], torch.Tensor]]] = {
    "ideal-10x-fwd-bwd": _ideal,
    "robench-pgd": _robench,
    "torchattacks-PGD": _torchattacks,
    "foolbox-LinfPGD": _foolbox,
}


@pytest.mark.parametrize("setting_name", SETTINGS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pgd10(benchmark: Any, request: pytest.FixtureRequest, setting_name: str,
               implementation: str) -> None:
    setting: Any = request.getfixturevalue(setting_name)
    benchmark.group = f"pgd10 {setting.name} (batch {len(setting.x)})"
    run = BUILDERS[implementation](setting)
    torch.manual_seed(0)
    x_adv = benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    assert x_adv.shape == setting.x.shape
    assert (x_adv - setting.x).abs().max() <= setting.eps + 1e-6
    with torch.no_grad():
        robust = float((setting.model(x_adv).argmax(1) == setting.y).float().mean())
    benchmark.extra_info["robust_accuracy"] = round(robust, 4)
    benchmark.extra_info["eps"] = setting.eps
    benchmark.extra_info["threads"] = torch.get_num_threads()
