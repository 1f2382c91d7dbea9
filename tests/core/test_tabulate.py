"""The results table from a store written by hand: no model is trained here.

What a user relies on: the worst case combines every untargeted attack per sample; a
failed attack makes it ``incomplete`` (never a silently optimistic ``ok``); targeted rows
stay out of it; an attack whose parameters change its threat model is keyed and grouped by
the threat it runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from robench.config import build_config
from robench.planning import AttackPlan, ModelPlan, attack_key, clean_key, train_key
from robench.store import Store, pack_mask
from robench.tabulate import tabulate

N = 8


def _plan(name: str, **kw) -> AttackPlan:
    fields = {"threat": "linf", "kind": "bounded", "black_box": False, "targeted_ok": False,
              "is_namespace": False, "base": name}
    return AttackPlan(name=name, **{**fields, **kw})


def _outcome(eps: float, robust: list[bool]) -> dict:
    return {"eps": eps, "eps_label": f"{eps:g}", "robust": pack_mask(np.array(robust)),
            "robust_acc": sum(robust) / N, "n_robust": sum(robust), "n_invalid": 0,
            "grad_evals": 10, "queries": 10, "seconds": 0.1, "reasons": {},
            "n_verify_mismatch": 0, "n_precision_mismatch": 0}


@pytest.fixture
def grid(tmp_path):
    config = build_config({"target": "none", "adaptors": ["none"], "backbones": ["digits-cnn"],
                           "attacks": ["fgsm", "pgd", "apgd-ce"], "eps": {"linf": ["0.1"]},
                           "out": str(tmp_path)})
    plan = ModelPlan(name="digits-cnn+linear+none", backbone="digits-cnn", head="linear",
                     adaptor="none")
    key = train_key(config, plan)
    store = Store(tmp_path / "results.sqlite")
    store.put(key, kind="train", label="train", status="ok", payload={"params": 5})
    correct = np.array([True] * 6 + [False] * 2)
    store.put(clean_key(config, key, "source", "digits"), kind="clean", label="clean",
              status="ok", payload={"n": N, "clean_acc": 0.75, "correct": pack_mask(correct),
                                    "diagnostics": {}, "num_classes": 10})
    return config, plan, key, store


def _put_attack(config, store, key, attack: AttackPlan, robust, *, status="ok",
                targeted=False):
    payload = {"threat": attack.threat, "kind": "bounded", "black_box": False,
               "targeted": targeted, "target": "", "n": N, "clean_acc": 0.75,
               "attack_params": {}, "outcomes": [_outcome(0.1, robust)]}
    store.put(attack_key(config, attack, key, "source", "digits"), kind="attack",
              label=attack.name, status=status,
              payload=payload if status == "ok" else {"error": "RuntimeError: boom"})


def _table(config, plan, key, store, attacks):
    return tabulate(config, store, [plan], {plan.name: key}, {plan.name: key},
                    {a.name: a for a in attacks}, "cpu").results


def test_the_worst_case_is_robust_only_under_every_attack(grid):
    config, plan, key, store = grid
    attacks = [_plan("fgsm"), _plan("pgd"), _plan("apgd-ce")]
    _put_attack(config, store, key, attacks[0], [1, 1, 1, 1, 1, 1, 0, 0])
    _put_attack(config, store, key, attacks[1], [1, 1, 1, 0, 1, 1, 0, 0])
    _put_attack(config, store, key, attacks[2], [0, 1, 1, 1, 1, 1, 0, 0])
    rows = _table(config, plan, key, store, attacks)
    worst = rows[rows.attack == "worst-case"].iloc[0]
    assert worst.n_robust == 4 and worst.status == "ok"
    assert worst.robust_acc == pytest.approx(4 / N)
    assert "precision" in rows and set(rows.precision) == {"fp32"}


def test_a_failed_attack_makes_the_worst_case_incomplete_and_names_it(grid):
    config, plan, key, store = grid
    attacks = [_plan("fgsm"), _plan("pgd"), _plan("apgd-ce")]
    _put_attack(config, store, key, attacks[0], [1, 1, 1, 1, 1, 1, 0, 0])
    _put_attack(config, store, key, attacks[1], [1, 1, 1, 0, 1, 1, 0, 0])
    _put_attack(config, store, key, attacks[2], [], status="failed")
    rows = _table(config, plan, key, store, attacks)
    worst = rows[rows.attack == "worst-case"].iloc[0]
    assert worst.status == "incomplete"
    assert "apgd-ce" in worst.error and "upper bound" in worst.error
    assert "worst-case-incomplete" in worst["flags"]
    # the number is still the combination of the attacks that ran
    assert worst.n_robust == 5


def test_targeted_rows_stay_out_of_the_worst_case(grid):
    config, plan, key, store = grid
    attacks = [_plan("fgsm"), _plan("pgd", params={"target": "random"})]
    _put_attack(config, store, key, attacks[0], [1, 1, 1, 1, 1, 1, 0, 0])
    _put_attack(config, store, key, attacks[1], [0, 0, 0, 0, 0, 0, 0, 0], targeted=True)
    rows = _table(config, plan, key, store, attacks)
    assert rows[rows.attack == "worst-case"].iloc[0].n_robust == 6


def test_an_attack_keyed_by_the_threat_it_runs_gets_new_keys_when_that_eps_list_changes(
        tmp_path):
    """apgd-ce with norm = "l2" runs the l2 list: changing it must recompute its task, and
    changing the linf list must not."""
    base = {"target": "none", "out": str(tmp_path), "attacks": ["apgd-ce"],
            "attack": {"apgd-ce": {"norm": "l2"}}}
    l2 = _plan("apgd-ce", threat="l2", params={"norm": "l2"})
    keys = {}
    for name, eps in {"a": {"linf": ["0.1"], "l2": ["0.5"]},
                      "linf-changed": {"linf": ["0.2"], "l2": ["0.5"]},
                      "l2-changed": {"linf": ["0.1"], "l2": ["1.0"]}}.items():
        config = build_config({**base, "eps": eps})
        keys[name] = attack_key(config, l2, "model", "source", "digits")
    assert keys["a"] == keys["linf-changed"]
    assert keys["a"] != keys["l2-changed"]


def test_the_validated_plan_of_an_l2_apgd_is_l2(tmp_path):
    from robench.context import WorkerContext
    from robench.host import PluginHost
    from robench.validation import validate

    config = build_config({"target": "none", "adaptors": ["none"], "out": str(tmp_path),
                           "attacks": ["apgd-ce", "autoattack-fast"],
                           "attack": {"apgd-ce": {"norm": "l2"}}})
    valid = validate(config, WorkerContext.create(PluginHost.create()))
    assert valid.attacks["apgd-ce"].threat == "l2"
    members = [a for a in valid.attacks if a.startswith("autoattack-fast/")]
    assert members == ["autoattack-fast/apgd-ce", "autoattack-fast/apgd-t"]
    assert valid.attacks["autoattack-fast/apgd-t"].prior == "autoattack-fast/apgd-ce"
    assert valid.attacks["autoattack-fast/apgd-t"].params["n_target_classes"] == 5


# --------------------------------------------------------------------------- training-failed


def _train(store, key, **payload):
    store.put(key, kind="train", label="train", status="ok", payload={"params": 5, **payload})


def _clean(config, store, key, clean_acc):
    correct = np.zeros(N, dtype=bool)
    correct[: round(clean_acc * N)] = True
    store.put(clean_key(config, key, "source", "digits"), kind="clean", label="clean",
              status="ok", payload={"n": N, "clean_acc": clean_acc,
                                    "correct": pack_mask(correct), "diagnostics": {},
                                    "num_classes": 10})


def _training_flagged(config, plan, key, store) -> list[bool]:
    attacks = [_plan("fgsm"), _plan("pgd")]
    _put_attack(config, store, key, attacks[0], [1, 1, 1, 1, 1, 0, 0, 0])
    _put_attack(config, store, key, attacks[1], [1, 1, 1, 1, 0, 0, 0, 0])
    rows = _table(config, plan, key, store, attacks)
    assert len(rows) == 3  # two attacks and the worst case
    return ["training-failed" in str(f).split(";") for f in rows["flags"]]


@pytest.mark.parametrize("payload, clean_acc, flagged", [
    ({"train_acc": 0.9}, 0.75, False),  # trained and evaluated well above chance
    ({"train_acc": 0.14}, 0.75, True),  # final training accuracy at 1.5 / 10 or below
    ({"train_acc": 0.16}, 0.75, False),  # just above the floor
    ({"train_acc": 0.9, "metrics": {"adv_train_acc": 0.1, "final_eps": 0.3}}, 0.75, True),
    ({"train_acc": 0.9, "metrics": {"domain_classifier_acc": 0.1}}, 0.75, False),
    ({"train_acc": 0.9, "final_loss": float("nan")}, 0.75, True),  # diverged
    ({"train_acc": 0.9}, 0.125, True),  # collapsed: training above chance, clean at it
    ({}, 0.125, False),  # no training accuracy stored: near-chance says it, not this flag
])
def test_training_failed_flags_every_row_of_the_model(grid, payload, clean_acc, flagged):
    config, plan, key, store = grid
    _train(store, key, **payload)
    _clean(config, store, key, clean_acc)
    assert _training_flagged(config, plan, key, store) == [flagged] * 3


def test_training_failed_reads_the_model_as_trained_not_behind_an_inference_defense(grid):
    """A JPEG wrapper whose own clean accuracy drops to chance did not make training fail;
    a training that did fail flags the defended model too."""
    config, plan, key, store = grid
    defended = ModelPlan(name=f"{plan.name}+jpeg", backbone=plan.backbone, head=plan.head,
                         adaptor=plan.adaptor, defense="jpeg", defense_stage="inference")
    attacks = {"fgsm": _plan("fgsm")}
    for train_acc, expected in ((0.9, False), (0.05, True)):
        _train(store, key, train_acc=train_acc)
        _clean(config, store, key, 0.75)
        _clean(config, store, "defended-key", 0.1)
        _put_attack(config, store, key, attacks["fgsm"], [1, 1, 1, 1, 1, 0, 0, 0])
        _put_attack(config, store, "defended-key", attacks["fgsm"], [1, 0, 0, 0, 0, 0, 0, 0])
        rows = tabulate(config, store, [plan, defended], {plan.name: key, defended.name: key},
                        {plan.name: key, defended.name: "defended-key"}, attacks, "cpu").results
        flags = rows.groupby("model")["flags"].apply(
            lambda f: {"training-failed" in str(v).split(";") for v in f})
        assert flags.to_dict() == {plan.name: {expected}, defended.name: {expected}}
