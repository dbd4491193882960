"""World geometry of ``fire register``: the model grid of a fixed image, images onto it, and where
FIRE sends its points (world = NIfTI RAS millimetres, voxel = array index, "normalised" = the
``[-1, 1]`` coordinates of :mod:`fire_lightning.spatial`, ``align_corners=False``). The steps are
described in :mod:`fire_lightning.register`.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch

from . import spatial
from .io import voxel_sizes

#: fixed-grid points processed at once when mapping to the moving image (bounds the memory)
CHUNK_POINTS = 1 << 20


@dataclass(frozen=True)
class ModelGrid:
    """The grid the model runs on.

    Attributes:
        shape: 3 values ``(X, Y, Z)``; ``Z = 1`` for a 2D model.
        affine: ``(4, 4)`` voxel → world (RAS mm).
        n: spatial dimensions of the model (2 or 3); the tensors are ``(1, C, *shape[:n])``.
    """

    shape: tuple
    affine: np.ndarray
    n: int

    @property
    def tensor_shape(self) -> tuple:
        return tuple(self.shape[: self.n])

    def normalised_to_world(self) -> np.ndarray:
        """``(4, 4)``: normalised model-grid coordinates → world."""
        return self.affine @ np.linalg.inv(normaliser(self.shape))


def round_up(voxels: float, multiple: int = 4) -> int:
    whole = max(1, int(np.ceil(voxels - 1e-6)))  # 1e-6: 64.0000000001 voxels are 64
    return int(np.ceil(whole / multiple) * multiple)


def model_grid(affine: np.ndarray, shape, spacing, n: int) -> ModelGrid:
    """The model grid for a fixed image (:mod:`.register`, step 1).

    Args:
        affine: the fixed image's ``(4, 4)`` voxel → world affine.
        shape: its 3-axis shape ``(X, Y, Z)`` (``Z = 1`` for 2D).
        spacing: the model's voxel size per model axis (``n`` values, mm).
        n: 2 or 3.
    """
    affine = np.asarray(affine, dtype=float)
    sizes = voxel_sizes(affine)
    ornt = nib.orientations.io_orientation(affine)  # per array axis: (closest RAS axis, ±1)
    if n == 3:
        axes = [int(np.flatnonzero(ornt[:, 0] == k)[0]) for k in range(3)]
    else:  # reorder the two in-plane axes only; the through-plane axis keeps its place and sign
        axes = sorted((0, 1), key=lambda i: ornt[i, 0]) + [2]
    signs = [float(ornt[i, 1]) if k < n else 1.0 for k, i in enumerate(axes)]
    steps = [float(spacing[k]) if k < n else float(sizes[2]) for k in range(3)]
    new_shape = tuple(round_up(sizes[i] * shape[i] / steps[k]) if k < n else 1 for k, i in enumerate(axes))
    directions = affine[:3, :3] / sizes
    cols = np.stack([directions[:, i] * sg * st for i, sg, st in zip(axes, signs, steps)], axis=1)
    centre = affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2) + affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = cols
    out[:3, 3] = centre - cols @ ((np.asarray(new_shape, dtype=float) - 1) / 2)
    return ModelGrid(new_shape, out, n)


def normaliser(shape) -> np.ndarray:
    """``(4, 4)``: voxel index → normalised coordinate of a grid of 3-axis ``shape``:
    ``p = (2 v + 1) / S - 1`` (voxel-centre convention of :func:`spatial.identity_grid`)."""
    s = np.asarray(shape, dtype=float)
    out = np.diag([*(2.0 / s), 1.0])
    out[:3, 3] = 1.0 / s - 1.0
    return out


def transform_points(matrix, points: torch.Tensor) -> torch.Tensor:
    """``(4, 4)`` homogeneous matrix applied to points ``(1, 3, *S)`` → ``(1, 3, *S)``."""
    m = torch.as_tensor(np.asarray(matrix), dtype=points.dtype, device=points.device)
    lead = [1] * (points.dim() - 2)
    return torch.einsum("ij,bj...->bi...", m[:3, :3], points) + m[:3, 3].view(1, 3, *lead)


def voxel_points(shape, n: int, lo: int, hi: int, device) -> torch.Tensor:
    """Voxel indices ``(1, 3, *S_slab)`` (float64) of a grid of 3-axis ``shape`` whose tensor
    axes are ``shape[:n]``, restricted to ``[lo, hi)`` along tensor axis ``n - 1``; in 2D the
    third index is 0."""
    ranges = [torch.arange(s, dtype=torch.float64, device=device) for s in shape[:n]]
    ranges[n - 1] = ranges[n - 1][lo:hi]
    mesh = list(torch.meshgrid(*ranges, indexing="ij"))
    mesh += [torch.zeros_like(mesh[0])] * (3 - n)
    return torch.stack(mesh).unsqueeze(0)


def fire_and_affine(p: torch.Tensor, theta: torch.Tensor, u_nr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where FIRE and its affine part send model-grid points.

    Args:
        p: ``(1, 3, *S)`` normalised model-grid points (2D: the third is the through-plane one).
        theta: ``(1, n, n+1)``; u_nr: ``(1, n, *S_model)`` (see :func:`nonrigid_part`).

    Returns:
        ``phi(p) = theta(p + u_nr(p))`` and ``phi_af(p) = theta(p)``, each ``(1, 3, *S)``; a 2D
        model leaves the through-plane coordinate as it is.
    """
    n = theta.shape[1]
    q = p[:, :n] + spatial.sample_at(u_nr, p[:, :n], "bilinear", "border")
    rest = p[:, n:]
    fire = torch.cat([spatial.apply_affine(theta, q), rest], 1)
    return fire, torch.cat([spatial.apply_affine(theta, p[:, :n]), rest], 1)


