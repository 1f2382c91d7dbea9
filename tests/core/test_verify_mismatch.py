"""Verification mismatches and fp32 re-verification of low-precision runs.

What a user relies on: an example that the attack saw as adversarial in its own forward pass
but that the harness's verification does not confirm (the model's output depends on the
batch: TF32 / bf16 / compiled kernels chosen by batch shape) is attacked once more on its
own and otherwise counted robust, and every such sample is counted (``n_verify_mismatch``)
and flagged (``verify-mismatch``), also on the worst case.  In a bf16 / fp16 run every
adversarial found is re-classified in fp32 as well, and disagreements are counted
(``n_precision_mismatch``) and flagged (``precision-mismatch``), never hidden.  A model whose
output does not depend on the batch, and an fp32 run, give 0 and no flag.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import robench_attacks.plugin
import torch
from torch import nn

import robench
from robench.config import build_config
from robench.evaluation import predict, run_attack_cascade
from robench.flags import add_flags
from robench.leaderboard import build_leaderboard
from robench.models import Autocast, fp32_reference, with_compile, with_precision
from robench.planning import AttackPlan, ModelPlan, attack_key, clean_key, train_key
from robench.results import coerce_results
from robench.store import Store, pack_mask
from robench.tabulate import tabulate


class BatchDependent(nn.Module):
    """Two classes: class 1 iff the mean pixel exceeds ``0.5 + shift * (batch size - 1)``.

    An exaggerated kernel whose result depends on the batch shape: a sample can be class 1
    when the model sees it alone and class 0 in a batch of four.  ``shift = 0`` is a model
    whose output does not depend on the batch.
    """

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True) - 0.5 - self.shift * (x.shape[0] - 1)
        return torch.cat([-m, m], 1) * 100


class AloneAttack:
    """Raises every pixel of each sample by eps (toward class 1), and judges success as it
    sees it: each example classified *alone*, a batch of one (``last_success``)."""

    def __init__(self) -> None:
        self.last_success: torch.Tensor | None = None
        self.calls: list[int] = []  # the batch size of every perturb call

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                target: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(len(x))
        x_adv = (x + eps).clamp(0, 1)
        with torch.no_grad():
            seen = [model(x_adv[i:i + 1]).argmax(1) != y[i:i + 1] for i in range(len(x))]
        self.last_success = torch.cat(seen)
        return x_adv


def _images(means: list[float]) -> torch.Tensor:
    return torch.tensor(means).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def _cascade(model: nn.Module, means: list[float], attack: AloneAttack, *,
             eps: float = 0.06) -> tuple[torch.Tensor, list]:
    x = _images(means)
    y = torch.zeros(len(means), dtype=torch.long)
    correct = predict(model, x, batch_size=len(x)) == y
    assert correct.all()  # every sample is class 0 in the clean batch: all are attacked
    outcomes = run_attack_cascade(attack, model, x, y, correct, threat="linf",
                                  kind="bounded", eps_list=[eps], batch_size=len(x),
                                  keep_examples=len(x))
    return correct, outcomes


def test_a_claim_that_fails_verification_twice_is_counted_robust():
    """Shift 0.03: alone the threshold is 0.50, in the verification batch of four 0.59 and in
    the re-attack's batch of the two mismatched samples 0.53.  The samples at 0.46 reach 0.52:
    adversarial alone, not in either batch."""
    attack = AloneAttack()
    model = BatchDependent(shift=0.03)
    _, (out,) = _cascade(model, [0.40, 0.46, 0.46, 0.30], attack)
    assert out.n_verify_mismatch == 2
    assert out.robust.tolist() == [True, True, True, True]  # nothing confirmed
    assert out.n_invalid == 0
    assert attack.calls == [4, 2]  # attacked once more, the two mismatched samples alone
    # the re-attack's cost is counted with the rest
    assert out.queries == 4 + 2


def test_a_claim_that_verifies_on_the_re_attack_counts_as_fooled():
    """One mismatched sample: re-attacked alone, its example is verified in a batch of one
    too, where the attack's claim holds."""
    attack = AloneAttack()
    _, (out,) = _cascade(BatchDependent(shift=0.03), [0.40, 0.46, 0.30, 0.20], attack)
    assert out.n_verify_mismatch == 1
    assert out.robust.tolist() == [True, False, True, True]
    assert attack.calls == [4, 1]
    assert 1 in out.adversarial  # the re-attack's example is the one kept


def test_a_batch_independent_model_gives_no_mismatch():
    attack = AloneAttack()
    _, (out,) = _cascade(BatchDependent(shift=0.0), [0.40, 0.46, 0.46, 0.30], attack)
    assert out.n_verify_mismatch == 0
    assert out.robust.tolist() == [True, False, False, True]  # fooled at 0.52 > 0.50
    assert attack.calls == [4]  # no re-attack


