"""Scoring against a pair's known transform: the ceiling, a Dice without double resampling, affine errors.

Where a pair's transform is known (the phantom's and MRBrainS' seeded evaluation transforms,
:class:`data_modules.augment.KnownTransform`: ``true_theta``, ``true_elastic``):

* :func:`true_fields`: the true inverse, affine part only and in full: the ceiling rows;
* :func:`single_resampling_labels`: the untransformed source labels sent once through the known
  transform composed with a method's field; their Dice against the fixed labels measures the
  correspondence alone, without the loss of resampling the labels twice (once by the test
  transform, once by the method) and with the anatomy that the test transform pushed out of the
  moving image's field of view still counted;
* :func:`affine_error`, :func:`affine_parameters`: a method's affine ``theta`` against the true one.

Affines are backward maps, fixed grid → moving grid, in :mod:`.spatial`'s normalised
coordinates; here they are expressed in millimetres about the grid centre, where a rotation is
a rotation (normalised coordinates stretch each axis by its own extent).

* :func:`affine_parameters`: rotation, scale, shear and translation of an affine, for the
  predicted-against-true slopes logged during validation;
* :func:`affine_error`: the error transform ``E = theta_true⁻¹ ∘ theta`` (fixed → fixed, the
  identity for a perfect method): mean distance over a region (the brain) and its split into
  translation, rotation, scale and shear.

The split uses the polar decomposition ``M = R P`` of a linear part (``R`` the rotation closest
to ``M``, ``P`` symmetric positive): rotation = the angle of ``R``; scale = ``diag(P)`` (per
array axis); shear = the off-diagonal of ``P``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from . import spatial


def source_points(field: torch.Tensor | None, theta_true: torch.Tensor, elastic: torch.Tensor) -> torch.Tensor:
    """Where each fixed-grid point lands in the untransformed source: ``tau(phi(p))``.

    Args:
        field: ``(B, n, *S)`` a method's normalised displacement (fixed → moving), or None (identity).
        theta_true, elastic: the known transform, ``(B, n, n+1)`` and ``(B, n, *S)``.

    Returns:
        ``(B, n, *S)`` normalised coordinates in the source grid.
    """
    b, n = theta_true.shape[:2]
    shape = elastic.shape[2:]
    phi = spatial.identity_grid(shape, elastic.device, elastic.dtype).expand(b, *([-1] * (n + 1)))
    if field is not None:
        phi = phi + field
    theta_tau = spatial.invert_affine(theta_true)
    return spatial.apply_affine(theta_tau, phi) + spatial.sample_at(elastic, phi, padding_mode="zeros")


def single_resampling_labels(source_labels: torch.Tensor, field: torch.Tensor | None, theta_true: torch.Tensor,
                             elastic: torch.Tensor) -> torch.Tensor:
    """The source labels ``(B, 1, *S)`` resampled once (nearest) at :func:`source_points`; outside = 0."""
    pts = source_points(field, theta_true, elastic)
    return spatial.sample_at(source_labels.to(pts.dtype), pts, mode="nearest").round().to(source_labels.dtype)


def true_fields(theta_true: torch.Tensor, elastic: torch.Tensor, iterations: int = 20) -> dict[str, torch.Tensor]:
    """The ceiling: ``"True-Affine"`` (the inverse of the test transform's affine part) and ``"True"``
    (its full inverse, affine and elastic), as normalised displacements ``(B, n, *S)``.

    The full inverse solves ``tau(q) = p`` by the fixed-point iteration ``q <- theta_true(p - elastic(q))``
    (a contraction: the elastic part is a few millimetres, smooth).
    """
    b, n = theta_true.shape[:2]
    shape = elastic.shape[2:]
    ident = spatial.identity_grid(shape, elastic.device, elastic.dtype).expand(b, *([-1] * (n + 1)))
    q = spatial.apply_affine(theta_true, ident)
    for _ in range(iterations):
        q = spatial.apply_affine(theta_true, ident - spatial.sample_at(elastic, q, padding_mode="zeros"))
    return {"True-Affine": spatial.affine_to_displacement(theta_true, shape), "True": q - ident}


#: per-pair error keys of :func:`affine_error` → (Table header, format)
ERROR_COLUMNS = {
    "affine_err_mm": ("affine error (mm)", "{:.2f}"),
    "affine_err_translation_mm": ("translation err (mm)", "{:.2f}"),
    "affine_err_rotation_deg": ("rotation err (°)", "{:.2f}"),
    "affine_err_scale_pct": ("scale err (%)", "{:.1f}"),
    "affine_err_shear_pct": ("shear err (%)", "{:.1f}"),
}


def half_extent(shape: Sequence[int], spacing: Sequence[float]) -> torch.Tensor:
    """``(n,)`` mm from the grid centre to its edge per axis: normalised ``p`` is ``p * half_extent`` mm."""
    return torch.tensor([s * float(sp) / 2 for s, sp in zip(shape, spacing)], dtype=torch.float64)


def to_mm(theta: torch.Tensor, shape: Sequence[int], spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta (B, n, n+1)`` normalised → ``(M (B, n, n), t (B, n))`` with ``x -> M x + t`` in mm about the grid
    centre."""
    n = theta.shape[1]
    h = half_extent(shape, spacing).to(theta.device)
    th = theta.double()
    m = h[:, None] * th[:, :, :n] / h[None, :]
    t = h * th[:, :, n]
    return m, t


def polar(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``M = R P``: ``R (B, n, n)`` the closest rotation (det +1), ``P = Rᵀ M``."""
    u, s, vh = torch.linalg.svd(m)
    d = torch.ones_like(s)
    d[:, -1] = torch.sign(torch.linalg.det(u @ vh))  # a reflection in M stays in P, not in R
    r = u @ torch.diag_embed(d) @ vh
    return r, r.transpose(1, 2) @ m


def rotation_angles(r: torch.Tensor) -> torch.Tensor:
    """Signed angle of a rotation in degrees: 2D ``(B, 1)`` (from axis 0 towards axis 1); 3D ``(B, 3)``
    the rotation vector (axis × angle, in the array axes' order)."""
    if r.shape[1] == 2:
        return torch.rad2deg(torch.atan2(r[:, 1, 0], r[:, 0, 0]))[:, None]
    cos = ((r.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)
    angle = torch.acos(cos)
    skew = torch.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], dim=1)
    factor = torch.where(angle > 1e-8, angle / (2 * torch.sin(angle).clamp_min(1e-12)), torch.full_like(angle, 0.5))
    return torch.rad2deg(skew * factor[:, None])


def affine_parameters(theta: torch.Tensor, shape: Sequence[int], spacing: Sequence[float]) -> dict[str, torch.Tensor]:
    """Rotation, scale, shear and translation of ``theta (B, n, n+1)`` in mm about the grid centre.

    Returns:
        ``rotation_deg`` ``(B, 1)`` in 2D / ``(B, 3)`` in 3D; ``log_scale`` ``(B, n)`` (log of ``diag(P)``);
        ``shear`` ``(B, n(n-1)/2)`` (off-diagonal of ``P``); ``translation_mm`` ``(B, n)`` (where the
        grid centre goes). All float64.
    """
    m, t = to_mm(theta, shape, spacing)
    r, p = polar(m)
    n = m.shape[1]
    iu = torch.triu_indices(n, n, 1)
    return {"rotation_deg": rotation_angles(r), "log_scale": p.diagonal(dim1=1, dim2=2).clamp_min(1e-6).log(),
            "shear": p[:, iu[0], iu[1]], "translation_mm": t}


def affine_error(theta: torch.Tensor, theta_true: torch.Tensor, shape: Sequence[int], spacing: Sequence[float],
                 region: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-pair error of ``theta`` against ``theta_true`` (both ``(B, n, n+1)``, fixed → moving, normalised).

    Args:
        region: ``(B, 1, *S)`` or ``(B, *S)`` mask of the fixed grid (e.g. the brain) over which the
            distance is averaged and whose centroid the translation error is measured at; None: the
            whole grid.

    Returns:
        ``(B,)`` float64 each (:data:`ERROR_COLUMNS`): ``affine_err_mm`` (mean distance between where
        the two send the region's points), ``affine_err_translation_mm`` (the same at the region's
        centroid), ``affine_err_rotation_deg`` (angle of the error's rotation), ``affine_err_scale_pct``
        (largest ``|P_kk - 1|``), ``affine_err_shear_pct`` (largest ``|P_kl|``, k ≠ l).
    """
    b, n = theta.shape[:2]
    h = half_extent(shape, spacing).to(theta.device)
    grid = spatial.identity_grid(shape, theta.device, torch.float64).flatten(2).expand(b, -1, -1)  # (B, n, P)
    w = torch.ones(b, grid.shape[2], dtype=torch.float64, device=theta.device) if region is None else \
        region.reshape(b, -1).double()
    w = w / w.sum(1, keepdim=True).clamp_min(1)
    th, tt = theta.double(), theta_true.double()
    dist = ((spatial.apply_affine(th, grid) - spatial.apply_affine(tt, grid)) * h[None, :, None]).norm(dim=1)
    err = spatial.compose_affine(spatial.invert_affine(tt), th)  # fixed → fixed
    m, _ = to_mm(err, shape, spacing)
    r, p = polar(m)
    centroid = (grid * w[:, None]).sum(2, keepdim=True)  # (B, n, 1) normalised
    moved = spatial.apply_affine(err, centroid)
    off = (p - torch.diag_embed(p.diagonal(dim1=1, dim2=2))).abs().flatten(1)
    return {
        "affine_err_mm": (dist * w).sum(1),
        "affine_err_translation_mm": ((moved - centroid)[..., 0] * h).norm(dim=1),
        "affine_err_rotation_deg": rotation_angles(r).norm(dim=1),
        "affine_err_scale_pct": (p.diagonal(dim1=1, dim2=2) - 1).abs().amax(1) * 100,
        "affine_err_shear_pct": (off.amax(1) if n > 1 else torch.zeros(b, dtype=torch.float64)) * 100,
    }


def slope_and_correlation(pred: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    """Least-squares slope of ``pred`` on ``true`` and their Pearson correlation (1-D, pooled).

    A network that learns a parameter has both near 1; one that predicts its mean has slope 0.
    NaN when ``true`` does not vary.
    """
    x, y = true.double().flatten(), pred.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    var = (x * x).sum()
    if x.numel() < 2 or var <= 0:
        return math.nan, math.nan
    slope = float((x * y).sum() / var)
    corr = float((x * y).sum() / (var.sqrt() * (y * y).sum().sqrt()).clamp_min(1e-300))
    return slope, corr
