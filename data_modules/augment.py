"""Random affine + elastic transforms of an image and its labels, through TorchIO.

TorchIO's pattern: a *random* transform only samples parameters; a *deterministic* transform
(``tio.Affine``, ``ElasticDeformation``) applies them. :func:`sample_params` draws the
parameters from a ``numpy.random.Generator`` (so a seed fixes them, and they can be recorded
and replayed), :func:`apply_params` applies them. One code path for 2D (a singleton third
axis) and 3D; all lengths in millimetres.

"20–50 % change along at least one dimension" (FIRE §4.1) is implemented as: one randomly
chosen axis is scaled by ``1 ± c`` with ``c ~ U(change_range)`` (the structure grows or
shrinks by ``c`` along that axis); the other axes by ``1 + U(-other_scale, other_scale)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchio as tio
from torchio.transforms.augmentation.spatial.random_elastic_deformation import ElasticDeformation


@dataclass
class AugmentParams:
    """One sampled transform. ``scales``, ``degrees``, ``translation_mm``: per axis (3 values,
    TorchIO order = array axes); ``control_points``: (k, k, k, 3) elastic displacements in mm."""

    scales: tuple
    degrees: tuple
    translation_mm: tuple
    control_points: np.ndarray
    max_displacement_mm: tuple


def sample_params(rng: np.random.Generator, spatial_dims: int, extent_mm, cfg) -> AugmentParams:
    """Draw one transform.

    Args:
        rng: the generator (seed it for a reproducible transform).
        spatial_dims: 2 or 3.
        extent_mm: physical size of the image per axis (2 or 3 values).
        cfg: the ``data.augment`` config (change_range, other_scale, rotate_deg, translate,
            elastic_control_points, elastic_max_mm, elastic_locked_borders).
    """
    n = spatial_dims
    scales = [1.0 + rng.uniform(-cfg.other_scale, cfg.other_scale) for _ in range(n)]
    if cfg.change_range[1] > 0:
        axis = int(rng.integers(n))
        c = rng.uniform(*cfg.change_range)
        scales[axis] = 1.0 + c if rng.random() < 0.5 else 1.0 - c
    rot = [rng.uniform(-cfg.rotate_deg, cfg.rotate_deg) for _ in range(3 if n == 3 else 1)]
    degrees = tuple(rot) if n == 3 else (0.0, 0.0, rot[0])
    trans = [rng.uniform(-cfg.translate, cfg.translate) * e for e in extent_mm]
    k = cfg.elastic_control_points
    cp = rng.uniform(-1, 1, size=(k, k, k, 3)) * cfg.elastic_max_mm
    lock = cfg.elastic_locked_borders
    if lock:
        for ax in range(3):
            idx = [slice(None)] * 4
            idx[ax] = np.r_[0:lock, k - lock : k]
            cp[tuple(idx)] = 0
    max_disp = [cfg.elastic_max_mm] * 3
    if n == 2:
        scales.append(1.0)
        trans.append(0.0)
        cp[..., 2] = 0
        max_disp[2] = 0.0
    return AugmentParams(tuple(scales), degrees, tuple(trans), cp.astype(np.float64), tuple(max_disp))


def _transforms(params: AugmentParams, elastic: bool = True) -> tio.Compose:
    """TorchIO's deterministic transforms for ``params``: the affine, then (``elastic``) the elastic one."""
    steps = [tio.Affine(scales=params.scales, degrees=params.degrees, translation=params.translation_mm,
                        default_pad_value=0.0, center="image")]
    if elastic:
        steps.append(ElasticDeformation(control_points=params.control_points,
                                        max_displacement=params.max_displacement_mm))
    return tio.Compose(steps)