def test_an_attack_that_claims_nothing_is_never_re_attacked():
    class Silent(AloneAttack):
        def perturb(self, model, x, y, eps, target=None):  # noqa: ANN001, ANN202
            x_adv = super().perturb(model, x, y, eps, target)
            self.last_success = None
            return x_adv

    attack = Silent()
    _, (out,) = _cascade(BatchDependent(shift=0.03), [0.40, 0.46, 0.46, 0.30], attack)
    assert out.n_verify_mismatch == 0 and attack.calls == [4]


def test_a_malformed_claim_is_refused():
    class Wrong(AloneAttack):
        def perturb(self, model, x, y, eps, target=None):  # noqa: ANN001, ANN202
            x_adv = super().perturb(model, x, y, eps, target)
            self.last_success = self.last_success.long()
            return x_adv

    with pytest.raises(ValueError, match="last_success must be a bool tensor"):
        _cascade(BatchDependent(shift=0.0), [0.40, 0.46], Wrong())


def test_native_pgd_claims_are_checked_on_a_batch_dependent_model():
    """PGD drops fooled samples from its working batch (at once, on the CPU), so on a model
    whose threshold grows with the batch it sees samples fooled in batches smaller than the
    harness's: mismatches; on a batch-independent model none."""
    host = robench.PluginHost.create(entry_points=False, plugins=[robench_attacks.plugin])
    means = [0.40 + 0.01 * i for i in range(8)]
    counts = {}
    for shift in (0.0, 0.004):
        pgd = host.build("attack", "pgd", steps=10, random_start=False)
        torch.manual_seed(0)
        _, (out,) = _cascade(BatchDependent(shift=shift), means, pgd, eps=0.12)
        counts[shift] = out.n_verify_mismatch
        assert pgd.last_success is not None
    assert counts[0.0] == 0
    assert counts[0.004] > 0, counts


# --------------------------------------------------------------------------- precision


def _precision_model() -> nn.Module:
    """Class 1 iff ``100 * mean - 50.32 > 0``; under bf16 autocast the rounded pixels and
    bias move the threshold, so an image at mean 0.502 is class 1 in bf16, class 0 in fp32."""
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[1] = 100.0 / 4
        linear.bias.zero_()
        linear.bias[1] = -100.0 * 0.5032
    return nn.Sequential(nn.Flatten(), linear).eval()


