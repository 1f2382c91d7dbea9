"""The grid's ``lr_schedule = "auto"``: adversarial training gets a constant learning rate,
every other trained model DANN's annealing, and the schedule a model got is in its key."""

from __future__ import annotations

import pytest

import robench
from robench.config import build_config, lr_schedule_of
from robench.planning import model_plans, train_key

STAGES = {"none": "none", "pgd-at": "training", "jpeg": "inference"}


def _plans(**changes):
    config = robench.GridConfig(backbones=["digits-cnn"], adaptors=["none", "dann"],
                                defenses=["none", "pgd-at", "jpeg"], **changes)
    return config, {(p.adaptor, p.defense): p for p in model_plans(config, STAGES)}


def test_auto_is_constant_for_adversarial_training_and_dann_for_the_rest() -> None:
    config, plans = _plans()
    assert config.lr_schedule == "auto"
    got = {k: lr_schedule_of(config, p.defense_stage) for k, p in plans.items()
           if not p.complete}
    # an inference defense wraps the undefended model: the same weights, the same schedule
    assert got == {("none", "none"): "dann", ("dann", "none"): "dann",
                   ("none", "pgd-at"): "constant", ("dann", "pgd-at"): "constant",
                   ("none", "jpeg"): "dann", ("dann", "jpeg"): "dann"}


@pytest.mark.parametrize("explicit", ["dann", "constant"])
def test_an_explicit_schedule_applies_to_every_model(explicit: str) -> None:
    config, plans = _plans(lr_schedule=explicit)
    assert {lr_schedule_of(config, p.defense_stage) for p in plans.values()} == {explicit}


def test_the_key_holds_the_schedule_used_not_the_word_auto() -> None:
    """``auto`` and the schedule it resolves to are the same training (one key, so a store
    resumes); a different schedule is a different model."""
    auto, plans = _plans()
    dann, dann_plans = _plans(lr_schedule="dann")
    constant, constant_plans = _plans(lr_schedule="constant")
    plain, robust = ("none", "none"), ("none", "pgd-at")
    assert train_key(auto, plans[plain]) == train_key(dann, dann_plans[plain])
    assert train_key(auto, plans[robust]) == train_key(constant, constant_plans[robust])
    assert train_key(auto, plans[robust]) != train_key(dann, dann_plans[robust])
    assert train_key(auto, plans[plain]) != train_key(constant, constant_plans[plain])


def test_a_schedule_that_does_not_exist_is_refused() -> None:
    with pytest.raises(robench.UsageError, match="lr_schedule"):
        build_config({"lr_schedule": "cosine"})
