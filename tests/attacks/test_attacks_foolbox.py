"""The ``foolbox:*`` adapter: every class foolbox exports runs, or fails saying why."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from attack_helpers import Counting, accuracy, assert_valid, small_cnn

import robench

fb = pytest.importorskip("foolbox")
# foolbox's SpatialAttack calls torch.meshgrid the old way; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")
import robench_foolbox.plugin as fb_plugin  # noqa: E402

ALL_CLASSES = sorted(fb_plugin.attack_classes(fb))
EPS = {"linf": 0.1, "l2": 1.0, "l1": 10.0, "l0": 20.0}

#: smaller budgets for the classes whose foolbox defaults take minutes on a CPU
FAST: dict[str, dict[str, Any]] = {
    "BoundaryAttack": {"steps": 50},
    "HopSkipJumpAttack": {"steps": 2, "initial_gradient_eval_steps": 10,
                          "max_gradient_eval_steps": 20},
    "EADAttack": {"steps": 50, "binary_search_steps": 3},
    "L2CarliniWagnerAttack": {"steps": 50, "binary_search_steps": 3},
    "GaussianBlurAttack": {"steps": 100},
    "GenAttack": {"steps": 20},
    "L0BrendelBethgeAttack": {"steps": 20},
    "L1BrendelBethgeAttack": {"steps": 20},
    "L2BrendelBethgeAttack": {"steps": 20},
    "LinfinityBrendelBethgeAttack": {"steps": 20},
}


def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


#: classes that refuse to run on a plain classifier, and the reason their error must give
REFUSED: dict[str, str] = {
    "Attack": "abstract base class",
    "BinarizationRefinementAttack": "starting_points",
}
if not _has_numba():
    for _name in ("L0BrendelBethgeAttack", "L1BrendelBethgeAttack", "L2BrendelBethgeAttack",
                  "LinfinityBrendelBethgeAttack"):
        REFUSED[_name] = "numba"
#: targeted-only classes: untargeted they must say so, targeted they must run
TARGETED_ONLY = {"GenAttack"}


@pytest.fixture(scope="module")
def fhost() -> robench.PluginHost:
    return robench.PluginHost.create(entry_points=False, plugins=[fb_plugin])


def test_lists_the_classes_foolbox_exports() -> None:
    assert {"LinfPGD", "FGSM", "L2CarliniWagnerAttack", "L2DeepFoolAttack", "BoundaryAttack",
            "DatasetAttack", "SpatialAttack"} <= set(ALL_CLASSES)
    assert len(ALL_CLASSES) >= 60


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_CLASSES)
def test_every_foolbox_class_runs_or_says_why(fhost: robench.PluginHost, digits: Any,
                                              name: str) -> None:
    x, y, model = digits.x[:6], digits.y[:6], digits.model
    params = FAST.get(name, {})
    if name in REFUSED:
        with pytest.raises(robench.UsageError) as info:
            fhost.build("attack", f"foolbox:{name}", **params).perturb(model, x, y, 0.1)
        assert f"foolbox:{name}" in str(info.value)
        assert REFUSED[name] in str(info.value)
        return
    attack = fhost.build("attack", f"foolbox:{name}", **params)
    assert attack.threat in ("linf", "l2", "l1", "l0", "none")
    assert attack.kind in ("bounded", "minimal")
    is_fixed = issubclass(attack.cls, fb.attacks.base.FixedEpsilonAttack)
    assert (attack.kind == "bounded") == is_fixed
    eps = EPS[attack.threat] if attack.kind == "bounded" else None
    target = None
    if name in TARGETED_ONLY:
        with pytest.raises(robench.UsageError, match="does not support untargeted"):
            attack.perturb(model, x, y, eps)
        target = (y + 1) % 10
    x_adv = attack.perturb(model, x, y, eps, target=target)
    assert_valid(x, x_adv, threat=attack.threat, eps=eps)
    if attack.kind == "minimal":  # unchanged where nothing was found
        missed = (model(x_adv).argmax(1) == y) if target is None else (
            model(x_adv).argmax(1) != target)
        assert torch.equal(x_adv[missed], x[missed])


def test_threat_and_kind_follow_the_class(fhost: robench.PluginHost) -> None:
    cases = {
        "LinfPGD": ("linf", "bounded"), "L2PGD": ("l2", "bounded"), "L1PGD": ("l1", "bounded"),
        "FGSM": ("linf", "bounded"), "L2CarliniWagnerAttack": ("l2", "minimal"),
        "L0FMNAttack": ("l0", "minimal"), "EADAttack": ("l1", "minimal"),
        "LinfDeepFoolAttack": ("linf", "minimal"), "SpatialAttack": ("none", "minimal"),
        "GaussianBlurAttack": ("l2", "minimal"), "PointwiseAttack": ("l0", "minimal"),
    }
    for name, (threat, kind) in cases.items():
        attack = fhost.build("attack", f"foolbox:{name}")
        assert (attack.threat, attack.kind) == (threat, kind), name
    blur = fhost.build("attack", "foolbox:GaussianBlurAttack", distance="linf")
    assert blur.threat == "linf" and blur.params["distance"] == "linf"
    assert fhost.build("attack", "foolbox:LinfPGD", steps=7).params == {
        "class": "LinfProjectedGradientDescentAttack", "steps": 7}


def test_unknown_names_and_parameters(fhost: robench.PluginHost) -> None:
    with pytest.raises(robench.UsageError, match="foolbox:LinfPGD") as info:
        fhost.build("attack", "foolbox:LinfPDG")
    assert isinstance(info.value, robench.UnknownNameError)
    assert "foolbox:LinfPGD" in info.value.close_matches
    with pytest.raises(robench.UsageError, match="Accepted parameters: .*steps"):
        fhost.build("attack", "foolbox:LinfPGD", stepz=3)
    with pytest.raises(robench.UsageError, match="distance must be one of"):
        fhost.build("attack", "foolbox:GaussianBlurAttack", distance="l3")


def test_missing_foolbox_says_how_to_install(fhost: robench.PluginHost,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "foolbox", None)  # makes `import foolbox` fail
    with pytest.raises(robench.UsageError, match=r"pip install robench\[foolbox\]"):
        fhost.build("attack", "foolbox:LinfPGD")


def test_matches_native_pgd_and_targets(fhost: robench.PluginHost, host: robench.PluginHost,
                                        digits: Any) -> None:
    x, y, model = digits.x, digits.y, digits.model
    theirs = fhost.build("attack", "foolbox:LinfPGD", steps=10, abs_stepsize=0.02)
    ours = host.build("attack", "pgd", steps=10)
    x_fb = theirs.perturb(model, x, y, 0.08)
    assert_valid(x, x_fb, threat="linf", eps=0.08)
    assert abs(accuracy(model, x_fb, y) - accuracy(model, ours.perturb(model, x, y, 0.08), y)) \
        <= 0.05
    target = (y + 1) % 10
    x_t = theirs.perturb(model, x[:64], y[:64], 0.3, target=target[:64])
    hit = float((model(x_t).argmax(1) == target[:64]).float().mean())
    assert hit >= 0.9


def test_leaves_no_grad_on_trainable_parameters(fhost: robench.PluginHost,
                                                digits: Any) -> None:
    """foolbox calls backward(); the adapter freezes parameters so no .grad is written."""
    model = small_cnn().eval()
    model.load_state_dict(digits.model.state_dict())
    assert all(p.requires_grad for p in model.parameters())
    counting = Counting(model)
    fhost.build("attack", "foolbox:LinfPGD", steps=5).perturb(counting, digits.x[:16],
                                                              digits.y[:16], 0.05)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # restored as it was
    assert counting.grad_evals == 5 * 16  # the harness's hook sees foolbox's gradients


def test_untargeted_only_class_refuses_target(fhost: robench.PluginHost, digits: Any) -> None:
    attack = fhost.build("attack", "foolbox:FGSM")
    with pytest.raises(robench.UsageError, match="does not support targeted"):
        attack.perturb(digits.model, digits.x[:4], digits.y[:4], 0.1,
                       target=(digits.y[:4] + 1) % 10)


def test_dataset_attack_uses_the_batch_as_its_pool(fhost: robench.PluginHost,
                                                   digits: Any) -> None:
    x, y, model = digits.x[:32], digits.y[:32], digits.model
    x_adv = fhost.build("attack", "foolbox:DatasetAttack").perturb(model, x, y, None)
    fooled = model(x_adv).argmax(1) != y
    assert fooled.all()
    # each adversarial is another image of the batch
    matches = (x_adv[:, None] == x[None]).flatten(2).all(2)
    assert matches.any(1).all()


def test_black_box_comes_from_each_foolbox_class_not_from_the_namespace(tmp_path):
    """HopSkipJump and Boundary use decisions only; LinfPGD uses gradients: the planned
    attack says so, so the black-box-stronger flag compares the right rows."""
    from robench.config import build_config
    from robench.context import WorkerContext
    from robench.validation import validate

    names = ["foolbox:HopSkipJumpAttack", "foolbox:BoundaryAttack", "foolbox:LinfPGD",
             "foolbox:LinfAdditiveUniformNoiseAttack"]
    config = build_config({"target": "none", "adaptors": ["none"], "out": str(tmp_path),
                           "attacks": names})
    valid = validate(config, WorkerContext.create(robench.PluginHost.create()))
    assert {n: valid.attacks[n].black_box for n in names} == {
        "foolbox:HopSkipJumpAttack": True, "foolbox:BoundaryAttack": True,
        "foolbox:LinfPGD": False, "foolbox:LinfAdditiveUniformNoiseAttack": True}
