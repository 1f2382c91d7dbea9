"""A grid with an AutoAttack preset and an inference defense, attacked with and without BPDA.

One small grid, trained once: what a user relies on is that a preset's members run chained
(each on what the one before left robust, so the last member's row is the ensemble's), that
a defense with a masked gradient looks robust to plain PGD and a flag says why, and that
PGD through BPDA sees through it, in one leaderboard.
"""

from __future__ import annotations

import pandas as pd
import pytest

import robench

GRID = {
    "name": "presets", "dataset": "digits", "target": "none", "backbones": ["digits-cnn"],
    "adaptors": ["none"], "defenses": ["none", "bit-depth"], "epochs": 2, "limit": 60,
    "attacks": ["pgd", "pgd+bpda", "autoattack-fast"], "eps": {"linf": ["4/255", "16/255"]},
    "attack": {"pgd": {"steps": 10}, "pgd+bpda": {"steps": 10},
               "autoattack-fast/apgd-ce": {"steps": 20}, "autoattack-fast/apgd-t": {"steps": 20}},
    "defense": {"bit-depth": {"bits": 2}}, "reporters": ["csv"],
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("presets")
    return robench.run_grid({**GRID, "out": str(out)})


def _robust(rows: pd.DataFrame, model: str, attack: str) -> list[float]:
    part = rows[(rows.model == model) & (rows.attack == attack)].sort_values("eps")
    return list(part.robust_acc)


def test_a_preset_runs_its_members_chained_and_its_last_member_is_the_ensemble(rows):
    model = "digits-cnn+linear+none"
    ce = _robust(rows, model, "autoattack-fast/apgd-ce")
    t = _robust(rows, model, "autoattack-fast/apgd-t")
    assert len(ce) == len(t) == 2
    assert all(b <= a for a, b in zip(ce, t, strict=True)), (ce, t)
    assert set(rows.attack) >= {"autoattack-fast/apgd-ce", "autoattack-fast/apgd-t"}
    worst = _robust(rows, model, "worst-case")
    assert all(w <= m for w, m in zip(worst, t, strict=True))
    assert (rows[rows.attack.str.startswith("autoattack")].status == "ok").all()


def test_a_masked_gradient_looks_robust_to_pgd_and_bpda_sees_through_it(rows):
    undefended = _robust(rows, "digits-cnn+linear+none", "pgd")
    defended = "digits-cnn+linear+none+bit-depth"
    plain = _robust(rows, defended, "pgd")
    bpda = _robust(rows, defended, "pgd+bpda")
    # at the larger eps plain PGD is blind (zero gradients) and BPDA is not
    assert plain[-1] >= undefended[-1] + 0.3, (plain, undefended)
    assert bpda[-1] <= plain[-1] - 0.3, (bpda, plain)
    flags = ";".join(rows[rows.model == defended]["flags"].fillna(""))
    assert "zero-gradients" in flags
    # the harness's own PGD at Linf eps 1 fails on the masked model, and only there
    assert "unbounded-eps-robust" in flags
    clean_flags = ";".join(rows[rows.model == "digits-cnn+linear+none"]["flags"].fillna(""))
    assert "unbounded-eps-robust" not in clean_flags and "zero-gradients" not in clean_flags
    # the worst case takes the adaptive attack
    assert _robust(rows, defended, "worst-case")[-1] <= bpda[-1]
    # the inference defense reuses the undefended model's training
    assert rows[rows.model == defended].train_seconds.iloc[0] == \
        rows[rows.model == "digits-cnn+linear+none"].train_seconds.iloc[0]
