"""Out-of-memory back-off: retry a task with half the batch size, down to 1.

A CUDA ``OutOfMemoryError`` or a CPU allocator failure is retried; an illegal memory access
(a real bug, and one that leaves the CUDA context unusable) never is.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory",
                "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        if "illegal memory access" in text:
            return False
        return isinstance(exc, MemoryError) or any(m in text for m in _OOM_MARKERS)
    return False


def run_with_backoff(fn: Callable[[int], T], batch_size: int) -> tuple[T, int]:
    """``fn(batch_size)``, halving ``batch_size`` after each out-of-memory failure.

    Returns the result and the batch size that worked.
    """
    size = max(1, int(batch_size))
    while True:
        try:
            return fn(size), size
        except Exception as exc:
            if not is_out_of_memory(exc) or size == 1:
                raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        size = max(1, size // 2)
