"""Spatial transforms: the one place that builds grids, warps, composes and converts.

One module per job: :mod:`.grid` (grids, shared constants, the float32 guard), :mod:`.warping`
(resampling), :mod:`.affine` (affine matrices), :mod:`.composition` (chaining transforms, resizing and
integrating fields), :mod:`.units` (normalised, voxel and mm displacements) and :mod:`.derivatives`
(Jacobian determinant, Laplacian). Everything public is re-exported here: ``spatial.warp(...)``.

Conventions (docs/method.md, "Notation"):

* Tensors are channel-first: images ``(B, C, *S)`` with ``S = (H, W)`` in 2D and
  ``(H, W, D)`` in 3D (any order the caller likes, as long as it is consistent).
* Displacement fields ``u`` are ``(B, n, *S)``; channel ``k`` is the displacement along
  spatial axis ``k`` of the tensor (not the reversed ``(x, y, z)`` order of
  :func:`torch.nn.functional.grid_sample`; that reversal happens here and only here).
* Coordinates are *normalised*: each axis spans ``[-1, 1]`` with ``align_corners=False``
  (``-1`` and ``1`` are the outer edges of the first and last voxel), so a normalised
  field means the same thing at every resolution.
* A transform ``phi`` maps a point ``p`` of the output (fixed) grid to the point of the
  input (moving) image that is sampled there: ``warp(x, phi)(p) = x(phi(p))``
  (backward warping). ``phi(p) = p + u(p)``.
* An affine transform is a matrix ``theta`` of shape ``(B, n, n + 1)`` acting on
  normalised coordinates in tensor-axis order: ``phi(p) = theta[:, :, :n] @ p + theta[:, :, n]``.
* Composition ``compose(u1, u2)`` is ``phi1 ∘ phi2``, i.e. ``p -> phi1(phi2(p))``; the
  image warped by it is ``x ∘ phi1 ∘ phi2`` = "first phi1's resampling, then phi2's".
* Geometry is float32 under mixed precision (:func:`float32`): every function here runs with
  autocast off on float32 copies of its inputs, so a bf16 run's grids, affines and fields are
  as exact as an fp32 run's (bf16 keeps 8 bits: a coordinate near 1 would be off by 1/256, half
  a voxel at 128 voxels).
"""

from __future__ import annotations

from .affine import (
    MOMENT_MODES,
    affine_to_displacement,
    apply_affine,
    compose_affine,
    fit_affine,
    fit_affine_to_field,
    identity_affine,
    invert_affine,
    moments_affine,
)
from .composition import compose, compose_affine_displacement, integrate_velocity, resize_field
from .derivatives import jacobian_determinant, laplacian
from .grid import (
    clear_grid_cache,
    constant,
    float32,
    identity_grid,
    spatial_ndim,
)
from .units import mm_to_voxel, normalised_to_voxel, voxel_to_mm, voxel_to_normalised
from .warping import sample_at, warp, warp_labels

__all__ = [
    "float32",
    "identity_grid",
    "constant",
    "warp",
    "warp_labels",
    "affine_to_displacement",
    "identity_affine",
    "apply_affine",
    "invert_affine",
    "compose_affine",
    "fit_affine",
    "fit_affine_to_field",
    "moments_affine",
    "compose",
    "compose_affine_displacement",
    "resize_field",
    "integrate_velocity",
    "jacobian_determinant",
    "normalised_to_voxel",
    "voxel_to_normalised",
    "voxel_to_mm",
    "mm_to_voxel",
    "laplacian",
    "sample_at",
    "clear_grid_cache",
    "spatial_ndim",
    "MOMENT_MODES",
]
