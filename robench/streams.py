"""Per-sample random streams: a sample's random draws do not depend on its batch or shard.

An attack with random starts or restarts draws noise for a batch.  Drawn from one generator
for the whole batch, sample ``i``'s noise would depend on which samples came before it in
the batch, so splitting a task into shards, or a batch into smaller ones (an out-of-memory
back-off), would change its result.  Instead the harness gives every sample its own stream,
seeded from the grid's seed, the eps being attacked and the sample's index in the evaluated
subset, and activates the streams of a batch's samples around each ``perturb`` call
(:func:`use`).  A native attack's :class:`robench_attacks._core.Rng` draws from them: a
draw whose first dimension is the batch's row count gives row ``r`` the next numbers of
row ``r``'s stream.  An attack that works on a part of its batch (restarts on the samples
not yet fooled) says so with :func:`rows`.

Draws of another shape, and attacks that draw from torch's global generator (foolbox's,
third-party plugins, randomised defenses), are not per sample: the harness seeds the global
generator per batch from the seed, the eps and the batch's first sample, so they are
reproducible for a given shard size and depend on batch composition (docs/protocol.md).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch

__all__ = ["SampleStreams", "current", "rows", "sample_seed", "use"]


def sample_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and machines)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class SampleStreams:
    """The random streams of a batch's rows: row ``r`` is sample ``ids[r]``.

    ``base`` identifies the work (seed, eps, attempt); sample ``i``'s stream is a CPU
    generator seeded with ``sample_seed(base, i)``, created at its first draw and kept for
    the life of the object (successive draws continue it).  Draws are made on the CPU in
    float32 and moved to the caller's device and dtype, so they are the same on every device.
    """

    def __init__(self, base: int, ids: Sequence[int] | torch.Tensor,
                 _generators: dict[int, torch.Generator] | None = None) -> None:
        self.base = int(base)
        self.ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        self._generators = {} if _generators is None else _generators

    def __len__(self) -> int:
        return len(self.ids)

    def narrow(self, index: torch.Tensor | Sequence[int]) -> SampleStreams:
        """The streams of rows ``index`` of this batch (sharing their generators)."""
        positions = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        return SampleStreams(self.base, [self.ids[int(p)] for p in positions],
                             self._generators)

    def _generator(self, sample: int) -> torch.Generator:
        gen = self._generators.get(sample)
        if gen is None:
            gen = self._generators[sample] = torch.Generator().manual_seed(
                sample_seed(self.base, sample))
        return gen

    def _rows(self, draw, shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != len(self.ids):
            raise ValueError(f"a per-sample draw needs {len(self.ids)} rows, got shape {shape}")
        if not self.ids:
            return draw(shape, None)
        return torch.stack([draw(shape[1:], self._generator(i)) for i in self.ids])

    def rand(self, shape: Sequence[int], *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = self._rows(lambda s, g: torch.rand(s, generator=g), shape)
        return out.to(device=device, dtype=dtype)

    def randn(self, shape: Sequence[int], *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = self._rows(lambda s, g: torch.randn(s, generator=g), shape)
        return out.to(device=device, dtype=dtype)

    def randint(self, low: int, high: int, shape: Sequence[int], *,
                device: torch.device | str = "cpu") -> torch.Tensor:
        out = self._rows(lambda s, g: torch.randint(low, high, s, generator=g), shape)
        return out.to(device=device)


_current: ContextVar[SampleStreams | None] = ContextVar("robench_sample_streams", default=None)


def current() -> SampleStreams | None:
    """The streams of the rows being attacked now, or None outside the harness."""
    return _current.get()


@contextlib.contextmanager
def use(streams: SampleStreams | None) -> Iterator[SampleStreams | None]:
    """Make ``streams`` the current ones inside the block."""
    token = _current.set(streams)
    try:
        yield streams
    finally:
        _current.reset(token)


@contextlib.contextmanager
def rows(index: torch.Tensor | Sequence[int]) -> Iterator[SampleStreams | None]:
    """Inside the block, the current streams are those of rows ``index`` of the current
    batch (an attack restarting on the samples it has not fooled yet).  Nothing happens
    when no streams are active."""
    streams = _current.get()
    with use(streams.narrow(index) if streams is not None else None) as narrowed:
        yield narrowed
