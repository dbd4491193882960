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


def apply_params(image: torch.Tensor, label: torch.Tensor | None, spacing, params: AugmentParams):
    """Apply ``params`` to an image (linear) and its labels (nearest).

    Args:
        image: ``(1, *S)`` float, background 0.
        label: ``(1, *S)`` integer or None.
        spacing: voxel size in mm per axis (2 or 3 values).

    Returns:
        ``(image, label)`` with the input shapes; label ``None`` if none was given.
    """
    n = image.dim() - 1
    sp = list(spacing) + ([1.0] if n == 2 else [])
    affine = np.diag(sp + [1.0])
    to4 = (lambda t: t.unsqueeze(-1)) if n == 2 else (lambda t: t)
    subject = {"image": tio.ScalarImage(tensor=to4(image.float()), affine=affine)}
    if label is not None:
        subject["label"] = tio.LabelMap(tensor=to4(label.to(torch.int16)), affine=affine)
    transform = tio.Compose(
        [
            tio.Affine(scales=params.scales, degrees=params.degrees, translation=params.translation_mm,
                       default_pad_value=0.0, center="image"),
            ElasticDeformation(control_points=params.control_points, max_displacement=params.max_displacement_mm),
        ]
    )
    out = transform(tio.Subject(**subject))
    back = (lambda t: t[..., 0]) if n == 2 else (lambda t: t)
    img = back(out["image"].data).to(image.dtype)
    lab = back(out["label"].data).to(label.dtype) if label is not None else None
    return img, lab
