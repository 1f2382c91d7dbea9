"""Gradient reversal, DANN schedules, heads' training rules."""

from __future__ import annotations

import math

import pytest
import torch
from robench_grl.layers import dann_lambda, dann_lr_factor, grad_reverse
from robench_grl.plugin import DANN, DigitsCNN
from robench_heads.plugin import linear_probe, partial

from robench.models import RobenchModel
from robench.training import TrainSettings, train_model


def test_grl_forward_is_identity_and_backward_is_minus_lambda():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5])
    out = grad_reverse(x, 0.7)
    assert torch.equal(out, x)
    (out * w).sum().backward()
    assert torch.allclose(x.grad, (-0.7 * w).expand(4, 3))


def test_lambda_zero_stops_the_domain_gradient():
    features = torch.randn(8, 5, requires_grad=True)
    dann = DANN(5, lambda_schedule="constant", max_lambda=0.0)
    dann.loss(features[:4], features[4:], progress=0.5).backward()
    assert torch.count_nonzero(features.grad) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dann.parameters())


def test_schedules():
    assert dann_lambda(0.0) == 0.0
    assert math.isclose(dann_lambda(0.5), 2 / (1 + math.exp(-5)) - 1)
    assert math.isclose(dann_lambda(1.0), 2 / (1 + math.exp(-10)) - 1)
    assert dann_lr_factor(0.0) == 1.0
    assert math.isclose(dann_lr_factor(0.5), 1 / 6 ** 0.75)
    assert math.isclose(dann_lr_factor(1.0), 1 / 11 ** 0.75)


def test_digits_cnn_has_1200_features_at_32px():
    assert DigitsCNN(image_size=32, in_chans=3).num_features == 1200
    assert DigitsCNN(image_size=32, in_chans=3)(torch.rand(2, 3, 32, 32)).shape == (2, 1200)


def _data(n=64):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=gen)
    return x, (x.mean((1, 2, 3)) > 0.5).long()


def test_frozen_probe_leaves_backbone_bit_identical():
    backbone = DigitsCNN(image_size=32, in_chans=3)
    model = RobenchModel(backbone, linear_probe(num_features=1200, num_classes=2), in_chans=3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    head_before = model.head.layers.weight.clone()
    train_model(model, _data(), settings=TrainSettings(epochs=2, batch_size=16))
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert not torch.equal(head_before, model.head.layers.weight)


def test_partial_trains_only_last_stage():
    backbone = DigitsCNN(image_size=32, in_chans=3)
    model = RobenchModel(backbone, partial(num_features=1200, num_classes=2,
                                           trainable_stages=1), in_chans=3)
    s1 = backbone.stage1[0].weight.clone()
    s2 = backbone.stage2[0].weight.clone()
    train_model(model, _data(), settings=TrainSettings(epochs=1, batch_size=16))
    assert torch.equal(s1, backbone.stage1[0].weight)
    assert not torch.equal(s2, backbone.stage2[0].weight)


def test_dann_training_counts_progress_per_step_and_reports_domain_accuracy():
    backbone = DigitsCNN(image_size=32, in_chans=3)
    from robench_heads.plugin import linear

    model = RobenchModel(backbone, linear(num_features=1200, num_classes=2), in_chans=3)
    dann = DANN(1200)
    x, y = _data()
    report = train_model(model, (x, y), settings=TrainSettings(epochs=2, batch_size=16),
                         adaptor=dann, target_images=1 - x)
    assert report.steps == 8
    assert math.isclose(dann.last_lambda, dann_lambda(7 / 8, max_lambda=dann.max_lambda))
    assert 0.0 <= report.metrics["domain_classifier_acc"] <= 1.0
    with pytest.raises(ValueError, match="target images"):
        train_model(model, (x, y), settings=TrainSettings(epochs=1), adaptor=dann)


def test_bf16_autocast_trains_and_returns_float32_logits():
    from robench.models import with_precision

    backbone = DigitsCNN(image_size=32, in_chans=3)
    from robench_heads.plugin import linear

    model = RobenchModel(backbone, linear(num_features=1200, num_classes=2), in_chans=3)
    x, y = _data()
    report = train_model(model, (x, y), settings=TrainSettings(epochs=1, batch_size=16,
                                                               precision="bf16"))
    assert math.isfinite(report.final_loss)
    wrapped = with_precision(model.eval(), "bf16", "cpu")
    out = wrapped(x[:4])
    assert out.dtype == torch.float32
    assert not wrapped.training  # an eval model stays reported as one (foolbox checks)
    assert (out.argmax(1) == model(x[:4]).argmax(1)).float().mean() >= 0.5
