"""Dispatch modes that count what a block of PyTorch code does, on any device: the tensor memory it
keeps alive (:class:`LiveTensorMemory`), the aten ops it dispatches (:class:`OpCounter`) and its copies
between host and device (:class:`HostCopies`)."""

from __future__ import annotations

import os
import traceback
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

#: this package's folder: its own frames are never the call site of a copy
_PACKAGE_DIR = os.path.dirname(__file__)


class LiveTensorMemory(TorchDispatchMode):
    """Bytes of tensor storage alive, and their peak (``now``, ``peak``), among the storages that ops
    create while the mode is on: a storage counts from the op that makes it until it is freed (a weak
    reference to it), rounded up to the CUDA caching allocator's 512-byte blocks, so that ``peak`` is
    what ``torch.cuda.max_memory_allocated`` would show above the memory in use before (allocator
    fragmentation and library workspaces such as cuDNN's aside). Views and in-place results share an
    input's storage and add nothing; tensors made before the mode (weights, inputs) are not counted.

    It also runs on fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``): shapes without
    data, so the memory of a step at any size, on any machine, without the memory. Forward and
    backward both run under it (the backward's ops are dispatched in the mode too).
    """

    BLOCK = 512

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self._live: dict[int, tuple[int, weakref.ref]] = {}

    def _freed(self, key: int) -> None:
        self.now -= self._live.pop(key, (0, None))[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._live:
                continue
            size = -(-storage.nbytes() // self.BLOCK) * self.BLOCK
            self._live[key] = (size, weakref.ref(storage, lambda _, key=key: self._freed(key)))
            self.now += size
            self.peak = max(self.peak, self.now)
        return out


#: aten ops that only make another view of a storage: no kernel runs for them on a GPU
VIEW_OPS = frozenset({"view", "_unsafe_view", "reshape", "detach", "alias", "expand", "unsqueeze", "squeeze", "t",
                      "transpose", "permute", "select", "slice", "as_strided", "unbind", "split", "split_with_sizes",
                      "chunk", "narrow", "unfold", "view_as", "diagonal", "movedim", "lift_fresh"})


#: aten ops that read a value back to the host (``.item()``, ``float(t)``, ``bool(t)``, a data-dependent
#: shape, LAPACK's info checked by ``torch.linalg.solve`` / ``inv`` / ``eigh`` / ``cholesky`` to raise on a
#: singular matrix): on a GPU each waits for every kernel queued before it
HOST_SYNC_OPS = frozenset({"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "_unique2",
                           "unique_dim", "unique_consecutive", "_linalg_check_errors"})


class OpCounter(TorchDispatchMode):
    """The aten ops dispatched while the mode is on: ``kernels`` (every op but views: on a GPU each is
    at least one kernel launch, and PyTorch's per-op overhead on the host is paid for each), ``syncs``
    (:data:`HOST_SYNC_OPS`: each stops the host until the GPU has caught up), and ``by_op`` (op name →
    count). A step of hundreds of small kernels is bound by the host's launches, not by the GPU's
    arithmetic: the count tells which it is on any device."""

    def __init__(self):
        super().__init__()
        self.kernels = self.syncs = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.kernels += 1
            self.by_op[name] = self.by_op.get(name, 0) + 1
            self.syncs += name in HOST_SYNC_OPS
        return func(*args, **(kwargs or {}))


class HostCopies(TorchDispatchMode):
    """Copies between the host and a device while the mode is on, by call site (``sites``:
    ``"folder/file.py:line"`` → count, the innermost caller outside installed packages; ``total``):
    an op copying a tensor from one device to another (``.to(device)``, ``copy_``), and a tensor
    made on ``device`` from Python data
    (``torch.tensor(values, device=...)``, ``torch.as_tensor``: their copy runs below the dispatcher, so
    the two functions are wrapped while the mode is on). On a GPU each is a blocking copy: the host
    waits for every kernel queued before it, as for a read (:data:`HOST_SYNC_OPS`), and the GPU then
    idles until the host has queued the next ones.

    ``device``: the device type whose Python-data tensors count; ``"cpu"`` counts, on a CPU, what
    would be copies on a GPU (``.to`` between devices cannot happen there: :func:`step_host_copies`
    runs the step on the meta device to see those). ``reads``: the values read back to the host from
    a device (:data:`HOST_SYNC_OPS` on a tensor not on the host), by call site, apart: none on a CPU."""

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.device = torch.device(device).type
        self.sites: dict[str, int] = {}
        self.reads: dict[str, int] = {}
        self._wrapped: tuple = ()
        self._in_factory = False

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def _record(self, into: dict | None = None) -> None:
        """Count the innermost caller outside installed packages (the line to change), as ``folder/file:line``."""
        into = self.sites if into is None else into
        ours = [f for f in traceback.extract_stack() if "-packages/" not in f.filename
                and os.path.dirname(f.filename) != _PACKAGE_DIR]
        path = Path(ours[-1].filename) if ours else None
        site = f"{path.parent.name}/{path.name}:{ours[-1].lineno}" if ours else "(outside)"
        into[site] = into.get(site, 0) + 1

    def _factory(self, make):
        def wrapped(data, *args, device=None, **kwargs):
            if device is None or torch.device(device).type != self.device or isinstance(data, torch.Tensor):
                return make(data, *args, device=device, **kwargs)
            self._record()
            self._in_factory = True  # its own copy, if the dispatcher shows it, is this one
            try:
                return make(data, *args, device=device, **kwargs)
            finally:
                self._in_factory = False

        return wrapped

    def __enter__(self):
        self._wrapped = (torch.tensor, torch.as_tensor)
        torch.tensor, torch.as_tensor = (self._factory(f) for f in self._wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.tensor, torch.as_tensor = self._wrapped
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("_to_copy", "copy_") and args and isinstance(args[0], torch.Tensor):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0].device if name == "copy_" else torch.device(kwargs.get("device") or src.device)
            if isinstance(src, torch.Tensor) and src.device.type != dst.type and not self._in_factory:
                self._record()
        elif name in HOST_SYNC_OPS and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
            self._record(self.reads)  # a host tensor's value (Adam's step counts) is no synchronisation
        return func(*args, **kwargs)
