"""AutoAttack's remaining attacks in the native plugin: APGD-T, FAB, FAB-T and EOT.

Strength is checked against the reference implementations at equal parameters
(``pyautoattack``, the AutoAttack authors' code, and ``torchattacks``): robench's robust
accuracy at an eps must not exceed theirs (+1 point of slack).  FAB is a minimal attack
here, so its robust accuracy at eps is the fraction of samples whose smallest adversarial is
larger than eps, compared with the reference's bounded run at that eps.  Budgets (steps,
target classes, images) are reduced so that the file runs in well under a minute on one
thread; the parameters are the same on both sides of every comparison.
"""

from __future__ import annotations

from typing import Any

import pytest
import robench_attacks.plugin as P
import torch
from attack_helpers import Counting, accuracy, assert_valid, norms
from robench_attacks._core import ce_loss
from torch import nn

import robench
from robench.testing import HostReads

EPS_TOLERANCE = 1e-5
NEVER = 10**9  # a compaction interval no loop reaches


def robust_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
              threat: str, eps: float) -> float:
    """Robust accuracy at ``eps`` from a (possibly larger) adversarial: an example counts as
    fooling only if it is misclassified and within eps, as the harness counts it."""
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    within = norms(x_adv - x, threat) <= eps + EPS_TOLERANCE
    return float((~(fooled & within)).float().mean())


# --------------------------------------------------------------------------- registry


def test_registered_with_threat_kind_and_parameters(host: robench.PluginHost) -> None:
    specs = host.specs("attack")
    assert specs["apgd-t"].threat == "linf" and specs["apgd-t"].kind == "bounded"
    for name in ("fab", "fab-t"):
        assert specs[name].threat == "linf" and specs[name].kind == "minimal", name
    for name in ("apgd-t", "fab", "fab-t"):
        assert not specs[name].targeted and not specs[name].black_box, name
        attack = host.build("attack", name)
        assert attack.threat == "linf" and attack.kind == specs[name].kind
        assert host.build("attack", name, norm="l2").threat == "l2"
    assert host.build("attack", "apgd-t").params["n_target_classes"] == 9
    assert host.build("attack", "fab-t", n_target_classes=3).params["n_target_classes"] == 3
    assert host.build("attack", "fab").params["steps"] == 100
    for name in ("apgd-ce", "apgd-dlr", "apgd-t"):
        assert host.build("attack", name, eot_iter=4).params["eot_iter"] == 4


@pytest.mark.parametrize(("name", "params", "match"), [
    ("apgd-t", {"n_target_classes": 0}, "n_target_classes"),
    ("apgd-t", {"norm": "l1"}, "norm"),
    ("apgd-ce", {"eot_iter": 0}, "eot_iter"),
    ("fab-t", {"n_target_classes": 1.5}, "n_target_classes"),
    ("fab", {"norm": "l0"}, "norm"),
    ("fab", {"beta": 1.0}, "beta"),
    ("fab", {"alpha_max": 2.0}, "alpha_max"),
    ("fab", {"eta": 0}, "eta"),
])
def test_bad_parameters_are_usage_errors(host: robench.PluginHost, name: str,
                                         params: dict[str, Any], match: str) -> None:
    with pytest.raises(robench.UsageError, match=match):
        host.build("attack", name, **params)


def test_refuse_a_target_and_a_bad_eps(digits: Any) -> None:
    x, y = digits.x[:4], digits.y[:4]
    for attack, eps in ((P.APGDT(steps=2), 0.05), (P.FABT(steps=2), None)):
        with pytest.raises(robench.UsageError, match="no targeted variant"):
            attack.perturb(digits.model, x, y, eps, target=(y + 1) % 10)
    with pytest.raises(robench.UsageError, match="eps"):
        P.FAB(steps=2).perturb(digits.model, x, y, -1.0)
    with pytest.raises(robench.UsageError, match="at least 4 classes"):
        three = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).eval()
        P.APGDT(steps=2).perturb(three, x, three(x).argmax(1).detach(), 0.05)


# --------------------------------------------------------------------------- FAB's projection


