"""Grids and shared constants: the voxel-centre coordinates every warp samples around, small
constant tensors built once per device, and the float32 guard that keeps geometry exact under
mixed precision."""

from __future__ import annotations

import functools
from typing import Sequence

import torch


def float32(fn):
    """Run ``fn`` in float32 with autocast off when autocast is on (mixed precision): floating
    tensor arguments are cast to float32, so results are float32. Without autocast: ``fn`` as is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        if not (torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)):  # meta has no autocast
            return fn(*args, **kwargs)

        def cast(a):
            return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        with torch.autocast(dev, enabled=False):
            return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})

    return wrapper


def spatial_ndim(x: torch.Tensor) -> int:
    """The number of spatial axes ``n`` of a ``(B, C, *S)`` tensor (2 or 3; anything else is an error)."""
    n = x.dim() - 2
    if n not in (2, 3):
        raise ValueError(f"expected a (B, C, *S) tensor with 2 or 3 spatial dims, got shape {tuple(x.shape)}")
    return n


def identity_grid(
    shape: Sequence[int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised coordinates of the voxel centres of a grid.

    Args:
        shape: spatial shape ``S`` (2 or 3 values).

    Returns:
        ``(1, n, *S)``: channel ``k`` holds the coordinate along axis ``k``,
        ``(2 i + 1) / S_k - 1`` (``align_corners=False``). Built once per shape, device and dtype
        and shared (every warp needs one; building it is most of a small warp's cost): never
        modify it in place.
    """
    return _identity_grid(tuple(int(s) for s in shape), torch.device(device or "cpu"), dtype)


@functools.lru_cache(maxsize=32)
def _identity_grid(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # an ordinary tensor even when first asked for under inference mode (Lightning's validation),
    # so that training can use the shared grid afterwards
    with torch.inference_mode(False), torch.no_grad():
        axes = [(torch.arange(s, device=device, dtype=dtype) * 2 + 1) / s - 1 for s in shape]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack(mesh, dim=0).unsqueeze(0)


def constant(values, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``values`` (numbers, nested sequences or an array: per-axis scales, a small matrix) as a tensor
    on ``device``, built once per values, device and dtype and shared, like :func:`identity_grid`:
    never modify it in place.

    On a GPU, ``torch.tensor(values, device=...)`` copies from the host and waits for every kernel
    queued before it, at each call; a training iteration asks for the same few constants every time
    (:class:`profiling.HostCopies` counts what is left)."""
    shape, flat = _flatten(values.tolist() if hasattr(values, "tolist") else values)
    return _constant(shape, flat, torch.device(device or "cpu"), dtype)


def _flatten(values) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Nested sequences of numbers → (shape, the numbers in row-major order)."""
    if not isinstance(values, (list, tuple)):
        return (), (float(values),)
    parts = [_flatten(v) for v in values]
    shapes = {shape for shape, _ in parts}
    if len(shapes) > 1:
        raise ValueError(f"ragged constant: {values!r}")
    inner = shapes.pop() if shapes else ()
    return (len(parts), *inner), tuple(x for _, flat in parts for x in flat)


@functools.lru_cache(maxsize=64)
def _constant(shape: tuple[int, ...], values: tuple[float, ...], device: torch.device, dtype: torch.dtype
              ) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        return torch.tensor(values, device=device, dtype=dtype).reshape(shape)


def clear_grid_cache() -> None:
    """Empty the shared grids and constants (:func:`identity_grid`, :func:`constant`): before and after
    running on fake tensors or on the meta device, whose tensors must neither meet real ones nor outlive
    their use."""
    _identity_grid.cache_clear()
    _constant.cache_clear()
