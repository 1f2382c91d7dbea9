"""Small grids shared by the tests that compare two ways of running the same grid."""

from __future__ import annotations

from typing import Any

#: one digits-cnn model without adaptation, FGSM and 3-step PGD at two eps, no target
#: domain: seconds per run, and every attacked sample gets several gradients
TINY_GRID: dict[str, Any] = {
    "dataset": "digits",
    "target": "none",
    "backbones": ["digits-cnn"],
    "heads": ["linear"],
    "adaptors": ["none"],
    "attacks": ["fgsm", "pgd"],
    "eps": {"linf": ["2/255", "8/255"]},
    "epochs": 1,
    "reporters": ["csv"],
    "attack": {"pgd": {"steps": 3}},
}