def test_boundary_step_is_the_exact_box_constrained_projection() -> None:
    """Against brute force: a Linf LP and an L2 QP solved by scipy on random problems."""
    optimize = pytest.importorskip("scipy.optimize")
    import numpy as np
    from robench_attacks.fab import boundary_step

    gen = torch.Generator().manual_seed(0)
    n, dim = 12, 15
    t = torch.rand(n, dim, generator=gen, dtype=torch.float64)
    w = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    c = 0.6 * torch.randn(n, generator=gen, dtype=torch.float64)
    c[0] = 50.0  # out of the box's reach: the closest corner
    for norm in ("linf", "l2"):
        d = boundary_step(t, w, c, norm)
        assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
        reach = (w * torch.where(w > 0, 1 - t, -t)).sum(1)
        assert torch.allclose((w * d)[0].sum(), reach[0])
        for i in range(1, n):
            assert abs(float((w[i] * d[i]).sum() - c[i])) < 1e-9, (norm, i)
            box = list(zip((-t[i]).numpy(), (1 - t[i]).numpy(), strict=True))
            if norm == "linf":  # min s with -s <= v <= s, w.v = c, v in the box
                a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))],
                                 [-np.eye(dim), -np.ones((dim, 1))]])
                res = optimize.linprog(np.r_[np.zeros(dim), 1.0], A_ub=a_ub,
                                       b_ub=np.zeros(2 * dim), A_eq=np.r_[w[i].numpy(), 0][None],
                                       b_eq=[float(c[i])], bounds=[*box, (0, None)])
                best = res.x[-1]
                ours = float(d[i].abs().max())
            else:
                res = optimize.minimize(
                    lambda v: (v**2).sum(), np.zeros(dim), jac=lambda v: 2 * v, bounds=box,
                    constraints=[{"type": "eq",
                                  "fun": lambda v, i=i: float((w[i].numpy() * v).sum() - c[i])}],
                    method="SLSQP")
                best = float(np.sqrt((res.x**2).sum()))
                ours = float(d[i].norm())
            assert ours <= best + 1e-6, (norm, i, ours, best)


# --------------------------------------------------------------------------- references


def test_apgd_t_at_least_as_strong_as_the_references(digits: Any) -> None:
    """Equal steps (25), targets (3) and eps; the references' start is random too."""
    pyautoattack = pytest.importorskip("pyautoattack.autopgd_base")
    torchattacks = pytest.importorskip("torchattacks")
    x, y, model = digits.x[:100], digits.y[:100], digits.model
    eps, steps, k = 0.08, 25, 3
    x_adv = P.APGDT(steps=steps, n_target_classes=k, seed=0).perturb(model, x, y, eps)
    assert_valid(x, x_adv, threat="linf", eps=eps)
    ours = accuracy(model, x_adv, y)
    reference = pyautoattack.APGDAttack_targeted(model, n_iter=steps, eps=eps,
                                                 n_target_classes=k, seed=0, device="cpu")
    theirs = accuracy(model, reference.perturb(x, y), y)
    other = torchattacks.APGDT(model, eps=eps, steps=steps, seed=0)
    other.n_target_classes = k  # torchattacks derives it from n_classes; same 3 targets
    theirs_ta = accuracy(model, other(x, y), y)
    print(f"apgd-t robust accuracy at {eps}: robench {ours:.3f}, pyautoattack {theirs:.3f}, "
          f"torchattacks {theirs_ta:.3f}")
    assert ours < accuracy(model, x, y) - 0.3  # not vacuous
    assert ours <= theirs + 0.01 and ours <= theirs_ta + 0.01


@pytest.mark.parametrize(("norm", "eps_grid"), [("linf", (0.04, 0.07)), ("l2", (0.6, 1.0))])
def test_fab_t_at_least_as_strong_as_the_bounded_references(digits: Any, norm: str,
                                                            eps_grid: tuple[float, ...]) -> None:
    """One minimal run against the references' bounded runs at each eps (20 steps, 3
    targets): pyautoattack's FAB-T and torchattacks' multi-targeted FAB."""
    pyautoattack = pytest.importorskip("pyautoattack.fab_pt")
    torchattacks = pytest.importorskip("torchattacks")
    x, y, model = digits.x[:64], digits.y[:64], digits.model
    steps, k = 20, 3
    x_adv = P.FABT(norm=norm, steps=steps, n_target_classes=k).perturb(model, x, y, None)
    assert_valid(x, x_adv, threat=norm, eps=None)
    ref_norm = {"linf": "Linf", "l2": "L2"}[norm]
    for i, eps in enumerate(eps_grid):
        ours = robust_at(model, x, y, x_adv, norm, eps)
        if i == 0:
            theirs = pyautoattack.FABAttack_PT(model, norm=ref_norm, n_iter=steps, eps=eps,
                                               targeted=True, n_target_classes=k,
                                               device="cpu").perturb(x, y)
            name = "pyautoattack"
        else:
            other = torchattacks.FAB(model, norm=ref_norm, eps=eps, steps=steps,
                                     multi_targeted=True)
            other.n_target_classes = k
            theirs, name = other(x, y), "torchattacks"
        reference = robust_at(model, x, y, theirs, norm, eps)
        print(f"fab-t {norm} robust accuracy at {eps}: robench {ours:.3f}, {name} "
              f"{reference:.3f}")
        assert ours < 0.9, "nothing fooled: the comparison would be vacuous"
        assert ours <= reference + 0.01, (eps, ours, reference)


