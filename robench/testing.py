"""Helpers for testing robench and its plugins.

:class:`HostReads` counts the tensor operations that make the host wait for the device: on
a GPU, reading a device value on the host (``.item()``, ``bool(t)``, ``nonzero``, indexing
with a boolean mask, whose result shape depends on the data) drains the queue of kernels.
It works through a ``TorchFunctionMode``, which sees tensor operations on every device, so
a loop can be checked on the CPU: run it with two step counts, and equal counts mean no
host read per step::

    with HostReads() as reads:
        attack.perturb(model, x, y, eps)
    print(reads.count, reads.names)
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: operations whose result needs a device value on the host
HOST_READ_OPS = frozenset({
    "__bool__", "item", "tolist", "nonzero", "argwhere", "__int__", "__float__", "__index__",
    "masked_select", "unique", "unique_consecutive",
})
_DISPATCH_FILES = ("robench/testing.py", "torch/overrides.py", "torch/_tensor.py")
_INDEXING_OPS = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})


def _has_bool_tensor(arg: Any) -> bool:
    if isinstance(arg, torch.Tensor):
        return arg.dtype == torch.bool
    if isinstance(arg, (tuple, list)):
        return any(_has_bool_tensor(a) for a in arg)
    return False


class HostReads(TorchFunctionMode):
    """Counts, while active, the tensor operations that synchronise a device with the host.

    ``ignore``: path fragments of source files whose reads are not counted, for code known to
    read host-side tensors only (e.g. ``"torch/optim/"``: a non-capturable optimiser keeps
    its step counters on the CPU, so its ``.item()`` calls never wait for a GPU).
    """

    def __init__(self, ignore: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.count = 0
        self.names: list[str] = []
        self.ignore = tuple(ignore)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        masked = name in _INDEXING_OPS and _has_bool_tensor(args[1:2])
        single_where = name == "where" and len(args) == 1 and not kwargs
        if (name in HOST_READ_OPS or masked or single_where) and not self._ignored():
            self.count += 1
            self.names.append(name)
        return func(*args, **(kwargs or {}))

    def _ignored(self) -> bool:
        """Whether the code that asked for the read lives in an ignored file."""
        if not self.ignore:
            return False
        for frame in reversed(traceback.extract_stack(limit=12)):
            path = frame.filename.replace("\\", "/")
            if path.endswith(_DISPATCH_FILES):
                continue  # this module, and torch's dispatch of the call to the mode
            return any(fragment in path for fragment in self.ignore)
        return False
