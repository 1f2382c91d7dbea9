"""Inference-time defenses on real MNIST digits: JPEG and bit-depth reduction look robust to
plain PGD only because their gradient is zero (the zero-gradients flag fires); under BPDA the
robust accuracy falls back to the undefended model's.  Random resize-and-pad is attacked more
strongly with EOT than without."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from defense_helpers import EPS, robust_accuracy

import robench
from robench.defenses import InferenceDefense, bpda, eot, is_randomised, needs_bpda
from robench.evaluation import model_diagnostics
from robench.flags import add_flags


@pytest.fixture(scope="module")
def undefended(host, mnist, standard_model) -> tuple[float, float]:
    return robust_accuracy(host, standard_model, mnist, EPS)


def _flags(model_name: str, clean: float, robust: float, diagnostics: dict) -> set[str]:
    row = {"model": model_name, "domain": "source", "attack": "pgd", "threat": "linf",
           "eps": EPS, "clean_acc": clean, "robust_acc": robust, "status": "ok",
           "attack_kind": "bounded", "black_box": False}
    frame = add_flags(pd.DataFrame([row]), {(model_name, "source"): diagnostics})
    return set(filter(None, frame["flags"].iloc[0].split(";")))


@pytest.mark.parametrize(("name", "params"), [("jpeg", {"quality": 75}),
                                              ("bit-depth", {"bits": 4})])
def test_bpda_breaks_a_non_differentiable_defense(host, mnist, standard_model, undefended,
                                                  name, params):
    defended = host.build("defense", name, model=standard_model, **params)
    assert isinstance(defended, InferenceDefense)
    assert needs_bpda(defended) and not is_randomised(defended)
    clean, plain = robust_accuracy(host, defended, mnist, EPS)
    _, adaptive = robust_accuracy(host, defended, mnist, EPS, straight_through=True)
    base_clean, base_robust = undefended
    print(f"{name}: clean {clean:.3f}, PGD {plain:.3f}, BPDA-PGD {adaptive:.3f}; undefended: "
          f"clean {base_clean:.3f}, PGD {base_robust:.3f}")
    assert clean >= base_clean - 0.03
    assert plain >= base_robust + 0.5  # gradient masking: it only looks robust
    assert adaptive <= base_robust + 0.10  # BPDA: back within a few points
    diag = model_diagnostics(defended, mnist["x_test"], mnist["y_test"], num_classes=10)
    assert diag["zero-gradient-fraction"] == 1.0 and not diag["nondeterministic"]
    assert "zero-gradients" in _flags(name, clean, plain, diag)
    with bpda(defended):
        diag = model_diagnostics(defended, mnist["x_test"], mnist["y_test"], num_classes=10)
    assert diag["zero-gradient-fraction"] == 0.0
    assert not defended.bpda  # restored


def test_random_resize_pad_is_attacked_harder_with_eot(host, mnist, standard_model,
                                                       undefended):
    defended = host.build("defense", "random-resize-pad", model=standard_model)
    assert is_randomised(defended) and not needs_bpda(defended)
    clean, plain = robust_accuracy(host, defended, mnist, EPS, limit=150)
    _, with_eot = robust_accuracy(host, defended, mnist, EPS, attack_model=eot(defended, 5),
                                  limit=150)
    print(f"random-resize-pad: clean {clean:.3f}, PGD {plain:.3f}, EOT-5 PGD {with_eot:.3f}; "
          f"undefended PGD {undefended[1]:.3f}")
    assert with_eot <= plain - 0.05
    assert clean >= undefended[0] - 0.1
    diag = model_diagnostics(defended, mnist["x_test"], mnist["y_test"], num_classes=10)
    assert diag["nondeterministic"] and diag["zero-gradient-fraction"] == 0.0
    assert "nondeterministic" in _flags("rrp", clean, plain, diag)


def test_transforms(host, mnist):
    x = mnist["x_test"][:8]
    squeezed = host.build("defense", "bit-depth", model=torch.nn.Identity(), bits=2)
    out = squeezed(x)
    assert set(torch.unique(out * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert (out - x).abs().max() <= 1 / 6 + 1e-6
    jpeg = host.build("defense", "jpeg", model=torch.nn.Identity(), quality=95)
    out = jpeg(x)
    assert out.shape == x.shape and 0 < (out - x).abs().mean() < 0.02
    rgb = host.build("defense", "jpeg", model=torch.nn.Identity())(x.repeat(1, 3, 1, 1))
    assert rgb.shape == (8, 3, 28, 28)
    resize = host.build("defense", "random-resize-pad", model=torch.nn.Identity(),
                        min_scale=0.5)
    torch.manual_seed(0)
    first, second = resize(x), resize(x)
    assert first.shape == x.shape and not torch.equal(first, second)
    assert first.sum() < x.sum() + 1e-3  # a shrunk copy on a zero background
    # the batched resample is exactly "resize to s x s, then zero-pad": find each image's
    # size and offset from its non-zero box, redo it with F.interpolate and F.pad
    one = torch.ones(8, 1, 28, 28)
    torch.manual_seed(1)
    boxes = resize(one)
    torch.manual_seed(1)
    placed = resize(x)
    for i in range(8):
        rows, cols = (boxes[i, 0] > 0.5).nonzero().unbind(1)
        top, left, side = int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1)
        ref = F.pad(F.interpolate(x[i:i + 1], size=(side, side), mode="bilinear",
                                  align_corners=False), (left, 28 - side - left, top,
                                                         28 - side - top))
        assert torch.allclose(placed[i:i + 1], ref, atol=1e-5)
    # a straight-through backward is exactly the identity
    xr = x.clone().requires_grad_(True)
    with bpda(squeezed):
        (grad,) = torch.autograd.grad(squeezed(xr).sum(), xr)
    assert torch.equal(grad, torch.ones_like(x))
    (grad,) = torch.autograd.grad(squeezed(xr).sum(), xr)
    assert torch.equal(grad, torch.zeros_like(x))


def test_eot_averages_predictions_and_bad_parameters(host):
    net = torch.nn.Linear(4, 3)
    assert torch.allclose(eot(net, 5)(torch.ones(2, 4)).exp().sum(1), torch.ones(2))
    assert torch.allclose(eot(net, 3)(torch.ones(2, 4)), torch.log_softmax(net(torch.ones(2, 4)),
                                                                          1), atol=1e-6)
    with pytest.raises(robench.UsageError, match="samples"):
        eot(net, 0)
    for name, params in [("jpeg", {"quality": 0}), ("bit-depth", {"bits": 9}),
                         ("random-resize-pad", {"min_scale": 1.5})]:
        with pytest.raises(robench.UsageError, match=name):
            host.build("defense", name, model=net, **params)
    with pytest.raises(robench.UsageError, match="1- or 3-channel"):
        host.build("defense", "jpeg", model=torch.nn.Identity())(torch.rand(1, 2, 8, 8))