def test_fab_at_least_as_strong_as_the_bounded_reference(digits: Any) -> None:
    pyautoattack = pytest.importorskip("pyautoattack.fab_pt")
    x, y, model = digits.x[:48], digits.y[:48], digits.model
    eps, steps = 0.05, 15
    x_adv = P.FAB(steps=steps).perturb(model, x, y, None)
    ours = robust_at(model, x, y, x_adv, "linf", eps)
    theirs = pyautoattack.FABAttack_PT(model, norm="Linf", n_iter=steps, eps=eps,
                                       device="cpu").perturb(x, y)
    reference = robust_at(model, x, y, theirs, "linf", eps)
    print(f"fab linf robust accuracy at {eps}: robench {ours:.3f}, pyautoattack {reference:.3f}")
    assert ours < 0.9 and ours <= reference + 0.01


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_returns_minimal_adversarials_or_the_clean_image(digits: Any, norm: str) -> None:
    x, y, model = digits.x[:24], digits.y[:24], digits.model
    x_before = x.clone()
    counting = Counting(model)
    steps, k = 6, 2
    radius = {"linf": 0.2, "l2": 1.5}[norm]  # else a numeric eps sets the restarts' radius
    attack = P.FABT(norm=norm, steps=steps, n_target_classes=k, restarts=2, seed=3,
                    restart_radius=radius)
    x_adv = attack.perturb(counting, x, y, None)
    assert torch.equal(x, x_before)
    assert_valid(x, x_adv, threat=norm, eps=None)
    # one backward per step, target and restart for every sample: FAB never stops early
    assert counting.grad_evals == steps * k * 2 * len(x)
    with torch.no_grad():
        missed = model(x_adv).argmax(1) == y
    assert torch.equal(x_adv[missed], x[missed]) and (~missed).any()
    # with a numeric eps, only the adversarials within it are kept
    eps = float(norms(x_adv - x, norm)[~missed].median())
    bounded = P.FABT(norm=norm, steps=steps, n_target_classes=k, restarts=2, seed=3,
                     restart_radius=radius).perturb(model, x, y, eps)
    assert_valid(x, bounded, threat=norm, eps=eps)
    assert torch.equal(bounded.ne(x).flatten(1).any(1),
                       (~missed) & (norms(x_adv - x, norm) <= eps))
    # misclassified inputs are returned unchanged at no cost
    wrong = (y + 1) % 10
    counting = Counting(model)
    assert torch.equal(P.FAB(norm=norm, steps=3).perturb(counting, x[:4], wrong[:4]), x[:4])
    assert counting.grad_evals == 0
    assert P.FAB(steps=2).perturb(model, x[:0], y[:0]).shape == x[:0].shape


def test_apgd_t_contract_and_cost(digits: Any) -> None:
    x, y, model = digits.x[:32], digits.y[:32], digits.model
    for norm, eps in (("linf", 0.05), ("l2", 0.6)):
        x_adv = P.APGDT(steps=5, n_target_classes=2, norm=norm, seed=0).perturb(model, x, y, eps)
        assert_valid(x, x_adv, threat=norm, eps=eps)
    assert torch.equal(P.APGDT(steps=5).perturb(model, x, y, 0.0), x)
    # never fooled at a tiny eps: every target runs on every sample
    counting = Counting(model)
    P.APGDT(steps=4, n_target_classes=3, seed=0).perturb(counting, x, y, 1e-4)
    assert counting.grad_evals == 3 * (4 + 1) * len(x)


