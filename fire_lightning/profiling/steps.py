"""One FIRE training step measured on its own: the bytes it saves for its backward, its peak tensor
memory, its ops and its host↔device copies (the last on the meta device, or on fake tensors, so any
size costs no memory)."""

from __future__ import annotations

import contextlib

import torch
from omegaconf import DictConfig
from torch.utils._python_dispatch import TorchDispatchMode

from ..module import FIREModule
from ..nets.fire import fresh_caches
from .counters import HostCopies, LiveTensorMemory, OpCounter


def saved_for_backward(model: FIREModule, batch: dict, context=contextlib.nullcontext) -> int:
    """Bytes that one FIRE training forward (:func:`losses.fire_forward` + :func:`losses.fire_loss`)
    keeps for its backward, each storage counted once: the activation memory of a step, which
    ``model.synthesis.checkpoint_activations`` cuts, measured the same way on a CPU and a GPU."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()  # the storage's own address: fake tensors have no data
        return t

    model.train()
    with context(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, loss = model._forward_loss(batch)
    del out, loss
    return sum(seen.values())


def _forward_backward(model: FIREModule, batch: dict, mode: TorchDispatchMode, context=contextlib.nullcontext):
    """``mode`` after one FIRE training forward and backward run under it (optimiser steps apart).
    Gradients start at None, as after a training step's ``zero_grad`` (else the backward would add
    into them), and are cleared again afterwards."""
    model.train()
    model.zero_grad(set_to_none=True)
    with context(), mode:
        out, loss = model._forward_loss(batch)
        loss.total.backward()
        del out, loss
    model.zero_grad(set_to_none=True)
    return mode


def step_ops(model: FIREModule, batch: dict, context=contextlib.nullcontext) -> OpCounter:
    """The ops of one FIRE training forward and backward (:class:`OpCounter`)."""
    return _forward_backward(model, batch, OpCounter(), context)


def step_host_copies(cfg: DictConfig, **module_kwargs) -> HostCopies:
    """The host↔device copies (:class:`HostCopies`) of one FIRE training forward + backward at the
    config's batch and shape, counted on the meta device (shapes without data or arithmetic, so any
    size costs milliseconds and no memory): every tensor the step builds on the host and moves to the
    images' device shows there, as on a GPU. Counted in a second step, after the first has built the
    constants shared between steps (grids, offsets); the shared caches are emptied before and after."""
    with fresh_caches():
        with torch.device("meta"):  # the model only: tensors the step makes without a device stay on the host
            model = FIREModule(cfg, **module_kwargs)
        shape = (int(cfg.data.batch_size), 1, *cfg.data.size)
        batch = {k: torch.empty(shape, device="meta") for k in ("moving", "fixed")}
        _forward_backward(model, batch, HostCopies("meta"))
        return _forward_backward(model, batch, HostCopies("meta"))


@contextlib.contextmanager
def fake_tensors():
    """``FakeTensorMode``: tensors made inside have shapes, dtypes and devices but no data, and ops
    on them compute nothing. The shared grid caches are emptied on entry and exit."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with fresh_caches(), FakeTensorMode():
        yield


def step_memory(model: FIREModule, batch: dict) -> int:
    """Peak bytes of tensor memory that one FIRE training forward and backward adds to the weights
    and inputs (:class:`LiveTensorMemory`; the gradients included, the optimisers' states not)."""
    return _forward_backward(model, batch, LiveTensorMemory()).peak
