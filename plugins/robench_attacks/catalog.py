"""What ``robench plugins`` lists about the corruptions, without importing torch.

One entry per class of :data:`robench_attacks.corruptions.CORRUPTIONS`, in its order: the
attack name, the class that builds it, and its one-line ``summary``.  The registration module
reads this; the classes are imported only when a corruption is built or its parameters are
checked.  Keep it in step with those classes' ``name`` and ``summary``.
"""

from __future__ import annotations

#: (attack name, class name in :mod:`robench_attacks.corruptions`, summary)
CORRUPTIONS: tuple[tuple[str, str, str], ...] = (
    ("gaussian-noise", "GaussianNoise", "Additive Gaussian noise, std 0.04..0.10."),
    ("gaussian-blur", "GaussianBlur",
     "Gaussian blur, sigma 0.4..1.0 px at 32x32, scaled with size."),
    ("contrast", "Contrast", "Contrast reduction to 0.75..0.15 around the channel mean."),
    ("brightness", "Brightness", "Brightness: +0.05..0.3 on the HSV value."),
    ("jpeg", "Jpeg", "JPEG compression at quality 80..40."),
)