class UpAttack:
    """Raises every pixel by eps; claims nothing."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                target: torch.Tensor | None = None) -> torch.Tensor:
        return (x + eps).clamp(0, 1)


def test_bf16_adversarials_are_re_verified_in_fp32_and_disagreements_counted():
    fp32 = _precision_model()
    bf16 = with_precision(fp32, "bf16", "cpu")
    assert fp32_reference(bf16) is fp32 and fp32_reference(fp32) is None
    x = _images([0.45, 0.49, 0.40])
    y = torch.zeros(3, dtype=torch.long)
    eps = [0.052, 0.2]
    adv = (x[:1] + eps[0]).clamp(0, 1)
    # the construction: sample 0's adversarial at eps 0.052 fools bf16, not fp32
    assert predict(bf16, adv).tolist() == [1] and predict(fp32, adv).tolist() == [0]
    correct = predict(bf16, x) == y
    assert correct.all()
    outcomes = run_attack_cascade(UpAttack(), bf16, x, y, correct, threat="linf",
                                  kind="bounded", eps_list=eps, batch_size=3,
                                  reference_model=fp32_reference(bf16))
    small, large = outcomes
    # the number is bf16's: sample 0 (bf16 only) and 1 (both) fooled at the smaller eps
    assert small.robust.tolist() == [False, False, True]
    assert small.n_precision_mismatch == 1
    # sample 0 stays fooled (not attacked again) at the larger eps, unconfirmed by fp32
    assert large.robust.tolist() == [False, False, False]
    assert large.n_precision_mismatch == 1
    # an fp32 run has no reference: nothing to count
    plain = run_attack_cascade(UpAttack(), fp32, x, y, predict(fp32, x) == y, threat="linf",
                               kind="bounded", eps_list=eps, batch_size=3)
    assert [o.n_precision_mismatch for o in plain] == [0, 0]


def test_the_fp32_reference_of_a_compiled_model_is_the_eager_fp32_model():
    fp32 = _precision_model()
    compiled = with_compile(with_precision(fp32, "fp16", "cpu"), "eager")
    assert fp32_reference(compiled) is fp32
    assert fp32_reference(with_compile(fp32, "eager")) is None
    assert isinstance(with_precision(fp32, "bf16", "cpu"), Autocast)


# --------------------------------------------------------------------------- table, flags

N = 4


def _outcome(robust: list[bool], *, verify: int | None, precision: int | None) -> dict:
    out = {"eps": 0.1, "eps_label": "0.1", "robust": pack_mask(np.array(robust)),
           "robust_acc": sum(robust) / N, "n_robust": sum(robust), "n_invalid": 0,
           "grad_evals": 4, "queries": 4, "seconds": 0.1, "reasons": {}}
    if verify is not None:  # a store written before the counts existed has neither
        out["n_verify_mismatch"] = verify
    if precision is not None:
        out["n_precision_mismatch"] = precision
    return out


def _table(tmp_path, counts: dict[str, tuple[int | None, int | None]]):
    config = build_config({"target": "none", "adaptors": ["none"], "backbones": ["digits-cnn"],
                           "attacks": list(counts), "eps": {"linf": ["0.1"]},
                           "out": str(tmp_path)})
    plan = ModelPlan(name="digits-cnn+linear+none", backbone="digits-cnn", head="linear",
                     adaptor="none")
    key = train_key(config, plan)
    store = Store(tmp_path / "results.sqlite")
    store.put(key, kind="train", label="train", status="ok", payload={"params": 5})
    store.put(clean_key(config, key, "source", "digits"), kind="clean", label="clean",
              status="ok", payload={"n": N, "clean_acc": 1.0,
                                    "correct": pack_mask(np.ones(N, dtype=bool)),
                                    "diagnostics": {}, "num_classes": 10})
    plans = {}
    for name, (verify, precision) in counts.items():
        attack = AttackPlan(name=name, threat="linf", kind="bounded", black_box=False,
                            targeted_ok=False, is_namespace=False, base=name)
        plans[name] = attack
        payload = {"threat": "linf", "kind": "bounded", "black_box": False, "targeted": False,
                   "target": "", "n": N, "clean_acc": 1.0, "attack_params": {},
                   "outcomes": [_outcome([True, True, False, False], verify=verify,
                                         precision=precision)]}
        store.put(attack_key(config, attack, key, "source", "digits"), kind="attack",
                  label=name, status="ok", payload=payload)
    rows = tabulate(config, store, [plan], {plan.name: key}, {plan.name: key}, plans,
                    "cpu").results
    return rows.set_index("attack")


def _flags(row) -> set[str]:  # noqa: ANN001
    return set(filter(None, str(row["flags"]).split(";")))


def test_counts_reach_the_table_sum_into_the_worst_case_and_raise_flags(tmp_path):
    rows = _table(tmp_path, {"pgd": (2, 0), "apgd-ce": (0, 3), "fgsm": (0, 0)})
    assert rows.loc["pgd", "n_verify_mismatch"] == 2
    assert rows.loc["apgd-ce", "n_precision_mismatch"] == 3
    assert _flags(rows.loc["pgd"]) == {"verify-mismatch"}
    assert _flags(rows.loc["apgd-ce"]) == {"precision-mismatch"}
    assert _flags(rows.loc["fgsm"]) == set()
    worst = rows.loc["worst-case"]
    assert worst.n_verify_mismatch == 2 and worst.n_precision_mismatch == 3
    assert {"verify-mismatch", "precision-mismatch"} <= _flags(worst)
    # the numbers themselves are untouched by the counts
    assert (rows["n_robust"] == 2).all() and (rows["status"] == "ok").all()
    # the leaderboard totals the attacks' counts and unions the flags
    (entry,) = build_leaderboard(rows.reset_index()).to_dict("records")
    assert entry["n_verify_mismatch"] == 2 and entry["n_precision_mismatch"] == 3
    assert {"verify-mismatch", "precision-mismatch"} <= set(entry["flags"].split(";"))


def test_a_store_without_the_counts_reads_as_zero_and_says_it_was_not_checked(tmp_path):
    """Results resumed from a run folder of a robench that did not count mismatches: the
    claimed-but-refused examples were never re-attacked, so the row must not look checked."""
    rows = _table(tmp_path, {"pgd": (None, None), "fgsm": (0, 0)})
    assert (rows["n_verify_mismatch"] == 0).all() and (rows["n_precision_mismatch"] == 0).all()
    assert _flags(rows.loc["pgd"]) == {"mismatch-unchecked"}
    assert _flags(rows.loc["fgsm"]) == set()
    assert _flags(rows.loc["worst-case"]) == {"mismatch-unchecked"}  # one of its attacks
    assert "_unchecked" not in rows  # the marker does not reach results.csv
    (entry,) = build_leaderboard(rows.reset_index()).to_dict("records")
    assert "mismatch-unchecked" in entry["flags"].split(";")


def test_flags_need_no_count_columns():
    """A results file from before the counts (or another tool) gets no mismatch flag."""
    row = {"model": "m", "domain": "source", "attack": "pgd", "threat": "linf", "eps": 0.1,
           "clean_acc": 0.9, "robust_acc": 0.5, "status": "ok", "attack_kind": "bounded"}
    assert add_flags(pd.DataFrame([row]), {})["flags"].iloc[0] == ""
    table = coerce_results(pd.DataFrame([row]))
    assert table["n_verify_mismatch"].iloc[0] == 0
