"""The training augmentation as batched torch ops on the training device (``data.augment.device``).

The same transforms as :mod:`data_modules.augment` (TorchIO's ``Affine`` about the image centre, then
its ``ElasticDeformation``, a cubic B-spline on ``k**3`` control points), drawn from the same
:class:`augment.AugmentParams`, so the distributions are today's. What moves to the device is
the expensive part: the B-spline evaluated at every voxel and the resampling, done for the whole
batch at once and in one resampling (TorchIO resamples twice, after the affine and after the
elastic part). On the CPU, per pair, only the small matrices are built, from SimpleITK's own
transforms (what TorchIO itself hands to ``sitk.Resample``): no convention is re-derived here.

The sampled source point of an output voxel ``q`` (physical LPS millimetres, as ITK works) is
``A(q + d(q))``: ``d`` the B-spline displacement, ``A`` the affine, in the order TorchIO applies
them (affine resampling first, so its transform is the outer one).

Tensor shapes: images ``(B, 1, *S)``; :class:`DeviceTransform` fields hold per-pair ``(B, ...)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from fire_lightning import spatial

from .augment import AugmentParams

SPLINE_ORDER = 3


@dataclass
class DeviceTransform:
    """The tensors a batch needs to be transformed on the device (collated along B).

    Attributes:
        affine: ``(B, 4, 4)`` float64: output LPS point → source LPS point of the affine part.
        coefficients: ``(B, 3, k, k, k)`` float64: the B-spline control-point displacements (mm, LPS).
    """

    affine: torch.Tensor
    coefficients: torch.Tensor


def _lps(spacing3) -> np.ndarray:
    """Voxel index → LPS point of the images that :mod:`augment` gives TorchIO (RAS affine diag(spacing),
    which SimpleITK reads as LPS with the first two axes flipped)."""
    return np.diag([-spacing3[0], -spacing3[1], spacing3[2], 1.0])


def _spacing3(spacing, n: int) -> tuple:
    return tuple(float(s) for s in spacing) + ((1.0,) if n == 2 else ())


@functools.lru_cache(maxsize=16)
def _reference(shape3: tuple, spacing3: tuple):
    """The SimpleITK image TorchIO resamples on (geometry only)."""
    import SimpleITK as sitk

    img = sitk.Image([int(s) for s in shape3], sitk.sitkUInt8)
    img.SetSpacing(spacing3)
    img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    return img


@functools.lru_cache(maxsize=16)
def bspline_grid(shape3: tuple, spacing3: tuple, k: int) -> tuple:
    """ITK's control-point grid for ``k`` points per axis on this image (``BSplineTransformInitializer``,
    as TorchIO calls it): ``(origin (3,), spacing (3,), direction (3, 3), size (3,))``, LPS; computed
    once per geometry and shared (read-only arrays)."""
    import SimpleITK as sitk

    t = sitk.BSplineTransformInitializer(_reference(shape3, spacing3), [k - SPLINE_ORDER] * 3)
    p = np.asarray(t.GetFixedParameters(), dtype=np.float64)
    size, origin, spacing, direction = p[0:3], p[3:6], p[6:9], p[9:18].reshape(3, 3)
    grid = origin, spacing, direction, size.astype(int)
    for a in grid:
        a.flags.writeable = False
    return grid


@functools.lru_cache(maxsize=16)
def _tio_reference(shape3: tuple, spacing3: tuple):
    """The TorchIO image whose geometry ``tio.Affine`` reads (centre, 2D or not); no voxel is read."""
    import torchio as tio

    return tio.ScalarImage(tensor=torch.zeros(1, *shape3, dtype=torch.uint8), affine=np.diag([*spacing3, 1.0]))


def affine_matrix(params: AugmentParams, shape, spacing) -> np.ndarray:
    """``(4, 4)``: output LPS point → source LPS point of TorchIO's affine for ``params`` (read off the
    SimpleITK transform that ``tio.Affine`` builds: four points fix an affine map)."""
    import torchio as tio

    n = len(shape)
    shape3 = tuple(int(s) for s in shape) + ((1,) if n == 2 else ())
    image = _tio_reference(shape3, _spacing3(spacing, n))
    affine = tio.Affine(scales=params.scales, degrees=params.degrees, translation=params.translation_mm,
                        default_pad_value=0.0, center="image")
    transform = affine.get_affine_transform(image)
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in points])
    m = np.eye(4)
    m[:3, 3] = mapped[0]
    m[:3, :3] = (mapped[1:] - mapped[0]).T
    return m


def device_transform(params: AugmentParams, shape, spacing) -> DeviceTransform:
    """The per-pair tensors (unbatched: ``(4, 4)`` and ``(3, k, k, k)``); cheap, on the CPU."""
    cp = torch.from_numpy(np.ascontiguousarray(np.moveaxis(params.control_points, -1, 0)))
    return DeviceTransform(torch.from_numpy(affine_matrix(params, shape, spacing)), cp.double())


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    a = t.abs()
    return torch.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, torch.where(a < 2, (2 - a) ** 3 / 6, torch.zeros_like(a)))


def _bspline_displacement(points: torch.Tensor, coefficients: torch.Tensor, grid: tuple) -> torch.Tensor:
    """``points`` ``(B, N, 3)`` LPS → the B-spline displacement ``(B, N, 3)``, as ITK's ``BSplineTransform``
    (support of 4 control points per axis from ``floor(c) - 1``; zero outside the valid region)."""
    origin, spacing, direction = (spatial.constant(g, points.device, points.dtype) for g in grid[:3])
    k0, k1, k2 = (int(s) for s in grid[3])
    size = spatial.constant([k0, k1, k2], points.device, points.dtype)
    c = ((points - origin) @ direction) / spacing  # continuous grid index (B, N, 3)
    start = torch.floor(c) - 1
    offs = torch.arange(SPLINE_ORDER + 1, device=points.device, dtype=points.dtype)
    idx = start[..., None] + offs  # (B, N, 3, 4)
    w = _cubic_bspline(c[..., None] - idx)  # (B, N, 3, 4)
    valid = ((start >= 0) & (start + SPLINE_ORDER <= size - 1)).all(-1)  # (B, N)
    idx = idx.long().clamp(min=0)
    idx = torch.minimum(idx, (size.long() - 1).view(1, 1, 3, 1))
    b, n = points.shape[:2]
    flat = coefficients.reshape(b, 3, -1)  # (B, 3, k0*k1*k2)
    lin = (idx[:, :, 0, :, None, None] * (k1 * k2) + idx[:, :, 1, None, :, None] * k2 + idx[:, :, 2, None, None, :])
    weights = w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]  # (B, N, 4, 4, 4)
    gathered = torch.gather(flat, 2, lin.reshape(b, 1, -1).expand(b, 3, -1)).reshape(b, 3, n, -1)
    disp = (gathered * weights.reshape(b, 1, n, -1)).sum(-1).transpose(1, 2)  # (B, N, 3)
    return disp * valid[..., None]


def _axis_weights(c: torch.Tensor, size: int) -> torch.Tensor:
    """``c`` ``(m,)`` continuous control-grid indices along one axis → ``(m, size)``: each point's cubic
    B-spline weights on that axis's control points (the 4 from ``floor(c) - 1``); rows of points whose
    support leaves the grid are zero (ITK's valid region, as :func:`_bspline_displacement`)."""
    start = torch.floor(c) - 1
    idx = start[:, None] + torch.arange(SPLINE_ORDER + 1, device=c.device, dtype=c.dtype)  # (m, 4)
    valid = (start >= 0) & (start + SPLINE_ORDER <= size - 1)
    w = _cubic_bspline(c[:, None] - idx) * valid[:, None]
    out = torch.zeros(c.shape[0], size, device=c.device, dtype=c.dtype)
    return out.scatter_add_(1, idx.long().clamp(0, size - 1), w)


def _grid_displacement(vox_to_lps: np.ndarray, shape3: tuple, coefficients: torch.Tensor, grid: tuple
                       ) -> torch.Tensor | None:
    """The B-spline displacement ``(B, N, 3)`` at every voxel of ``shape3`` when the voxel axes map to the
    control grid's axes one to one (a diagonal map, as for every image :mod:`augment` builds): the
    tensor product of per-axis weights, three small contractions instead of 64 gathered terms per voxel
    (the same sums; float64 rounding apart). None when the map is not diagonal. The map, a constant
    of the geometry, is worked out on the host: on a GPU, testing it there would wait for the queue."""
    origin, spacing, direction, size = grid
    m = (vox_to_lps[:3, :3] @ direction) / spacing  # voxel index → continuous control-grid index
    if np.abs(m - np.diag(np.diagonal(m))).max() > 0:
        return None
    c0 = ((vox_to_lps[:3, 3] - origin) @ direction) / spacing
    dev = coefficients.device
    w = [_axis_weights(float(c0[a]) + float(m[a, a]) * torch.arange(s, device=dev, dtype=torch.float64), int(size[a]))
         for a, s in enumerate(shape3)]
    disp = torch.einsum("ia,jb,kc,zxabc->zijkx", *w, coefficients)  # (B, *shape3, 3)
    return disp.reshape(coefficients.shape[0], -1, 3)


def source_coordinates(t: DeviceTransform, shape, spacing, k: int) -> torch.Tensor:
    """``(B, n, *S)``: where each output voxel samples the untransformed image, in
    :mod:`fire_lightning.spatial`'s normalised coordinates (``align_corners=False``)."""
    n = len(shape)
    shape3 = tuple(int(s) for s in shape) + ((1,) if n == 2 else ())
    sp3 = _spacing3(spacing, n)
    dev = t.affine.device
    b = t.affine.shape[0]
    axes = [torch.arange(s, device=dev, dtype=torch.float64) for s in shape3]
    vox = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 3)  # (1, N, 3)
    lps = _lps(sp3)  # constants of the geometry: worked out on the host, on the device once (spatial.constant)
    to_lps, shift = (spatial.constant(lps[:3, :3].T, dev, torch.float64),
                     spatial.constant(lps[:3, 3], dev, torch.float64))
    pts = (vox @ to_lps + shift).expand(b, -1, -1)  # (B, N, 3)
    coefficients, grid = t.coefficients.to(dev, torch.float64), bspline_grid(shape3, sp3, k)
    disp = _grid_displacement(lps, shape3, coefficients, grid)
    pts = pts + (_bspline_displacement(pts, coefficients, grid) if disp is None else disp)
    src = pts @ t.affine[:, :3, :3].transpose(1, 2) + t.affine[:, None, :3, 3]
    src_vox = (src - shift) @ spatial.constant(np.linalg.inv(lps[:3, :3]).T, dev, torch.float64)  # (B, N, 3)
    norm = (2 * src_vox + 1) / spatial.constant(shape3, dev, torch.float64) - 1
    return norm[..., :n].transpose(1, 2).reshape(b, n, *shape)


def apply_batch(image: torch.Tensor, label: torch.Tensor | None, t: DeviceTransform, spacing, k: int):
    """Transform a batch on its device: ``image`` ``(B, 1, *S)`` (linear, zero outside), ``label`` (nearest).
    Returns ``(image, label)``; label None if none was given."""
    coords = source_coordinates(t, image.shape[2:], spacing, k).float()
    out = spatial.sample_at(image.float(), coords, "bilinear", "zeros").to(image.dtype)
    lab = None
    if label is not None:
        lab = spatial.sample_at(label.double(), coords.double(), "nearest", "zeros").round().to(label.dtype)
    return out, lab
