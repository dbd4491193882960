"""The matching head's cost volume: each point's descriptor dotted with its neighbours' within a
search window, with the grids and indices it reuses cached per size and device.

Two routes to the same values: an all-pairs matrix product on coarse grids, one product per
offset on fine ones, the latter with its own backward (:class:`_ShiftedProducts`).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import nn

#: :func:`cost_volume` takes the all-pairs route up to this many points per offset. In a one-off timing of
#: both routes (2D and 3D grids, 64 channels, one thread) they cost the same at about 20–28 points per
#: offset; the 3D matching head on a 48 × 56 × 48 volume has 16.1 (12 × 14 × 12 points, 125 offsets), where
#: the all-pairs route took 12.6 ms forward + backward against the shifted products' 30.9. The whole model:
#: ``benchmarks/interleaved.py`` (docs/performance.md).
DENSE_POINTS_PER_OFFSET = 20


def offsets(radii, device: torch.device | None = None, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """``(n, D)`` integer displacements within ``radii`` (tensor-axis order), built on ``device``
    once per radii, device and dtype and shared: never modify them in place."""
    return _offsets(tuple(int(r) for r in radii), torch.device(device or "cpu"), dtype)


def cost_volume(ea: torch.Tensor, eb: torch.Tensor, radii) -> torch.Tensor:
    """``(B, D, *S)``: at each point, ``eb``'s descriptor dotted with ``ea``'s displaced by each of
    :func:`offsets` (same order), ``ea`` replicated beyond its border.

    Two ways to the same values (within float rounding), chosen by size: on a coarse grid (at most
    :data:`DENSE_POINTS_PER_OFFSET` points per offset) every point's descriptor is dotted with every
    other's in one matrix product and the window is gathered from it, several times faster there
    than D shifted products; on finer grids, where the all-pairs product grows with the square of
    the points, one shifted product per offset."""
    size = ea.shape[2:]
    if math.prod(size) <= DENSE_POINTS_PER_OFFSET * math.prod([2 * r + 1 for r in radii]):
        b = ea.shape[0]
        corr = torch.bmm(eb.flatten(2).transpose(1, 2), ea.flatten(2))  # (B, fixed points, moving points)
        index = _window_index(tuple(size), tuple(radii), ea.device)  # (P, D)
        return corr.gather(2, index.expand(b, -1, -1)).transpose(1, 2).reshape(b, -1, *size)
    # slices from Python integers: offsets read off a tensor cost a host read per axis and offset
    windows = tuple((slice(None), slice(None)) + tuple(slice(r + o, r + o + s) for r, o, s in zip(radii, off, size))
                    for off in itertools.product(*[range(-r, r + 1) for r in radii]))  # the order of offsets()
    if torch.compiler.is_compiling():
        # inductor stops at F.pad(mode="replicate")'s backward (its strides disagree with its fake
        # kernel's); an index per axis compiles to the same loads. Eager, F.pad is 4x faster (CPU).
        # Autograd's own backward of the windows: inductor fuses it.
        pad = ea
        for axis, (s, r) in enumerate(zip(size, radii)):
            pad = pad.index_select(2 + axis, _replicate_index(int(s), int(r), ea.device))
        return _shifted_products(pad, eb, windows)
    pad = nn.functional.pad(ea, [p for r in reversed(radii) for p in (r, r)], mode="replicate")
    return _ShiftedProducts.apply(pad, eb, windows)


def clear_caches() -> None:
    """Empty the offsets and indices cached by :func:`offsets` and :func:`cost_volume`."""
    _offsets.cache_clear()
    _replicate_index.cache_clear()
    _window_index.cache_clear()


@functools.lru_cache(maxsize=16)
def _offsets(radii: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        grids = torch.meshgrid(*[torch.arange(-r, r + 1, device=device, dtype=dtype) for r in radii], indexing="ij")
        return torch.stack(grids, 0).flatten(1)


def _shifted_products(pad: torch.Tensor, eb: torch.Tensor, windows: tuple) -> torch.Tensor:
    """``(B, D, *S)``: ``eb (B, d, *S)`` dotted over ``d`` with each window (a tuple of slices) of
    ``pad (B, d, *S + 2r)``."""
    return torch.stack([(eb * pad[w]).sum(1) for w in windows], 1)


class _ShiftedProducts(torch.autograd.Function):
    """:func:`_shifted_products` with a backward that adds each window's gradient into one gradient of
    ``pad``, in place: autograd's own backward of the windows builds a zero tensor of ``pad``'s size per
    window and axis and adds them up (2 of 3 of the FIRE step's ``slice_backward`` ops, 12 % of its CPU
    time in the demo model), about 8 ops per window against 2 here."""

    @staticmethod
    def forward(ctx, pad: torch.Tensor, eb: torch.Tensor, windows: tuple) -> torch.Tensor:
        ctx.save_for_backward(pad, eb)
        ctx.windows = windows
        return _shifted_products(pad, eb, windows)

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative (create_graph) raises, not guesses
    def backward(ctx, grad: torch.Tensor):
        pad, eb = ctx.saved_tensors
        want_pad, want_eb = ctx.needs_input_grad[:2]
        g_pad = torch.zeros_like(pad) if want_pad else None
        g_eb = torch.zeros_like(eb) if want_eb else None
        for k, w in enumerate(ctx.windows):
            g = grad[:, k : k + 1]  # (B, 1, *S), a view
            if want_pad:
                g_pad[w].addcmul_(g, eb)
            if want_eb:
                g_eb.addcmul_(g, pad[w])
        return g_pad, g_eb, None


@functools.lru_cache(maxsize=32)
def _replicate_index(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """``(size + 2 radius,)``: the index of each point of an axis padded by ``radius`` on each side,
    the border replicated (clamped)."""
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        return torch.arange(-radius, size + radius, device=device).clamp(0, size - 1)


@functools.lru_cache(maxsize=16)
def _window_index(size: tuple[int, ...], radii: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(P, D)`` flat index of each point's neighbour at each of :func:`offsets`,
    clamped to the grid (the border replicated); built once per grid."""
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        coords = torch.meshgrid(*[torch.arange(s, device=device) for s in size], indexing="ij")
        off = offsets(radii, device)  # (n, D)
        index = torch.zeros((), dtype=torch.long, device=device)
        for c, o, s in zip(coords, off, size):
            index = index * s + (c.reshape(-1, 1) + o).clamp(0, s - 1)
        return index