def _run(transform: tio.Compose, image: torch.Tensor, label: torch.Tensor | None, spacing):
    """Apply ``transform`` to ``image`` ``(C, *S)`` (linear) and ``label`` ``(1, *S)`` (nearest) on a grid of
    ``spacing``."""
    n = image.dim() - 1
    sp = list(spacing) + ([1.0] if n == 2 else [])
    affine = np.diag(sp + [1.0])
    to4 = (lambda t: t.unsqueeze(-1)) if n == 2 else (lambda t: t)
    subject = {"image": tio.ScalarImage(tensor=to4(image.float()), affine=affine)}
    if label is not None:
        subject["label"] = tio.LabelMap(tensor=to4(label.to(torch.int16)), affine=affine)
    out = transform(tio.Subject(**subject))
    back = (lambda t: t[..., 0]) if n == 2 else (lambda t: t)
    img = back(out["image"].data).to(image.dtype)
    lab = back(out["label"].data).to(label.dtype) if label is not None else None
    return img, lab


def apply_params(image: torch.Tensor, label: torch.Tensor | None, spacing, params: AugmentParams):
    """Apply ``params`` to an image (linear) and its labels (nearest).

    Args:
        image: ``(1, *S)`` float, background 0.
        label: ``(1, *S)`` integer or None.
        spacing: voxel size in mm per axis (2 or 3 values).

    Returns:
        ``(image, label)`` with the input shapes; label ``None`` if none was given.
    """
    return _run(_transforms(params), image, label, spacing)


@dataclass
class KnownTransform:
    """What :func:`apply_params` did to an image, in :mod:`fire_lightning.spatial`'s normalised coordinates.

    The transformed (moving) image at grid point ``q`` shows the source image at
    ``tau(q) = theta_tau(q) + elastic(q)``, with ``theta_tau = invert_affine(theta)``.

    Attributes:
        theta: ``(n, n+1)`` the inverse of the affine part, source grid → moving grid: what a
            perfect affine registration of the moving image onto the untransformed source returns.
        elastic: ``(n, *S)`` on the moving grid, ``tau(q) - theta_tau(q)``; 0 where ``tau(q)``
            leaves the source grid (the source there is background).
    """

    theta: torch.Tensor
    elastic: torch.Tensor


def known_transform(params: AugmentParams, spacing, shape) -> KnownTransform:
    """The transform of ``params`` on a grid of ``shape`` and ``spacing``, read off TorchIO itself.

    TorchIO resamples images of the coordinates: (bi/tri)linear interpolation reproduces a linear
    function exactly, so where a transformed point stays inside the grid, the resampled coordinate
    images hold ``tau(q)`` exactly, whatever TorchIO's conventions (centre, LPS, order of scaling
    and rotation). The affine part is the least-squares fit over those points (exact: it is affine).
    """
    from fire_lightning import spatial

    n = len(shape)
    coords = spatial.identity_grid(shape, dtype=torch.float64)[0]  # (n, *S)
    probe = torch.cat([coords, torch.ones(1, *shape, dtype=torch.float64)])  # last channel: inside the source grid
    # ITK's linear interpolation holds the border value in the half voxel outside the outermost
    # voxel centres, where the coordinate images stop being linear: only points inside the
    # centres' range are read.
    centres = torch.tensor([1 - 1 / s - 1e-6 for s in shape], dtype=torch.float64).view(n, *([1] * n))
    fields = []
    for elastic in (False, True):
        out, _ = _run(_transforms(params, elastic), probe, None, spacing)
        out = out.double()
        fields.append((out[:n], (out[n:] > 1 - 1e-6) & (out[:n].abs() < centres).all(0, keepdim=True)))
    (aff, inside_aff), (full, inside) = fields
    w = inside_aff[0].flatten().double()
    if w.sum() < n + 1:
        raise ValueError("the transform maps the whole grid outside the image; cannot read it off")
    theta_tau = spatial.fit_affine(coords.flatten(1)[None], aff.flatten(1)[None], w[None])  # (1, n, n+1)
    elastic = (full - spatial.apply_affine(theta_tau, coords[None])[0]) * inside
    return KnownTransform(theta=spatial.invert_affine(theta_tau)[0].float(), elastic=elastic.float())
