"""Each native attack says which of its examples it saw as adversarial (``last_success``).

The harness re-attacks, counts and flags an example that the attack claimed but that its
verification refuses (docs/protocol.md, verification mismatches).  For that the claims must be
right: on a model whose output does not depend on the batch, every claimed example is
adversarial when the harness classifies it (no mismatch), and an attack that fools samples
claims them (a claim that is always empty would hide every mismatch).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import robench
from robench.evaluation import run_attack_cascade

#: attack -> (parameters that keep it quick, eps; None for a minimal attack's run)
CASES: dict[str, tuple[dict[str, Any], float | None]] = {
    "pgd": ({"steps": 10, "restarts": 2}, 0.1),
    "pgd-l2": ({"steps": 10}, 1.5),
    "apgd-ce": ({"steps": 10}, 0.1),
    "apgd-t": ({"steps": 5, "n_target_classes": 2}, 0.1),
    "square": ({"queries": 100}, 0.2),
    "noise": ({}, 0.3),
    "fab": ({"steps": 10}, None),
    "fab-t": ({"steps": 10, "n_target_classes": 2}, 0.1),
    "deepfool": ({"steps": 10}, None),
    "cw-l2": ({"steps": 20, "binary_search_steps": 2}, None),
    "autoattack-fast": ({}, 0.1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_claims_are_what_the_model_says(host: robench.PluginHost, digits: Any,
                                        name: str) -> None:
    params, eps = CASES[name]
    attack = host.build("attack", name, **params)
    x, y = digits.x[:48], digits.y[:48]
    x_adv = attack.perturb(digits.model, x, y, eps)
    claimed = attack.last_success
    assert claimed is not None and claimed.dtype == torch.bool and claimed.shape == (len(x),)
    with torch.no_grad():
        fooled = digits.model(x_adv).argmax(1) != y
    assert not (claimed & ~fooled).any(), f"{name} claimed examples the model classifies right"
    assert claimed.sum() >= 0.8 * fooled.sum() > 0, (int(claimed.sum()), int(fooled.sum()))


def test_a_clean_model_gives_no_verification_mismatch(host: robench.PluginHost,
                                                      digits: Any) -> None:
    """Through the harness: claims checked, nothing to re-attack, the count is 0."""
    x, y = digits.x[:64], digits.y[:64]
    correct = torch.ones(len(y), dtype=torch.bool)
    for name in ("pgd", "square"):
        params, eps = CASES[name]
        outcomes = run_attack_cascade(host.build("attack", name, **params), digits.model, x, y,
                                      correct, threat="linf", kind="bounded",
                                      eps_list=[eps / 4, eps], batch_size=16)
        assert [o.n_verify_mismatch for o in outcomes] == [0, 0]
        assert int(outcomes[-1].robust.sum()) < len(y)  # it did fool some


def test_a_zero_budget_claims_nothing(host: robench.PluginHost, digits: Any) -> None:
    attack = host.build("attack", "pgd", steps=2)
    attack.perturb(digits.model, digits.x[:4], digits.y[:4], 0.0)
    assert attack.last_success is not None and not attack.last_success.any()


@pytest.mark.parametrize(("name", "params", "eps"), [
    ("foolbox:LinfPGD", {"steps": 10}, 0.1),
    ("foolbox:L2DeepFoolAttack", {"steps": 10}, None),
])
def test_foolbox_claims_are_its_criterion(digits: Any, name: str, params: dict[str, Any],
                                          eps: float | None) -> None:
    """The adapter reports foolbox's own success flags (less non-finite examples)."""
    pytest.importorskip("foolbox")
    import robench_foolbox.plugin

    fhost = robench.PluginHost.create(entry_points=False, plugins=[robench_foolbox.plugin])
    attack = fhost.build("attack", name, **params)
    x, y = digits.x[:32], digits.y[:32]
    x_adv = attack.perturb(digits.model, x, y, eps)
    claimed = attack.last_success
    assert claimed is not None and claimed.dtype == torch.bool and claimed.shape == (len(x),)
    with torch.no_grad():
        fooled = digits.model(x_adv).argmax(1) != y
    assert not (claimed & ~fooled).any()
    assert claimed.sum() >= 0.8 * fooled.sum() > 0, (int(claimed.sum()), int(fooled.sum()))
