"""Out-of-memory back-off halves the batch and never retries an illegal memory access."""

from __future__ import annotations

import pytest
import torch

from robench.memory import is_out_of_memory, run_with_backoff


def test_halves_until_it_fits():
    tried = []

    def work(size: int) -> str:
        tried.append(size)
        if size > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert run_with_backoff(work, 100) == ("done", 12)
    assert tried == [100, 50, 25, 12]


def test_cpu_allocation_failure_is_retried_down_to_one():
    def work(size: int) -> int:
        if size > 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 1024 bytes")
        return size

    assert run_with_backoff(work, 7) == (1, 1)


def test_illegal_memory_access_and_other_errors_are_not_retried():
    calls = []

    def bad(size: int) -> None:
        calls.append(size)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal"):
        run_with_backoff(bad, 64)
    assert calls == [64]
    assert not is_out_of_memory(ValueError("out of memory"))
    with pytest.raises(torch.OutOfMemoryError):
        run_with_backoff(lambda s: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")), 1)
