"""Where training data lives: resident on the device when it fits, streamed when it does not.

A dataset that fits comfortably in the device's free memory is copied there once, and every
batch is an index into it: no host work and no copy per step.  A larger one stays in host
memory; each batch is gathered on the host into one of two page-locked (pinned) buffers and
copied with ``non_blocking=True`` on a side CUDA stream, so the copy of one batch overlaps
the computation of the previous one, and the compute stream waits for the copy before using
the batch.  A buffer is reused only after the copy out of it has finished (a CUDA event
recorded on the copy stream of the data's own device), never while it may still be read.

On the CPU the data is always "resident": it is already where the computation runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: share of the device's free memory that resident data may take; the rest is for the model,
#: its activations and the optimiser
RESIDENT_FRACTION = 0.25


def resident_budget(device: torch.device) -> int | None:
    """Bytes of data that may stay resident on ``device`` (``None``: no limit)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * RESIDENT_FRACTION)


def nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class BatchSource:
    """Batches of aligned tensors (images, labels, ...) on ``device``, by sample index."""

    def __init__(self, tensors: Sequence[torch.Tensor], device: torch.device | str) -> None:
        self.device = torch.device(device)
        budget = resident_budget(self.device)
        self.resident = budget is None or nbytes(tensors) <= budget
        if self.resident:
            self.tensors = [t.to(self.device) for t in tensors]
        else:
            self.tensors = [t.contiguous() for t in tensors]
        self.pinned = not self.resident and self.device.type == "cuda"
        self._buffers: list[list[torch.Tensor]] = [[], []]
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._copy_stream: torch.cuda.Stream | None = None
        self._slot = 0

    def __len__(self) -> int:
        return len(self.tensors[0])

    @property
    def index_device(self) -> torch.device:
        """Where indices should live: the data's device (indices move once per epoch)."""
        return self.device if self.resident else torch.device("cpu")

    def take(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The rows ``idx`` of every tensor, on the device."""
        if self.resident:
            idx = idx.to(self.device, non_blocking=True)
            return [t[idx] for t in self.tensors]
        idx = idx.cpu()
        if not self.pinned:
            return [t.index_select(0, idx).to(self.device) for t in self.tensors]
        slot, self._slot = self._slot, 1 - self._slot
        event = self._events[slot]
        if event is not None:
            event.synchronize()  # the copy out of this buffer two batches ago has finished
        buffers = self._buffers[slot]
        if not buffers or len(buffers[0]) != len(idx):
            buffers = [torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype).pin_memory()
                       for t in self.tensors]
            self._buffers[slot] = buffers
        for t, buffer in zip(self.tensors, buffers, strict=True):
            torch.index_select(t, 0, idx, out=buffer)
        # the copy runs on a side stream, so it overlaps the computation queued on the
        # compute stream; the compute stream waits for it before using the batch
        compute = torch.cuda.current_stream(self.device)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            moved = [buffer.to(self.device, non_blocking=True) for buffer in buffers]
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        compute.wait_stream(self._copy_stream)
        for tensor in moved:
            tensor.record_stream(compute)  # the allocator must not reuse it before compute
        self._events[slot] = event
        return moved
