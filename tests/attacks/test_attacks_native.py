"""The native attacks against a trained digits CNN: correctness, strength and cost.

Strength is checked against reference implementations at equal budgets (foolbox,
torchattacks), ordering between attacks (noise < FGSM < PGD <= APGD), and the contract the
harness relies on (inside [0, 1] and the eps ball, inputs untouched, no parameter grads,
early exit).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from attack_helpers import Counting, accuracy, assert_valid, hit_rate, norms, small_cnn
from torch import nn

import robench

LINF_EPS = (0.05, 0.08)
NATIVE = ["fgsm", "pgd", "pgd-l2", "pgd-l1", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t",
          "deepfool", "cw-l2", "autoattack", "autoattack-plus", "autoattack-rand",
          "autoattack-fast",
          "square", "noise", "gaussian-noise", "gaussian-blur", "contrast", "brightness",
          "jpeg"]
#: budgets small enough for a contract check on 32 images
FAST: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 5}, "pgd-l2": {"steps": 5}, "pgd-l1": {"steps": 5},
    "apgd-ce": {"steps": 5}, "apgd-dlr": {"steps": 5}, "deepfool": {"steps": 10},
    "cw-l2": {"steps": 10, "binary_search_steps": 2}, "square": {"queries": 50},
    "noise": {"draws": 3},
}
EPS_BY_THREAT: dict[str, float] = {"linf": 0.05, "l2": 0.5, "l1": 4.0, "corruption": 3}


def build(host: robench.PluginHost, name: str, **params: Any) -> Any:
    return host.build("attack", name, **params)


# --------------------------------------------------------------------------- registry


def test_registers_every_native_attack(host: robench.PluginHost) -> None:
    specs = host.specs("attack")
    assert sorted(specs) == sorted(NATIVE)
    assert specs["pgd"].threat == "linf" and specs["pgd"].kind == "bounded"
    assert specs["pgd-l2"].threat == "l2" and specs["pgd-l1"].threat == "l1"
    assert specs["deepfool"].kind == "minimal" and specs["cw-l2"].kind == "minimal"
    assert specs["square"].black_box and not specs["pgd"].black_box
    assert specs["jpeg"].threat == "corruption"
    for name in ("fgsm", "pgd", "pgd-l2", "apgd-ce", "cw-l2"):
        assert specs[name].targeted, name
    for name in ("deepfool", "noise"):
        assert not specs[name].targeted, name


def test_built_objects_report_threat_kind_and_params(host: robench.PluginHost) -> None:
    for name, spec in host.specs("attack").items():
        attack = build(host, name)
        assert attack.threat == spec.threat and attack.kind == spec.kind, name
        assert isinstance(attack.params, dict), name
    assert build(host, "pgd", steps=7).params["steps"] == 7
    assert build(host, "apgd-ce", norm="l2").threat == "l2"


def test_bad_parameters_are_usage_errors(host: robench.PluginHost) -> None:
    with pytest.raises(robench.UsageError, match="steps"):
        build(host, "pgd", stepz=3)
    with pytest.raises(robench.UsageError, match="steps must be an integer"):
        build(host, "pgd", steps=0)
    with pytest.raises(robench.UsageError, match="loss"):
        build(host, "pgd", loss="hinge")
    with pytest.raises(robench.UsageError, match="norm"):
        build(host, "apgd-ce", norm="l0")


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", NATIVE)
def test_contract_box_ball_inputs_and_parameters(host: robench.PluginHost, digits: Any,
                                                  name: str) -> None:
    """Every attack returns valid points and leaves inputs, model mode and grads alone."""
    spec = host.specs("attack")[name]
    attack = build(host, name, **FAST.get(name, {}))
    x, y = digits.x[:32].clone(), digits.y[:32].clone()
    x_before, y_before = x.clone(), y.clone()
    eps = None if spec.kind == "minimal" else EPS_BY_THREAT[spec.threat]
    x_adv = attack.perturb(digits.model, x, y, eps)
    assert_valid(x, x_adv, threat=spec.threat, eps=eps)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert not digits.model.training
    assert all(p.grad is None and not p.requires_grad for p in digits.model.parameters())
    if spec.kind == "minimal":  # where nothing was found, the image comes back unchanged
        missed = digits.model(x_adv).argmax(1) == y
        assert torch.equal(x_adv[missed], x[missed])
    if spec.targeted:
        target = (y + 3) % 10
        x_adv = attack.perturb(digits.model, x, y, eps, target=target)
        assert_valid(x, x_adv, threat=spec.threat, eps=eps)
    if spec.kind == "bounded":
        zero = attack.perturb(digits.model, x, y, 0)
        assert torch.equal(zero, x)
    single = attack.perturb(digits.model, x[:1], y[:1], eps)  # a batch of one
    assert_valid(x[:1], single, threat=spec.threat, eps=eps)
    empty = attack.perturb(digits.model, x[:0], y[:0], eps)  # and of none
    assert empty.shape == x[:0].shape


@pytest.mark.parametrize("name", ["deepfool", "noise", "gaussian-blur"])
def test_untargeted_attacks_refuse_a_target(host: robench.PluginHost, digits: Any,
                                            name: str) -> None:
    eps = None if name == "deepfool" else (0.05 if name == "noise" else 1)
    with pytest.raises(robench.UsageError, match="no targeted variant"):
        build(host, name).perturb(digits.model, digits.x[:4], digits.y[:4], eps,
                                  target=digits.y[:4])


def test_bounded_attack_needs_eps(host: robench.PluginHost, digits: Any) -> None:
    with pytest.raises(robench.UsageError, match="numeric eps"):
        build(host, "pgd").perturb(digits.model, digits.x[:4], digits.y[:4], None)


def test_works_under_no_grad_and_is_reproducible_with_seed(host: robench.PluginHost,
                                                          digits: Any) -> None:
    x, y = digits.x[:32], digits.y[:32]
    with torch.no_grad():
        first = build(host, "pgd", steps=5, seed=7).perturb(digits.model, x, y, 0.05)
    second = build(host, "pgd", steps=5, seed=7).perturb(digits.model, x, y, 0.05)
    assert torch.equal(first, second)
    assert accuracy(digits.model, first, y) < accuracy(digits.model, x, y)


def test_parameters_left_trainable_get_no_grad(host: robench.PluginHost, digits: Any) -> None:
    """Input gradients only: even an unfrozen model gets no ``.grad`` from an attack."""
    model = small_cnn().eval()
    model.load_state_dict(digits.model.state_dict())
    for name in ("fgsm", "pgd", "apgd-ce", "deepfool", "cw-l2"):
        eps = None if name in ("deepfool", "cw-l2") else 0.05
        build(host, name, **FAST.get(name, {})).perturb(model, digits.x[:8], digits.y[:8], eps)
    assert all(p.grad is None for p in model.parameters())


def test_dlr_needs_three_classes(host: robench.PluginHost, digits: Any) -> None:
    two_classes = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)).eval()
    x = digits.x[:8]
    y = two_classes(x).argmax(1).detach()
    with pytest.raises(robench.UsageError, match="at least 3 classes"):
        build(host, "apgd-dlr", steps=3).perturb(two_classes, x, y, 0.05)


# --------------------------------------------------------------------------- references


def test_fgsm_equals_foolbox(host: robench.PluginHost, digits: Any) -> None:
    fb = pytest.importorskip("foolbox")
    fmodel = fb.PyTorchModel(digits.model, bounds=(0, 1), device="cpu")
    x, y = digits.x, digits.y
    for eps in LINF_EPS:
        ours = build(host, "fgsm").perturb(digits.model, x, y, eps)
        _, theirs, _ = fb.attacks.FGSM()(fmodel, x, y, epsilons=eps)
        assert torch.allclose(ours, theirs, atol=1e-6), eps
    # targeted FGSM is foolbox's LinfPGD with one step of size eps and no random start
    target = (y + 1) % 10
    ours = build(host, "fgsm").perturb(digits.model, x, y, 0.08, target=target)
    attack = fb.attacks.LinfPGD(steps=1, abs_stepsize=0.08, random_start=False)
    _, theirs, _ = attack(fmodel, x, fb.criteria.TargetedMisclassification(target),
                          epsilons=0.08)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("eps", LINF_EPS)
def test_pgd_at_least_as_strong_as_foolbox_and_torchattacks(host: robench.PluginHost,
                                                            digits: Any, eps: float) -> None:
    """Equal steps (10), eps and step size (2.5 * eps / steps).

    Without random start the three follow the same trajectory, so robench (which keeps the
    first adversarial iterate) can only be stronger; with random start the robust accuracy
    is averaged over three seeds so that two samples' luck does not decide.
    """
    fb = pytest.importorskip("foolbox")
    torchattacks = pytest.importorskip("torchattacks")
    x, y, model = digits.x, digits.y, digits.model
    steps, step = 10, 2.5 * eps / 10
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
    for random_start, seeds in ((False, (0,)), (True, (0, 1, 2))):
        ours, theirs_fb, theirs_ta = [], [], []
        for seed in seeds:
            torch.manual_seed(seed)
            pgd = build(host, "pgd", steps=steps, random_start=random_start)
            ours.append(accuracy(model, pgd.perturb(model, x, y, eps), y))
            attack = fb.attacks.LinfPGD(steps=steps, abs_stepsize=step,
                                        random_start=random_start)
            _, x_fb, _ = attack(fmodel, x, y, epsilons=eps)
            assert_valid(x, x_fb, threat="linf", eps=eps)
            theirs_fb.append(accuracy(model, x_fb, y))
            x_ta = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps,
                                    random_start=random_start)(x, y)
            theirs_ta.append(accuracy(model, x_ta, y))
        mean = sum(ours) / len(ours)
        assert mean <= sum(theirs_fb) / len(seeds) + 0.01, (random_start, ours, theirs_fb)
        assert mean <= sum(theirs_ta) / len(seeds) + 0.01, (random_start, ours, theirs_ta)


@pytest.mark.parametrize("eps", LINF_EPS)
def test_apgd_ce_at_least_as_strong_as_pgd(host: robench.PluginHost, digits: Any,
                                           eps: float) -> None:
    """Equal budget: PGD-20 and APGD-19 both take 20 gradient evaluations per sample."""
    x, y, model = digits.x, digits.y, digits.model
    pgd = accuracy(model, build(host, "pgd", steps=20).perturb(model, x, y, eps), y)
    apgd = accuracy(model, build(host, "apgd-ce", steps=19).perturb(model, x, y, eps), y)
    assert apgd <= pgd + 0.005


def test_strength_order_noise_fgsm_pgd(host: robench.PluginHost, digits: Any) -> None:
    x, y, model = digits.x, digits.y, digits.model
    eps = 0.08
    clean = accuracy(model, x, y)
    noise = accuracy(model, build(host, "noise").perturb(model, x, y, eps), y)
    fgsm = accuracy(model, build(host, "fgsm").perturb(model, x, y, eps), y)
    pgd = accuracy(model, build(host, "pgd").perturb(model, x, y, eps), y)
    dlr = accuracy(model, build(host, "apgd-dlr", steps=20).perturb(model, x, y, eps), y)
    assert clean == 1.0
    assert pgd <= fgsm < noise - 0.2
    assert dlr <= fgsm


def test_pgd_variants_in_l2_and_l1(host: robench.PluginHost, digits: Any) -> None:
    x, y, model = digits.x, digits.y, digits.model
    fb = pytest.importorskip("foolbox")
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
    l2 = accuracy(model, build(host, "pgd-l2", steps=10).perturb(model, x, y, 1.0), y)
    _, x_fb, _ = fb.attacks.L2PGD(steps=10, abs_stepsize=0.25)(fmodel, x, y, epsilons=1.0)
    assert l2 <= accuracy(model, x_fb, y) + 0.01
    assert l2 < 0.75
    l1 = accuracy(model, build(host, "pgd-l1", steps=10).perturb(model, x, y, 8.0), y)
    _, x_fb, _ = fb.attacks.L1PGD(steps=10, abs_stepsize=2.0)(fmodel, x, y, epsilons=8.0)
    assert l1 <= accuracy(model, x_fb, y) + 0.01
    assert l1 < 0.8


def test_square_is_black_box_and_beats_noise(host: robench.PluginHost, digits: Any) -> None:
    x, y = digits.x[:64], digits.y[:64]
    counting = Counting(digits.model)
    x_adv = build(host, "square", queries=300).perturb(counting, x, y, 0.1)
    assert counting.grad_evals == 0
    assert counting.queries <= 300 * len(x)
    square = accuracy(digits.model, x_adv, y)
    noise = accuracy(digits.model, build(host, "noise").perturb(digits.model, x, y, 0.1), y)
    assert square < noise - 0.2


# --------------------------------------------------------------------------- targeted


@pytest.mark.slow
def test_targeted_success_rates(host: robench.PluginHost, digits: Any,
                                record_property: Any) -> None:
    """Targeted success at a large budget; PGD and APGD must nearly always hit the target."""
    x, y, model = digits.x[:64], digits.y[:64], digits.model
    target = (y + 1) % 10
    runs = {
        "fgsm": (build(host, "fgsm"), 0.3),
        "pgd": (build(host, "pgd"), 0.3),
        "apgd-ce": (build(host, "apgd-ce", steps=20), 0.3),
        "pgd-l2": (build(host, "pgd-l2"), 4.0),
        "cw-l2": (build(host, "cw-l2"), None),
        "square": (build(host, "square", queries=300), 0.3),
    }
    rates = {}
    for name, (attack, eps) in runs.items():
        n = 32 if name == "cw-l2" else len(x)  # CW's 6 x 100 steps: fewer samples
        x_adv = attack.perturb(model, x[:n], y[:n], eps, target=target[:n])
        assert_valid(x[:n], x_adv, threat=attack.threat, eps=eps)
        rates[name] = hit_rate(model, x_adv, target[:n])
    record_property("targeted_success", rates)
    print("targeted success rates:", rates)
    assert rates["pgd"] >= 0.95 and rates["apgd-ce"] >= 0.95
    assert rates["pgd-l2"] >= 0.9 and rates["cw-l2"] >= 0.9
    assert rates["fgsm"] < rates["pgd"]
    assert rates["square"] > 0.3


# --------------------------------------------------------------------------- minimal norm


@pytest.mark.slow
def test_minimal_norm_curves(host: robench.PluginHost, digits: Any) -> None:
    """DeepFool and CW-L2: monotone curves, and smaller norms than PGD-L2 at equal success."""
    x, y, model = digits.x[:80], digits.y[:80], digits.model
    eps_grid = torch.linspace(0.0, 3.0, 31)
    bounded_eps = 1.0
    x_pgd = build(host, "pgd-l2").perturb(model, x, y, bounded_eps)
    pgd_fooled = model(x_pgd).argmax(1) != y
    k = int(pgd_fooled.sum())
    assert k >= 10
    pgd_norms = norms(x_pgd - x, "l2")[pgd_fooled]
    medians = {}
    for name in ("deepfool", "cw-l2"):
        x_adv = build(host, name).perturb(model, x, y, None)
        assert_valid(x, x_adv, threat="l2", eps=None)
        fooled = model(x_adv).argmax(1) != y
        sample_norms = torch.where(fooled, norms(x_adv - x, "l2"), torch.tensor(float("inf")))
        curve = [(sample_norms > e).float().mean().item() for e in eps_grid]
        assert all(a >= b for a, b in zip(curve, curve[1:], strict=False)), name
        assert curve[0] == 1.0 and curve[-1] <= 0.05, (name, curve[-1])
        # nearly as many fooled within the bounded attack's eps (DeepFool, a one-shot
        # linearisation, trails PGD a little there), and at equal success (the k smallest)
        # much smaller perturbations than the bounded attack's
        assert (sample_norms <= bounded_eps).sum() >= (0.8 if name == "deepfool" else 0.9) * k
        assert sample_norms.sort().values[:k].mean() < 0.8 * pgd_norms.mean(), name
        medians[name] = float(sample_norms.median())
    # CW optimises the norm, DeepFool only linearises: CW's median must not be larger
    assert medians["cw-l2"] <= medians["deepfool"] * 1.02, medians


def test_deepfool_equals_foolbox(host: robench.PluginHost, digits: Any) -> None:
    fb = pytest.importorskip("foolbox")
    x, y, model = digits.x[:64], digits.y[:64], digits.model
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
    theirs, _, _ = fb.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02)(fmodel, x, y,
                                                                         epsilons=None)
    ours = build(host, "deepfool").perturb(model, x, y, None)
    fooled = model(theirs).argmax(1) != y
    assert torch.equal(fooled, model(ours).argmax(1) != y)
    assert torch.allclose(ours[fooled], theirs[fooled], atol=1e-5)


def test_minimal_attack_with_eps_keeps_only_adversarials_within_it(host: robench.PluginHost,
                                                                   digits: Any) -> None:
    x, y = digits.x[:32], digits.y[:32]
    x_adv = build(host, "deepfool").perturb(digits.model, x, y, 0.5)
    assert_valid(x, x_adv, threat="l2", eps=0.5)


# --------------------------------------------------------------------------- cost


def test_early_exit_follows_remaining_samples(host: robench.PluginHost, digits: Any) -> None:
    x, y = digits.x, digits.y
    n, steps = len(x), 20
    counting = Counting(digits.model)
    build(host, "pgd", steps=steps).perturb(counting, x, y, 0.3)
    # one forward+backward per active sample per step, no extra plain forwards
    assert counting.queries == counting.grad_evals
    assert counting.grad_evals < 0.3 * steps * n  # nearly everything falls in a few steps
    counting = Counting(digits.model)
    build(host, "pgd", steps=steps).perturb(counting, x, y, 0.02)
    assert 0.5 * steps * n < counting.grad_evals <= steps * n
    counting = Counting(digits.model)
    build(host, "apgd-ce", steps=steps).perturb(counting, x, y, 0.02)
    assert counting.grad_evals <= (steps + 1) * n
    counting = Counting(digits.model)
    build(host, "noise", draws=1).perturb(counting, x, y, 0.05)
    assert counting.queries == 0  # a single draw needs no model call; the harness checks
    counting = Counting(digits.model)
    build(host, "fgsm").perturb(counting, x, y, 0.05)
    assert counting.grad_evals == n and counting.queries == n


# --------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", ["gaussian-noise", "gaussian-blur", "contrast", "brightness",
                                  "jpeg"])
def test_corruptions_grow_with_severity(host: robench.PluginHost, digits: Any,
                                        name: str) -> None:
    x, y = digits.x[:64], digits.y[:64]
    attack = build(host, name)
    assert attack.threat == "corruption"
    distances = []
    for severity in (1, 2, 3, 4, 5):
        x_c = attack.perturb(digits.model, x, y, severity)
        assert_valid(x, x_c, threat="corruption", eps=severity)
        distances.append(float(norms(x_c - x, "l2").mean()))
    assert all(a <= b + 1e-4 for a, b in zip(distances, distances[1:], strict=False)), distances
    assert distances[0] > 0
    with pytest.raises(robench.UsageError, match="severity"):
        attack.perturb(digits.model, x, y, 2.5)
    with pytest.raises(robench.UsageError, match="severity"):
        attack.perturb(digits.model, x, y, 6)
