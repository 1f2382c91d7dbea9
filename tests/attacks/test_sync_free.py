"""The attack loops never make the host wait for the device inside a step.

A GPU runs kernels asynchronously; anything that needs a device value on the host (``.item()``,
``bool(t)``, ``nonzero``, boolean-mask indexing, whose result shape depends on the data) makes
the host wait for the whole queue.  The tests count such operations with
``robench.testing.HostReads`` (a ``TorchFunctionMode``, which sees every tensor operation on
any device), so the property is checked on the CPU: with compaction turned off, an attack
makes exactly as many host reads with 10 steps as with 30, i.e. none per step.  The
working-set compaction (the only place rows are dropped) is checked to change nothing but
the cost.
"""

from __future__ import annotations

import pytest
import robench_attacks.plugin as P
import torch
from attack_helpers import Counting
from robench_attacks.working_set import DEVICE_COMPACT_EVERY, compact_interval

from robench.testing import HostReads

NEVER = 10**9  # a compaction interval no loop reaches


def _attack(name: str, budget: int) -> P.NativeAttack:
    """``name`` with ``budget`` steps (queries for square), seeded."""
    if name == "pgd":
        return P.PGD(steps=budget, seed=0)
    if name == "pgd-l2":
        return P.PGDL2(steps=budget, seed=0)
    if name == "pgd-l1":
        return P.PGDL1(steps=budget, seed=0)
    if name == "apgd-ce":
        return P.APGD(loss="ce", steps=budget, seed=0)
    if name == "apgd-dlr":
        return P.APGD(loss="dlr", steps=budget, seed=0)
    if name == "deepfool":
        return P.DeepFool(steps=budget, candidates=4)
    if name == "cw-l2":
        return P.CarliniWagnerL2(steps=budget, binary_search_steps=2, abort_early=False)
    if name == "square":
        return P.Square(queries=budget, seed=0)
    raise AssertionError(name)


EPS = {"pgd": 8 / 255, "pgd-l2": 0.5, "pgd-l1": 8.0, "apgd-ce": 8 / 255, "apgd-dlr": 8 / 255,
       "deepfool": None, "cw-l2": None, "square": 0.15}
ITERATIVE = list(EPS)


def _host_reads(digits, name: str, budget: int) -> tuple[int, list[str]]:
    attack = _attack(name, budget)
    attack.compact_every = NEVER
    x, y = digits.x[:32], digits.y[:32]
    with HostReads() as reads:
        attack.perturb(digits.model, x, y, EPS[name])
    return reads.count, reads.names


@pytest.mark.parametrize("name", ITERATIVE)
def test_no_host_read_per_step(digits, name: str) -> None:
    few, few_names = _host_reads(digits, name, 10)
    many, many_names = _host_reads(digits, name, 30)
    assert many == few, (
        f"{name}: {few} host reads with 10 steps but {many} with 30, so some happen inside "
        f"the step loop: {sorted(set(many_names))}")


def test_the_counter_sees_per_step_reads(digits) -> None:
    """The same counter does see a loop that reads the device every step (what
    compaction at every step is, on the CPU): the test above can fail."""
    counts = []
    for steps in (10, 30):
        attack = P.PGD(steps=steps, seed=0)
        attack.compact_every = 1
        with HostReads() as reads:
            attack.perturb(digits.model, digits.x[:32], digits.y[:32], 0.5 / 255)
        counts.append(reads.count)
    assert counts[1] >= counts[0] + 20


RESTARTABLE = ("pgd", "pgd-l2", "pgd-l1", "apgd-ce", "apgd-dlr")
TARGETED = (*RESTARTABLE, "square")


CASES = [(name, mode) for name in ITERATIVE if name != "cw-l2"
         for mode in ("untargeted", "targeted", "restarts")
         if mode == "untargeted" or mode == "targeted" and name in TARGETED
         or mode == "restarts" and name in RESTARTABLE]


@pytest.mark.parametrize(("name", "mode"), CASES)
@pytest.mark.parametrize("every", [DEVICE_COMPACT_EVERY, NEVER])
def test_compaction_changes_cost_not_results(digits, name: str, mode: str, every: int) -> None:
    """Deferred compaction returns exactly what per-step compaction returns, targeted and
    with restarts too, at a cost at least as high: finished rows are computed until they are
    dropped.  (cw-l2 drops rows at its own abort-early checks, not through the working set.)"""
    x, y = digits.x[:48], digits.y[:48]
    target = (y + 1) % 10 if mode == "targeted" else None
    outs, costs = [], []
    for interval in (1, every):
        attack = _attack(name, 150 if name == "square" else 12)
        if mode == "restarts":
            attack.restarts = 3
        attack.compact_every = interval
        counting = Counting(digits.model)
        torch.manual_seed(0)
        outs.append(attack.perturb(counting, x, y, EPS[name], target=target))
        costs.append(counting.queries)
    assert torch.equal(outs[1], outs[0])
    with torch.no_grad():
        pred = digits.model(outs[0]).argmax(1)
    fooled = pred == target if target is not None else pred != y
    assert fooled.any(), "nothing was fooled: the comparison would be vacuous"
    assert costs[0] < costs[1]  # early exit at every step saves work on the CPU


def test_compaction_interval_by_device() -> None:
    assert compact_interval(torch.device("cpu")) == 1
    assert compact_interval(torch.device("cuda", 0)) == DEVICE_COMPACT_EVERY
    assert compact_interval(torch.device("cuda", 0), 1) == 1
    assert compact_interval(torch.device("cpu"), 0) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "deepfool"])
def test_no_cuda_synchronisation_per_step(digits, name: str) -> None:
    """On a GPU, CUDA's own sync debugger agrees: with compaction off, as many synchronising
    calls with 10 steps as with 30."""
    import warnings

    model = digits.model.to("cuda")
    x, y = digits.x[:32].cuda(), digits.y[:32].cuda()
    counts = []
    try:
        for steps in (10, 30):
            attack = _attack(name, steps)
            attack.compact_every = NEVER
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                attack.perturb(model, x, y, EPS[name])
            torch.cuda.set_sync_debug_mode("default")
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
    finally:
        torch.cuda.set_sync_debug_mode("default")
        digits.model.to("cpu")
    assert counts[0] == counts[1], counts


def test_a_compaction_is_one_host_read() -> None:
    from robench_attacks.working_set import WorkingSet

    x = torch.rand(6, 3, 4, 4)
    ws = WorkingSet(x, {f"t{i}": torch.rand(6, 2) for i in range(14)}, every=1)
    with HostReads() as reads:
        ws.settle(torch.tensor([True, False, True, False, False, False]), x)
        ws.compact(0)
    assert reads.count == 1, reads.names
    assert ws.idx.tolist() == [1, 3, 4, 5] and all(len(t) == 4 for t in ws.state.values())
    out, fooled = ws.finish(torch.zeros(4, 3, 4, 4))
    assert fooled.tolist() == [True, False, True, False, False, False]
    assert torch.equal(out[[0, 2]], x[[0, 2]]) and not out[[1, 3, 4, 5]].any()
