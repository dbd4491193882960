"""Displacement units: normalised coordinates, voxels and millimetres, along the array axes."""

from __future__ import annotations

from typing import Sequence

import torch

from .grid import constant, spatial_ndim


def normalised_to_voxel(disp: torch.Tensor) -> torch.Tensor:
    """Normalised displacement ``(B, n, *S)`` to voxels: ``d_vox = d_norm * S_k / 2``."""
    n = spatial_ndim(disp)
    scale = constant([s / 2 for s in disp.shape[2:]], disp.device, disp.dtype)
    return disp * scale.view(1, n, *([1] * n))


def voxel_to_normalised(disp: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalised_to_voxel`."""
    n = spatial_ndim(disp)
    scale = constant([2 / s for s in disp.shape[2:]], disp.device, disp.dtype)
    return disp * scale.view(1, n, *([1] * n))


def voxel_to_mm(disp: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Voxel displacement ``(B, n, *S)`` to millimetres along the array axes (``spacing`` per axis)."""
    n = spatial_ndim(disp)
    if len(spacing) != n:
        raise ValueError(f"need {n} spacings, got {list(spacing)}")
    sp = constant(spacing, disp.device, disp.dtype)
    return disp * sp.view(1, n, *([1] * n))


def mm_to_voxel(disp: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`voxel_to_mm`."""
    return voxel_to_mm(disp, [1.0 / s for s in spacing])
