"""Composing transforms: the one place that chains displacement fields (and an affine with a field),
integrates a velocity field, and moves a field to another grid."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .affine import apply_affine
from .grid import constant, float32, identity_grid, spatial_ndim
from .warping import warp


@float32
def compose(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Compose two displacement fields: ``phi = phi1 ∘ phi2``.

    ``u(p) = u2(p) + u1(p + u2(p))``, so ``warp(x, u) ≈ warp(warp(x, u1), u2)``.

    Args:
        u1: ``(B, n, *S1)``, applied last to the coordinates (sampled).
        u2: ``(B, n, *S2)``; the result lives on u2's grid.

    Returns:
        ``(B, n, *S2)``.
    """
    return u2 + warp(u1, u2, padding_mode="border")


@float32
def compose_affine_displacement(theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``phi_af ∘ phi_nr`` as one displacement field: ``theta(p + u(p)) - p``.

    Exact (no interpolation): the affine is evaluated analytically at the displaced points.

    Args:
        theta: ``(B, n, n + 1)``.
        u: ``(B, n, *S)`` non-rigid displacement.

    Returns:
        ``(B, n, *S)``.
    """
    ident = identity_grid(u.shape[2:], u.device, u.dtype)
    return apply_affine(theta, ident + u) - ident.expand_as(u)


@float32
def resize_field(field: torch.Tensor, shape: Sequence[int], unit: str = "normalised") -> torch.Tensor:
    """Resample a displacement field to another grid, keeping its vectors correct.

    Normalised vectors mean the same at every resolution and are only interpolated;
    voxel vectors are also multiplied by the per-axis size ratio.

    Args:
        field: ``(B, n, *S_in)``.
        shape: the new spatial shape ``S_out``.
        unit: ``"normalised"`` or ``"voxel"``.

    Returns:
        ``(B, n, *S_out)``.
    """
    n = spatial_ndim(field)
    if unit not in ("normalised", "voxel"):
        raise ValueError(f"unit must be 'normalised' or 'voxel', got {unit!r}")
    shape = tuple(int(s) for s in shape)
    if tuple(field.shape[2:]) == shape:
        return field
    mode = "bilinear" if n == 2 else "trilinear"
    out = F.interpolate(field, size=shape, mode=mode, align_corners=False)
    if unit == "voxel":
        ratio = constant([so / si for so, si in zip(shape, field.shape[2:])], field.device, field.dtype)
        out = out * ratio.view(1, n, *([1] * n))
    return out


@float32
def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of ``exp(v)`` for a stationary velocity field.

    Args:
        velocity: ``(B, n, *S)`` normalised.
        steps: number of squarings (the field is scaled by ``2**-steps`` first).

    Returns:
        ``(B, n, *S)`` displacement of a diffeomorphism (for smooth, small enough ``v``).
    """
    u = velocity / (2**steps)
    for _ in range(steps):
        u = compose(u, u)
    return u
