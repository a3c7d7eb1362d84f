"""Prove on the CPU that code never forces a host-device synchronisation.

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``bool(t)``,
``if t: ...``) or producing a shape that depends on data (``nonzero``, ``masked_select``,
boolean indexing) stalls the CPU until the device catches up, and makes a step impossible to
capture in a CUDA graph. Those calls all reach a few ATen ops, which :class:`SyncGuard`
intercepts with a ``TorchDispatchMode`` and turns into :class:`HostSyncError`, so a CPU test
can show that a training step is sync-free.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: ATen ops that force a sync on a GPU: scalar reads and data-dependent output shapes.
SYNC_OPS = frozenset({
    aten._local_scalar_dense,   # .item(), float(t), int(t), bool(t), if t: ...
    aten.nonzero,               # torch.nonzero, torch.where(cond), boolean indexing
    aten.masked_select,
    aten.unique_consecutive,
    aten._unique2,
    aten.repeat_interleave,     # with a tensor of repeats
    aten.equal,                 # torch.equal returns a Python bool
    aten.is_nonzero,
})


class HostSyncError(RuntimeError):
    """Raised inside :class:`SyncGuard` when an op would synchronise host and device."""


class SyncGuard(TorchDispatchMode):
    """Context manager raising :class:`HostSyncError` on any op of :data:`SYNC_OPS`.

    Example::

        with SyncGuard():
            stepper.step(batch)      # raises if the step reads a value on the host
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS or _is_boolean_indexing(func, args):
            raise HostSyncError(
                f"{func} would force a host-device synchronisation (a value read on the "
                "host, or an output shape that depends on data)"
            )
        return func(*args, **(kwargs or {}))


def _is_boolean_indexing(func, args) -> bool:
    """``t[mask]`` with a boolean mask: its output size depends on the mask's values."""
    if func.overloadpacket not in (aten.index, aten.index_put, aten._index_put_impl_):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(i is not None and i.dtype == torch.bool for i in indices)
