"""Built-in defenses: adversarial training (``pgd-at``, ``trades``, ``fgsm-rs``) and
inference-time wrappers (``jpeg``, ``bit-depth``, ``random-resize-pad``)."""