def slabs(tensor_shape):
    """``[lo, hi)`` ranges along the last axis of a grid, each of at most ~:data:`CHUNK_POINTS` points."""
    per_slice = int(np.prod(tensor_shape[:-1]))
    width = max(1, CHUNK_POINTS // per_slice)
    for lo in range(0, tensor_shape[-1], width):
        yield lo, min(lo + width, tensor_shape[-1])


def nonrigid_part(field: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``u_nr`` of a FIRE field ``phi(p) = p + field(p) = theta(p + u_nr(p))``.

    Args:
        field: ``(1, n, *S)`` normalised; theta: ``(1, n, n+1)``.

    Returns:
        ``(1, n, *S)`` float64.
    """
    ident = spatial.identity_grid(field.shape[2:], field.device, torch.float64)
    return spatial.apply_affine(spatial.invert_affine(theta.double()), ident + field.double()) - ident


def world_affine(theta: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """``(4, 4)`` world (RAS) affine, fixed point → moving point, of ``theta (n, n+1)`` acting on
    the model grid's normalised coordinates (2D: the through-plane row is the identity)."""
    n = grid.n
    full = np.eye(4)
    full[:n, :n] = theta[:, :n]
    full[:n, 3] = theta[:, n]
    to_world = grid.normalised_to_world()
    return to_world @ full @ np.linalg.inv(to_world)


def normalise_intensity(data: np.ndarray) -> np.ndarray:
    """Clip to ``[0, p99.5]`` of the positive voxels and divide: ``[0, 1]`` (as the phantom's T1)."""
    positive = data[data > 0]
    top = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    return np.clip(data / top, 0.0, 1.0).astype(np.float32)


def image_tensor(data3: np.ndarray, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """``(X, Y, Z)`` array → ``(1, 1, *S)`` tensor (2D: the singleton third axis dropped)."""
    arr = data3[:, :, 0] if n == 2 else data3
    return torch.as_tensor(np.ascontiguousarray(arr), dtype=dtype, device=device)[None, None]


def model_input(data3: np.ndarray, affine: np.ndarray, grid: ModelGrid, device) -> torch.Tensor:
    """An image on the model grid as the model saw images in training (:mod:`.register`, step 2).

    Args:
        data3: ``(X, Y, Z)`` image; affine: its ``(4, 4)`` voxel → world affine.

    Returns:
        ``(1, 1, *grid.tensor_shape)`` float32 in ``[-1, 1]``.
    """
    return on_grid(normalise_intensity(data3), affine, grid, device) * 2 - 1


def on_grid(data3: np.ndarray, affine: np.ndarray, grid: ModelGrid, device, mode: str = "bilinear",
            dtype=torch.float32) -> torch.Tensor:
    """``(X, Y, Z)`` data with voxel → world ``affine`` resampled onto the model grid through world
    coordinates (0 outside): ``(1, 1, *grid.tensor_shape)`` (``mode="nearest"``, float64 for labels)."""
    n = grid.n
    src = image_tensor(data3, n, device, dtype)
    to_src = normaliser(data3.shape) @ np.linalg.inv(affine) @ grid.affine  # grid voxel → source normalised
    coords = transform_points(to_src, voxel_points(grid.shape, n, 0, grid.shape[n - 1], device))
    return spatial.sample_at(src, coords[:, :n], mode, "zeros")


def grid_to_fixed(volume: torch.Tensor, grid: ModelGrid, fixed_affine: np.ndarray, fixed_shape) -> np.ndarray:
    """A map on the model grid ``(1, 1, *grid.tensor_shape)`` sampled (linearly, 0 outside) at every
    voxel of the fixed image: ``(X, Y, Z)`` float32, the fixed image's 3-axis ``fixed_shape``."""
    n = grid.n
    to_grid = normaliser(grid.shape) @ np.linalg.inv(grid.affine) @ fixed_affine  # fixed voxel → grid normalised
    out = np.zeros(tuple(fixed_shape[:n]), np.float32)
    for lo, hi in slabs(out.shape):
        sl = (slice(None),) * (n - 1) + (slice(lo, hi),)
        p = transform_points(to_grid, voxel_points(fixed_shape, n, lo, hi, volume.device))
        out[sl] = spatial.sample_at(volume.double(), p[:, :n], "bilinear", "zeros")[0, 0].cpu().numpy()
    return out.reshape(tuple(fixed_shape))
