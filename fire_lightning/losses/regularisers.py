"""The smoothness regulariser of T_nr's field, (10), and its weight λ, (13); the MI-CNN's gradient term."""

from __future__ import annotations

import math

import torch

from .. import spatial


def smoothness(disp_nr: torch.Tensor, image_shape=None) -> torch.Tensor:
    """(10) one direction's ``||∇² phi_nr||²``: squared Laplacian summed over points and channels, batch-averaged.

    Units (the paper leaves them open): with ``image_shape`` the field and the derivatives are
    in *image voxels* (phi_nr produced on the feature grid, converted to the image grid's
    voxel units), so the penalty of a deformation of so many voxels does not depend on the
    network's feature stride; without it, both are in normalised coordinates p ∈ [-1, 1]^n.
    The two differ by the factor ``(2 / S_k)²`` per axis (about 1e-3 for a 64-pixel image).

    Args:
        disp_nr: ``(B, n, *S/4)`` normalised displacement on the feature grid.
        image_shape: the input image's spatial shape ``S``, or None for normalised units.
    """
    if image_shape is None:
        lap = spatial.laplacian(disp_nr, spacing="normalised")
    else:
        n = disp_nr.shape[1]
        half = spatial.constant([s / 2 for s in image_shape], disp_nr.device, disp_nr.dtype)
        u_vox = disp_nr * half.view(1, n, *([1] * n))  # image-voxel displacement
        step = [si / sf for si, sf in zip(image_shape, disp_nr.shape[2:])]  # feature step in image voxels
        lap = spatial.laplacian(u_vox, spacing=step)
    return lap.pow(2).flatten(1).sum(1).mean()


def smoothness_weight(n: int, image_shape) -> float:
    """λ = 2^{2n} / (10 N), N = number of points of the input image (13).

    The Laplacian is evaluated where phi_nr is produced, on the feature grid with N / 4^n
    points, so λ·R_smooth is 0.1 × the mean squared Laplacian per feature point.
    """
    return 2 ** (2 * n) / (10 * math.prod([int(s) for s in image_shape]))


def gradient_smoothness(disp: torch.Tensor, image_shape) -> torch.Tensor:
    """The MI-CNN's smoothness term ``||∇u||²``: per sample the mean over points of the squared forward
    differences of every component along every axis, batch-averaged (the paper sums over points; the mean
    only rescales its λ and makes it independent of the image size).

    Units: ``u`` in image voxels and differentiated per image voxel, so a field produced on a coarser grid
    than the image's is penalised as the same deformation on the image.

    Args:
        disp: ``(B, n, *S_f)`` normalised displacement on the field's grid.
        image_shape: the image's spatial shape ``S``.
    """
    n = disp.shape[1]
    half = spatial.constant([s / 2 for s in image_shape], disp.device, disp.dtype)
    u_vox = disp * half.view(1, n, *([1] * n))
    total = disp.new_zeros(disp.shape[0])
    for axis in range(n):
        step = image_shape[axis] / disp.shape[2 + axis]  # field step in image voxels
        d = torch.diff(u_vox, dim=2 + axis) / step
        total = total + d.pow(2).sum(1).flatten(1).mean(1)
    return total.mean()
