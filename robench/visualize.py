"""What a classifier learned, as pictures: regularised class visualisation and a score for it.

:func:`class_images` optimises one image per class from noise so that the model assigns it to
that class.  For an ordinary (non-robust) network the result is mostly high-frequency noise the
network happens to respond to; for an adversarially trained network, whose input gradients are
*perceptually aligned* (Santurkar et al. 2019, "Image synthesis with a single robust
classifier"; Tsipras et al. 2019, "Robustness may be at odds with accuracy"), the same procedure
draws something that looks like the class.  :func:`perceptual_alignment` turns "looks like the
class" into a number: how often a class image is closest to the average training image of its
own class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robench.errors import UsageError

__all__ = ["alignment_from_sums", "class_images", "perceptual_alignment"]


def _gaussian_kernel(sigma: float, channels: int, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    return kernel.repeat(channels, 1, 1, 1)  # (C, 1, 1, K): depthwise, applied along x then y


def _blur(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable depthwise Gaussian blur with reflected borders."""
    channels, radius = z.shape[1], kernel.shape[-1] // 2
    z = F.conv2d(F.pad(z, (radius, radius, 0, 0), mode="reflect"), kernel, groups=channels)
    z = F.conv2d(F.pad(z, (0, 0, radius, radius), mode="reflect"),
                 kernel.transpose(-1, -2), groups=channels)
    return z


def _check_positive(name: str, value: float, *, allow_zero: bool = True) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or (
            value < 0 if allow_zero else value <= 0):
        bound = "zero or positive" if allow_zero else "positive"
        raise UsageError(f"class_images: {name} must be a {bound} number, got {value!r}.")


