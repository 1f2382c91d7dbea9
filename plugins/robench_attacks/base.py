"""The base class of the native attacks: identity, threat model, kind and parameters."""

from __future__ import annotations

from typing import Any

from robench_attacks._core import Tensor, check_batch


class NativeAttack:
    """Base of the native attacks: name, threat model, kind and reported parameters.

    ``threat`` and ``kind`` mirror the spec; the harness reads them from the object when
    present, which lets one class serve several threat models.
    """

    name: str = ""
    threat: str = "linf"
    kind: str = "bounded"
    targeted_ok: bool = False

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def _batch(
        self, x: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        return check_batch(x, y, target, attack=self.name, targeted_ok=self.targeted_ok)