def test_apgd_t_fools_what_apgd_ce_misses_under_saturated_softmax(digits: Any) -> None:
    """Logits scaled by 1e4: the softmax saturates, cross-entropy gradients vanish in float32
    and APGD-CE is stuck, while the scale-invariant targeted DLR loss still finds its way."""

    class Scaled(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 1e4 * self.model(x)

    model = Scaled(digits.model).eval()
    x, y, eps = digits.x[:64], digits.y[:64], 0.08
    ce = P.APGD(loss="ce", steps=20, seed=0).perturb(model, x, y, eps)
    t = P.APGDT(steps=20, n_target_classes=3, seed=0).perturb(model, x, y, eps)
    with torch.no_grad():
        ce_robust = model(ce).argmax(1) == y
        t_robust = model(t).argmax(1) == y
    print(f"saturated softmax: apgd-ce {ce_robust.float().mean():.3f}, "
          f"apgd-t {t_robust.float().mean():.3f}")
    assert (ce_robust & ~t_robust).sum() >= 10
    assert t_robust.float().mean() < ce_robust.float().mean() - 0.2


# --------------------------------------------------------------------------- EOT


class NoisyInput(nn.Module):
    """A randomised model: Gaussian noise on the input before the classifier."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))


def test_eot_averages_the_gradient(digits: Any) -> None:
    """eot_iter passes are averaged: exactly the mean of single passes under the same noise,
    a less noisy estimate of the expected gradient than one pass, at eot_iter times the
    cost."""
    model = NoisyInput(digits.model, sigma=0.3)
    x, y = digits.x[:32], digits.y[:32]
    attack = P.APGD(loss="ce", eot_iter=4)
    torch.manual_seed(5)
    logits, loss, grad = attack._logits_and_grad(model, x, y, None, ce_loss)
    torch.manual_seed(5)
    singles = [P.APGD(loss="ce")._logits_and_grad(model, x, y, None, ce_loss) for _ in range(4)]
    for got, parts in zip((logits, loss, grad), zip(*singles, strict=True), strict=True):
        assert torch.allclose(got, sum(parts) / 4, atol=1e-6)

    def estimate(eot: int) -> torch.Tensor:
        return P.APGD(loss="ce", eot_iter=eot)._logits_and_grad(model, x, y, None,
                                                                ce_loss)[2].flatten(1)

    # two independent estimates agree much better when each averages 16 passes
    agreement = {eot: float(torch.cosine_similarity(estimate(eot), estimate(eot)).mean())
                 for eot in (1, 16)}
    print("cosine between two independent gradient estimates:", agreement)
    assert agreement[16] > agreement[1] + 0.15

    counting = Counting(digits.model)  # deterministic, so nothing is fooled at eps 1e-4
    P.APGD(loss="ce", steps=5, eot_iter=3, seed=0).perturb(counting, x, y, 1e-4)
    assert counting.grad_evals == 3 * (5 + 1) * len(x)


def test_eot_lowers_robust_accuracy_of_a_randomised_model(digits: Any) -> None:
    """Against heavy input noise, APGD-T with EOT beats APGD-T without at the same steps;
    robust accuracy is that of the noise-averaged prediction (fixed noise draws)."""
    model = NoisyInput(digits.model, sigma=0.4)
    x, y, eps = digits.x[:64], digits.y[:64], 0.06
    gen = torch.Generator().manual_seed(0)
    draws = [0.4 * torch.randn(x.shape, generator=gen) for _ in range(16)]

    def smoothed_accuracy(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            logits = sum(digits.model(x_adv + noise) for noise in draws)
        return float((logits.argmax(1) == y).float().mean())

    robust = {}
    for eot in (1, 8):
        torch.manual_seed(0)
        x_adv = P.APGD(loss="ce", steps=10, eot_iter=eot, seed=0).perturb(model, x, y, eps)
        assert_valid(x, x_adv, threat="linf", eps=eps)
        robust[eot] = smoothed_accuracy(x_adv)
    print("noise-averaged robust accuracy by eot_iter:", robust)
    assert robust[8] < robust[1] - 0.05


# --------------------------------------------------------------------------- host syncs


@pytest.mark.parametrize("name", ["apgd-t", "fab", "fab-t"])
def test_no_host_read_per_step(digits: Any, name: str) -> None:
    """As many host reads with 30 steps as with 10 (see test_sync_free): none per step."""
    counts = []
    for steps in (10, 30):
        if name == "apgd-t":
            attack, eps = P.APGDT(steps=steps, n_target_classes=2, seed=0), 8 / 255
            attack.compact_every = NEVER
        elif name == "fab":
            attack, eps = P.FAB(steps=steps), None
        else:
            attack, eps = P.FABT(steps=steps, n_target_classes=2), None
        with HostReads() as reads:
            attack.perturb(digits.model, digits.x[:16], digits.y[:16], eps)
        counts.append(reads.count)
    assert counts[0] == counts[1], counts