def class_images(model: nn.Module, *, num_classes: int, shape: tuple[int, int, int],
                 seed: int = 0, device: torch.device | str = "cpu", steps: int = 160,
                 lr: float = 0.1, jitter: float = 0.1, scale: float = 0.1,
                 blur_every: int = 16, blur_sigma: float = 0.5, tv: float = 0.02,
                 l2: float = 0.0, init_std: float = 1.0, target_prob: float = 0.9,
                 batch_size: int = 100, classes: list[int] | None = None) -> torch.Tensor:
    """One image per class, optimised from noise to be recognised as that class by ``model``.

    Each class's image is ``sigmoid(z)`` (pixels stay in [0, 1] without clipping, so the
    optimiser never sticks at a bound), ``z`` starting as Gaussian noise.  Adam maximises the
    class's log-probability (the log-softmax rather than the raw logit: it also pushes the
    image away from the other classes, so the picture is specific to its class) minus image
    priors, under random jitter and zoom.  The log-probability is capped at
    ``log(target_prob)``: once the model is that sure, only the priors act.  This is what
    makes the images show what the model learned (Santurkar et al. 2019): a non-robust model
    is convinced by a small, imperceptible change of the noise and its image stays noise; a
    robust (adversarially trained) model is only convinced by a change that a person also
    sees, so its image draws the class.  Without the cap, ascent with enough steps and priors
    eventually draws a template for any model and hides that difference.  The priors and
    augmentations follow feature visualisation practice (Mordvintsev et al. 2015; Olah et al.
    2017, "Feature visualization") at a strength chosen for small images: strong enough to
    remove speckle, weak enough not to draw shapes the model did not ask for.

    Args:
        model: a classifier taking images in [0, 1] of ``shape`` to logits ``(N, num_classes)``.
            It runs in eval mode (its mode is restored afterwards) and its parameters never
            receive a ``.grad``: gradients are taken with :func:`torch.autograd.grad` with
            respect to the image parametrisation only.
        num_classes: how many classes, hence images; image ``i`` is drawn for class ``i``.
        classes: draw images only for these classes (image ``i`` for ``classes[i]``); the
            default, every class, draws exactly what ``range(num_classes)`` draws.
        shape: ``(C, H, W)`` of the model's input.
        seed: seeds the initial noise and every random augmentation (drawn on the CPU); with a
            fixed seed and thread count the result is bit-for-bit repeatable.
        device: where the model lives; images are optimised there and returned on the CPU.
        steps: optimisation steps.  Augmentations make each step a noisy estimate of the
            objective, so more are needed than for plain ascent (which used 30); 160 takes
            under a second for 10 classes at 28x28 on a LeNet-size CNN on one CPU thread.
        lr: Adam's step size on ``z``; 0.1 can take a pixel from grey to black or white in a
            few dozen steps, so a robust model has the room to draw its class.
        jitter: largest random translation per step, as a fraction of the image side
            (0.1 = up to 2.8 pixels at 28x28).  Only features that survive being shifted are
            rewarded, which suppresses pixel-exact patterns (transformation robustness).
        scale: largest relative random zoom per step (0.1 = factors in [0.9, 1.1]), for the
            same reason.  Jitter and zoom are one bilinear resampling with border padding,
            drawn per image.
        blur_every: every this many steps ``z`` is blurred with a Gaussian of ``blur_sigma``
            pixels, removing the high frequencies the gradient keeps adding (0 disables).
            Rare by default: frequent blurring smooths a non-robust model's noise into blobs
            that look like shapes the model never drew.
        blur_sigma: standard deviation of that blur in pixels.
        tv: weight of the total-variation prior (mean absolute difference of neighbouring
            pixels, scaled to the image size) against the log-probability: favours
            piecewise-smooth images over speckle.
        l2: weight of an L2 prior pulling pixels towards grey (0.5); off by default because
            the sigmoid already bounds the pixels and the cap bounds the drive.
        init_std: standard deviation of the initial ``z`` (1.0: noise over most of [0, 1]);
            the starting point a model must turn into its class.
        target_prob: the probability at which the log-probability is capped (see above);
            1.0 disables the cap and turns the method into plain regularised ascent.
        batch_size: classes optimised together; bounds memory for many classes or large
            images.  Results do not depend on it except through the random draws.

    Returns:
        a float tensor ``(num_classes, C, H, W)`` on the CPU, values in [0, 1].

    Raises:
        UsageError: a non-positive ``num_classes``/``steps``/``batch_size``, a malformed
            ``shape``, a negative weight or a ``target_prob`` outside (0, 1].
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"class_images: num_classes must be a positive integer, "
                         f"got {num_classes!r}.")
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in shape)):
        raise UsageError(f"class_images: shape must be (channels, height, width) of positive "
                         f"integers, got {shape!r}.")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("blur_every", blur_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (
                0 if name == "blur_every" else 1):
            raise UsageError(f"class_images: {name} must be a "
                             f"{'non-negative' if name == 'blur_every' else 'positive'} "
                             f"integer, got {value!r}.")
    _check_positive("lr", lr, allow_zero=False)
    _check_positive("blur_sigma", blur_sigma, allow_zero=False)
    for name, value in (("jitter", jitter), ("scale", scale), ("tv", tv), ("l2", l2),
                        ("init_std", init_std)):
        _check_positive(name, value)
    if scale >= 1:
        raise UsageError(f"class_images: scale is a relative zoom and must be below 1, "
                         f"got {scale!r}.")

    if not isinstance(target_prob, (int, float)) or not 0 < target_prob <= 1:
        raise UsageError(f"class_images: target_prob is a probability in (0, 1], "
                         f"got {target_prob!r}.")

    cap = math.log(target_prob)
    device = torch.device(device)
    channels, height, width = (int(s) for s in shape)
    gen = torch.Generator().manual_seed(seed)
    wanted = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    if any(not 0 <= c < num_classes for c in wanted):
        raise UsageError(f"class_images: classes must lie in [0, {num_classes}), got {wanted}.")
    z_all = torch.randn((len(wanted), channels, height, width), generator=gen) * init_std
    kernel = _gaussian_kernel(blur_sigma, channels, device, torch.float32)
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(wanted), batch_size):
            z = z_all[start:start + batch_size].to(device).requires_grad_(True)
            n = len(z)
            target = torch.tensor(wanted[start:start + n], device=device)
            optimizer = torch.optim.Adam([z], lr=lr)
            for step in range(steps):
                # random zoom and translation, per image, drawn on the CPU for determinism
                zoom = 1 + (torch.rand(n, generator=gen) * 2 - 1) * scale
                shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * jitter)
                theta = torch.zeros(n, 2, 3)
                theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
                theta[:, :, 2] = shift
                theta = theta.to(device)
                with torch.enable_grad():
                    image = torch.sigmoid(z)
                    if jitter > 0 or scale > 0:
                        grid = F.affine_grid(theta, [n, channels, height, width],
                                             align_corners=False)
                        seen = F.grid_sample(image, grid, mode="bilinear",
                                             padding_mode="border", align_corners=False)
                    else:
                        seen = image
                    logits = model(seen)
                    log_prob = torch.log_softmax(logits.float(), dim=1)
                    objective = log_prob.gather(1, target[:, None]).clamp(max=cap).sum()
                    prior = torch.zeros((), device=device)
                    if tv > 0:
                        tv_loss = ((image[..., 1:, :] - image[..., :-1, :]).abs().mean((1, 2, 3))
                                   + (image[..., 1:] - image[..., :-1]).abs().mean((1, 2, 3)))
                        prior = prior + tv * tv_loss.sum() * channels * height * width / 100
                    if l2 > 0:
                        prior = prior + l2 * ((image - 0.5) ** 2).sum()
                    loss = prior - objective
                    (grad,) = torch.autograd.grad(loss, [z])
                z.grad = grad
                optimizer.step()
                z.grad = None
                if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                    with torch.no_grad():
                        z.copy_(_blur(z, kernel))
            results.append(torch.sigmoid(z).detach().cpu())
    finally:
        model.train(was_training)
    return torch.cat(results)


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 3:  # (N, H, W): one channel
        x = x[:, None]
    if x.ndim != 4:
        raise UsageError(f"perceptual_alignment: {name} must be images (N, C, H, W) or "
                         f"(N, H, W), got a tensor of shape {tuple(x.shape)}.")
    return x.float()


def perceptual_alignment(images: torch.Tensor, class_images_labels: torch.Tensor,
                         train_x: torch.Tensor, train_y: torch.Tensor,
                         num_classes: int, *, center: str = "dataset") -> float:
    """How recognisable class images are: the fraction nearest to their own class's mean image.

    For each class ``c`` the mean training image ``m_c`` is computed.  A class image counts as
    aligned when the ``m_c`` most similar to it (cosine similarity of the flattened pixels) is
    of its own label.  The result is a fraction in [0, 1]; class images unrelated to their
    class score ``1 / num_classes`` in expectation (chance), the class means themselves 1.

    By default (``center="dataset"``) both sides are compared as deviations from the mean
    training image (all classes pooled) before the cosine is taken.  Raw class means share a
    large common part (for digits: a dark border and ink in the middle) that no class owns,
    so raw cosine mostly asks "is there something bright in the middle" and rates noise drawn
    by a non-robust model nearly as well as a drawn digit.  ``center="image"`` subtracts each
    image's own mean pixel instead (Pearson correlation; invariant to brightness), and
    ``center="none"`` is the raw cosine.

    Channel or size mismatch is resolved towards the training images: with different channel
    counts both sides are compared as greyscale (channel mean), and class images of another
    size are resized bilinearly to the training images' size.

    Args:
        images: class images ``(K, C, H, W)`` (or ``(K, H, W)``), pixel values in [0, 1].
        class_images_labels: the class each image was drawn for, ``(K,)`` integers.
        train_x: training images ``(N, C', H', W')`` (or ``(N, H', W')``), in [0, 1].
        train_y: their labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: the number of classes.  Only classes with training images are candidates;
            every class that has a class image must have at least one.
        center: ``"dataset"``, ``"image"`` or ``"none"`` (see above).

    Raises:
        UsageError: mismatched lengths, labels outside ``[0, num_classes)``, a class image of a
            class absent from the training images, no images at all, or an unknown ``center``.
    """
    images = _as_matrix(images, "images")
    train_x = _as_matrix(train_x, "train_x")
    labels = torch.as_tensor(class_images_labels).long().reshape(-1).cpu()
    train_y = torch.as_tensor(train_y).long().reshape(-1).cpu()
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"perceptual_alignment: num_classes must be a positive integer, "
                         f"got {num_classes!r}.")
    if len(images) == 0 or len(train_x) == 0:
        raise UsageError("perceptual_alignment: needs at least one class image and one "
                         "training image.")
    if len(labels) != len(images) or len(train_y) != len(train_x):
        raise UsageError(f"perceptual_alignment: {len(images)} class images with "
                         f"{len(labels)} labels, {len(train_x)} training images with "
                         f"{len(train_y)} labels; each image needs exactly one label.")
    for name, lab in (("class_images_labels", labels), ("train_y", train_y)):
        if lab.min() < 0 or lab.max() >= num_classes:
            raise UsageError(f"perceptual_alignment: {name} must lie in [0, {num_classes}), "
                             f"got values from {int(lab.min())} to {int(lab.max())}.")
    if center not in ("dataset", "image", "none"):
        raise UsageError(f"perceptual_alignment: center must be 'dataset', 'image' or 'none', "
                         f"got {center!r}.")
    train_x = train_x.cpu()
    counts = torch.bincount(train_y, minlength=num_classes).double()
    flat = train_x.reshape(len(train_x), -1).double()
    sums = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64)
    sums.index_add_(0, train_y, flat)
    return alignment_from_sums(images, labels, sums.view(num_classes, *train_x.shape[1:]),
                               counts, center=center, grand=flat.mean(0))


def alignment_from_sums(images: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor,
                        counts: torch.Tensor, *, center: str = "dataset",
                        grand: torch.Tensor | None = None) -> float:
    """:func:`perceptual_alignment` from per-class sums ``(num_classes, C, H, W)`` (float64)
    and counts of training images, so the class means can be accumulated batch by batch from
    a bounded sample per class (``robench.data.class_sums``).  Only classes with a count are
    candidates.  ``grand`` is the flattened mean training image; by default the mean of
    the summed images."""
    images = _as_matrix(images, "images").cpu()
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    if center not in ("dataset", "image", "none"):
        raise UsageError(f"perceptual_alignment: center must be 'dataset', 'image' or 'none', "
                         f"got {center!r}.")
    num_classes = len(counts)
    if images.shape[1] != sums.shape[1]:
        images = images.mean(1, keepdim=True)
        sums = sums.mean(1, keepdim=True)
        grand = None if grand is None else \
            grand.view(-1, *sums.shape[2:]).mean(0).reshape(-1)
    if images.shape[-2:] != sums.shape[-2:]:
        images = F.interpolate(images, size=tuple(sums.shape[-2:]), mode="bilinear",
                               align_corners=False)
    missing = sorted({int(c) for c in labels if counts[c] == 0})
    if missing:
        raise UsageError(f"perceptual_alignment: no training image of class(es) {missing}, "
                         f"so their class images cannot be scored; pass training images of "
                         f"every class that has a class image.")
    flat_sums = sums.reshape(num_classes, -1)
    present = counts > 0
    means = flat_sums[present] / counts[present, None].double()
    mean_labels = torch.arange(num_classes)[present]
    pictures = images.reshape(len(images), -1).double()
    if center == "dataset":
        if grand is None:
            grand = flat_sums[present].sum(0) / counts[present].sum()
        grand = grand.reshape(1, -1)
        pictures, means = pictures - grand, means - grand
    elif center == "image":
        pictures = pictures - pictures.mean(1, keepdim=True)
        means = means - means.mean(1, keepdim=True)
    pictures = pictures / pictures.norm(dim=1, keepdim=True).clamp_min(1e-12)
    means = means / means.norm(dim=1, keepdim=True).clamp_min(1e-12)
    nearest = mean_labels[(pictures @ means.T).argmax(1)]
    return float((nearest == labels).double().mean())
