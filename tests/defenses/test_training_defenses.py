"""Adversarial training (pgd-at, trades, fgsm-rs) on real MNIST digits: each raises PGD robust
accuracy above standard training at the same eps; it composes with DANN; the inner
maximisation runs robench's PGD for all its steps and leaves parameters and modes alone."""

from __future__ import annotations

import math

import pytest
import torch
from defense_helpers import EPS, new_model, robust_accuracy, train
from torch.nn import functional as F

import robench
from robench.defenses import AttackObjective, TrainingDefense
from robench.training import TrainSettings, train_model


@pytest.fixture(scope="module")
def standard_robust(host, mnist, standard_model) -> tuple[float, float]:
    return robust_accuracy(host, standard_model, mnist, EPS)


@pytest.mark.parametrize(("name", "params", "margin"), [
    ("pgd-at", {"steps": 5}, 0.12),
    ("trades", {"steps": 5}, 0.06),
    ("fgsm-rs", {}, 0.08),
])
def test_adversarial_training_beats_standard_training(
        host, mnist, build_attack, standard_robust, name, params, margin):
    defense = host.build("defense", name, build_attack=build_attack, eps=EPS, **params)
    assert isinstance(defense, TrainingDefense)
    model, report = train(host, mnist, defense)
    clean, robust = robust_accuracy(host, model, mnist, EPS)
    std_clean, std_robust = standard_robust
    print(f"{name}: clean {clean:.3f} robust {robust:.3f} (standard: clean {std_clean:.3f} "
          f"robust {std_robust:.3f}); train {report.seconds:.1f} s, {report.metrics}")
    assert robust >= std_robust + margin
    assert clean > 0.6  # still a digit classifier
    assert report.metrics["final_eps"] == pytest.approx(EPS)
    assert 0.0 < report.metrics["adv_train_acc"] < 1.0
    assert report.train_acc == pytest.approx(report.metrics["adv_train_acc"])
    if name == "trades":  # its loss sees the clean logits too
        assert report.metrics["clean_train_acc"] > report.metrics["adv_train_acc"]


def test_the_same_seed_trains_the_same_weights(host, mnist, build_attack):
    data = {"x": mnist["x"][:64], "y": mnist["y"][:64]}
    weights = []
    for _ in range(2):
        defense = host.build("defense", "pgd-at", build_attack=build_attack, eps=EPS, steps=2)
        model, _ = train(host, data, defense, epochs=1)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_pgd_at_with_dann_perturbs_only_the_labelled_source(host, mnist, build_attack):
    seen: list[torch.Tensor] = []
    defense = host.build("defense", "pgd-at", build_attack=build_attack, eps=EPS, steps=3)
    original = defense.inputs

    def spy(model, x, y, progress):
        seen.append(x.detach().clone())
        return original(model, x, y, progress)

    defense.inputs = spy
    source = {"x": mnist["x"][:256], "y": mnist["y"][:256]}
    target = 1.0 - mnist["x_pool"][:256]  # another domain: inverted digits, no labels
    model = new_model(host)
    adaptor = host.build("adaptor", "dann", num_features=model.backbone.num_features)
    report = train_model(model, (source["x"], source["y"]),
                         settings=TrainSettings(epochs=2, batch_size=32), adaptor=adaptor,
                         target_images=target, defense=defense)
    assert {"domain_classifier_acc", "adv_train_acc", "final_eps"} <= set(report.metrics)
    assert math.isfinite(report.final_loss)
    batches = torch.cat(seen)
    assert len(batches) == report.steps * 32
    # every image the defense perturbed is a labelled source image, never a target one
    source_sums = set(source["x"].flatten(1).sum(1).round(decimals=3).tolist())
    assert set(batches.flatten(1).sum(1).round(decimals=3).tolist()) <= source_sums
    clean, _ = robust_accuracy(host, model.eval(), mnist, EPS, steps=1)
    assert clean > 0.5


def test_the_inner_maximisation_runs_every_step_and_touches_nothing(host, mnist,
                                                                    build_attack):
    model = new_model(host)
    model.train()
    model.backbone.stage1.eval()  # a module kept in eval mode must stay so
    x, y = mnist["x"][:16], mnist["y"][:16]
    calls: list[int] = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            calls.append(len(images))
            return self.inner(images)

    defense = host.build("defense", "pgd-at", build_attack=build_attack, eps=EPS, steps=7)
    defense.begin(epochs=1, steps_per_epoch=1, seed=0)
    x_adv = defense.inputs(Counting(model), x, y, 0.5)
    # an untrained model misclassifies most samples at once; PGD's early exit would stop
    # there, adversarial training needs all 7 steps on all 16 samples
    assert calls == [16] * 7
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model.head.training and not model.backbone.stage1.training
    with torch.no_grad():
        assert F.cross_entropy(model.eval()(x_adv), y) > F.cross_entropy(model(x), y)


def test_attack_objective_orders_iterates_as_the_loss_does():
    losses = torch.tensor([0.0, 0.5, 3.0, 40.0])
    objective = AttackObjective(torch.nn.Identity(), lambda logits: logits[:, 0], 4)
    logits = objective(torch.stack([losses, torch.zeros(4)], dim=1))
    ce = F.cross_entropy(logits, objective.labels(logits), reduction="none")
    assert (ce.diff() > 0).all() and (logits.argmax(1) == 0).all()
    with pytest.raises(RuntimeError, match="batch of 4"):
        objective(torch.zeros(3, 2))


def test_eps_warm_up_and_bad_parameters(host, build_attack):
    defense = host.build("defense", "pgd-at", build_attack=build_attack, eps=0.3,
                         warmup_epochs=2)
    defense.begin(epochs=4, steps_per_epoch=10, seed=0)
    assert defense.current_eps(0.0) == 0.0
    assert defense.current_eps(0.25) == pytest.approx(0.15)  # epoch 1 of a 2-epoch ramp
    assert defense.current_eps(0.9) == pytest.approx(0.3)
    with pytest.raises(robench.UsageError, match="warmup_epochs"):
        defense.begin(epochs=1, steps_per_epoch=10, seed=0)
    with pytest.raises(robench.UsageError, match="threat"):
        host.build("defense", "pgd-at", build_attack=build_attack, threat="l7")
    with pytest.raises(robench.UsageError, match="eps"):
        host.build("defense", "trades", build_attack=build_attack, eps=-1)
    with pytest.raises(robench.UsageError, match="build_attack"):
        host.build("defense", "fgsm-rs", build_attack=None)
    with pytest.raises(robench.UsageError, match="no parameter"):
        host.build("defense", "pgd-at", build_attack=build_attack, epsilon=0.3)
    l2 = host.build("defense", "pgd-at", build_attack=build_attack, eps=1.5, threat="l2")
    assert l2.attack.threat == "l2"
