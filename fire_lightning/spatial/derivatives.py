"""Spatial derivatives of fields: the Jacobian determinant of a transform and the Laplacian."""

from __future__ import annotations

from typing import Sequence

import torch

from .grid import float32, spatial_ndim
from .units import normalised_to_voxel


def _gradient(f: torch.Tensor, axis: int) -> torch.Tensor:
    """Central differences along spatial ``axis`` (one-sided at the edges), unit spacing."""
    dim = axis + 2
    size = f.shape[dim]
    if size < 2:
        return torch.zeros_like(f)
    fwd = f.narrow(dim, 1, size - 1) - f.narrow(dim, 0, size - 1)  # (.., size-1, ..)
    first = fwd.narrow(dim, 0, 1)
    last = fwd.narrow(dim, size - 2, 1)
    if size == 2:
        return torch.cat([first, last], dim=dim)
    central = (fwd.narrow(dim, 0, size - 2) + fwd.narrow(dim, 1, size - 2)) / 2
    return torch.cat([first, central, last], dim=dim)


@float32
def jacobian_determinant(disp: torch.Tensor, unit: str = "normalised") -> torch.Tensor:
    """Jacobian determinant of ``phi(p) = p + u(p)`` in voxel units.

    Args:
        disp: ``(B, n, *S)`` displacement.
        unit: ``"normalised"`` (converted to voxels first) or ``"voxel"``.

    Returns:
        ``(B, *S)``; 1 for the identity, ``prod(scales)`` for a scaling, ``<= 0`` where
        the transform folds.
    """
    n = spatial_ndim(disp)
    if unit not in ("normalised", "voxel"):
        raise ValueError(f"unit must be 'normalised' or 'voxel', got {unit!r}")
    u = normalised_to_voxel(disp) if unit == "normalised" else disp
    # J[i][j] = d phi_i / d p_j = delta_ij + d u_i / d p_j
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            g = _gradient(u[:, i : i + 1], j)[:, 0]
            row.append(g + (1.0 if i == j else 0.0))
        rows.append(row)
    if n == 2:
        return rows[0][0] * rows[1][1] - rows[0][1] * rows[1][0]
    a, b, c = rows
    return (
        a[0] * (b[1] * c[2] - b[2] * c[1])
        - a[1] * (b[0] * c[2] - b[2] * c[0])
        + a[2] * (b[0] * c[1] - b[1] * c[0])
    )


@float32
def laplacian(field: torch.Tensor, spacing: Sequence[float] | str | None = None) -> torch.Tensor:
    """Discrete Laplacian ``sum_k d²f/dp_k²`` per channel.

    The borders are padded by linear extrapolation, so the Laplacian of a field that is linear
    in the coordinates (an affine field) is exactly zero everywhere, borders included.

    Args:
        field: ``(B, C, *S)``.
        spacing: grid spacing per axis; ``None`` = 1 (voxel units), ``"normalised"`` = ``2 / S_k``
            (derivatives with respect to the normalised coordinates p ∈ [-1, 1]^n).

    Returns:
        ``(B, C, *S)``.
    """
    n = spatial_ndim(field)
    if spacing is None:
        spacing = [1.0] * n
    elif isinstance(spacing, str):
        if spacing != "normalised":
            raise ValueError(f"spacing must be a sequence, None or 'normalised', got {spacing!r}")
        spacing = [2.0 / s for s in field.shape[2:]]
    out = torch.zeros_like(field)
    for k in range(n):
        dim = k + 2
        size = field.shape[dim]
        if size < 3:
            continue
        lo = 2 * field.narrow(dim, 0, 1) - field.narrow(dim, 1, 1)
        hi = 2 * field.narrow(dim, size - 1, 1) - field.narrow(dim, size - 2, 1)
        padded = torch.cat([lo, field, hi], dim=dim)
        second = padded.narrow(dim, 0, size) - 2 * field + padded.narrow(dim, 2, size)
        out = out + second / float(spacing[k]) ** 2
    return out
