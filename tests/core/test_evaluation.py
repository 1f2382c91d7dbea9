"""Verification, gradient counting and the eps cascade, on a tiny exact model."""

from __future__ import annotations

import torch
from torch import nn

from robench.evaluation import (
    CountingModel,
    make_targets,
    perturbation_norm,
    run_attack_cascade,
    verify_adversarial,
)


class Threshold(nn.Module):
    """Class 1 iff the mean pixel exceeds 0.5: the minimal Linf attack is known exactly."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-m, m], 1) * 100


class ShiftAttack:
    """Moves every pixel by +-eps toward the boundary (the optimal Linf attack here)."""

    def __init__(self, scale: float = 1.0, nan: bool = False):
        self.scale, self.nan = scale, nan

    def perturb(self, model, x, y, eps, target=None):
        x = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
        adv = x.detach() + self.scale * eps * grad.sign()
        if self.nan:
            adv[0] = float("nan")
        return adv if self.scale > 1 else adv.clamp(0, 1)


def _data():
    means = torch.tensor([0.40, 0.45, 0.48, 0.52, 0.55, 0.60, 0.30, 0.70])
    x = means.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    y = (means > 0.5).long()
    y[-1] = 0  # misclassified on purpose: must never be attacked
    return x, y


def test_cascade_matches_the_exact_answer_and_counts_gradients():
    x, y = _data()
    model = Threshold()
    correct = model(x).argmax(1) == y
    assert correct.tolist() == [True] * 7 + [False]
    outcomes = run_attack_cascade(ShiftAttack(), model, x, y, correct, threat="linf",
                                  kind="bounded", eps_list=[0.15, 0.01, 0.06])
    assert [o.eps for o in outcomes] == [0.01, 0.06, 0.15]
    # distance to the boundary: 0.10 0.05 0.02 0.02 0.05 0.10 0.20 -> fooled if dist < eps
    assert [int(o.robust.sum()) for o in outcomes] == [7, 3, 1]
    # gradients are counted per sample and only for samples still robust
    assert [o.grad_evals for o in outcomes] == [7, 7, 3]
    assert all(o.n_invalid == 0 for o in outcomes)


def test_out_of_ball_out_of_box_and_nan_are_invalid_not_fixed():
    x, y = _data()
    model = Threshold()
    correct = model(x).argmax(1) == y
    out = run_attack_cascade(ShiftAttack(scale=3.0), model, x, y, correct, threat="linf",
                             kind="bounded", eps_list=[0.06])[0]
    assert out.n_invalid == 7 and out.reasons["outside-eps-ball"] == 7
    assert int(out.robust.sum()) == 7  # an invalid adversarial never counts as a success
    check = verify_adversarial(model, x, x + 2.0, y, threat="linf", eps=10.0)
    assert check.reasons["outside-[0,1]"] == len(x) and not check.valid.any()
    nan = run_attack_cascade(ShiftAttack(nan=True), model, x[:1], y[:1], correct[:1],
                             threat="linf", kind="bounded", eps_list=[0.2])[0]
    assert nan.reasons["non-finite"] == 1 and nan.n_invalid == 1


def test_counting_model_counts_queries_and_input_gradients():
    model = CountingModel(Threshold())
    x = torch.rand(5, 1, 2, 2, requires_grad=True)
    model(x).sum().backward()
    with torch.no_grad():
        model(x)
    assert model.grad_evals == 5 and model.queries == 10


def test_norms_and_targets():
    delta = torch.zeros(2, 3, 2, 2)
    delta[0, :, 0, 0] = 0.5
    assert perturbation_norm(delta, "l0").tolist() == [1.0, 0.0]
    assert torch.isclose(perturbation_norm(delta, "l2")[0], torch.tensor(0.75 ** 0.5))
    y = torch.tensor([0, 1, 2])
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [2, 1, 3]])
    assert make_targets("least-likely", y, logits, num_classes=3, seed=0).tolist() == [2, 0, 1]
    rnd = make_targets("random", y, logits, num_classes=3, seed=0)
    assert (rnd != y).all()
    assert make_targets(1, y, logits, num_classes=3, seed=0).tolist() == [1, 1, 1]


class SeverityFlip:
    """A 'corruption' that fools only at odd severities: severities are not nested."""

    def perturb(self, model, x, y, eps, target=None):
        return 1 - x if int(eps) % 2 else x.clone()


def test_corruption_severities_are_evaluated_independently():
    x, y = _data()
    model = Threshold()
    correct = model(x).argmax(1) == y
    outcomes = run_attack_cascade(SeverityFlip(), model, x, y, correct, threat="corruption",
                                  kind="bounded", eps_list=[1, 2, 3], nested=False)
    # flipping every pixel moves each mean across 0.5: everything falls at 1 and 3, not at 2
    assert [int(o.robust.sum()) for o in outcomes] == [0, 7, 0]
    nested = run_attack_cascade(SeverityFlip(), model, x, y, correct, threat="corruption",
                                kind="bounded", eps_list=[1, 2, 3])
    assert [int(o.robust.sum()) for o in nested] == [0, 0, 0]
