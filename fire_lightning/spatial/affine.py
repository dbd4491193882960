"""Affine transforms ``theta (B, n, n + 1)`` on normalised coordinates: applying, inverting,
composing, fitting (to points, to a field, to the images' foreground moments) and turning one into a
displacement field."""

from __future__ import annotations

from typing import Sequence

import torch

from .grid import constant, float32, identity_grid


def identity_affine(batch: int, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(B, n, n + 1)`` identity affine matrices."""
    eye = torch.eye(n, n + 1, device=device, dtype=dtype)
    return eye.unsqueeze(0).repeat(batch, 1, 1)


@float32
def apply_affine(theta: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``theta (B, n, n+1)`` applied to point fields ``coords (B, n, *S)`` → ``(B, n, *S)``."""
    n = theta.shape[1]
    flat = coords.flatten(2)  # (B, n, P)
    out = torch.bmm(theta[:, :, :n], flat) + theta[:, :, n:]
    return out.view(coords.shape[0], n, *coords.shape[2:])


@float32
def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    """The inverse transform of ``theta (B, n, n+1)``, as ``(B, n, n+1)`` (non-finite for a singular
    ``theta``: LAPACK's info is not read back, which on a GPU would wait for the queued kernels)."""
    n = theta.shape[1]
    full = torch.eye(n + 1, dtype=theta.dtype, device=theta.device).repeat(theta.shape[0], 1, 1)
    full[:, :n] = theta
    return torch.linalg.inv_ex(full).inverse[:, :n]  # inv_ex: no check of LAPACK's info (a GPU sync)


@float32
def compose_affine(theta1: torch.Tensor, theta2: torch.Tensor) -> torch.Tensor:
    """``theta1 ∘ theta2`` (``p -> theta1(theta2(p))``), both ``(B, n, n+1)`` → ``(B, n, n+1)``."""
    n = theta1.shape[1]
    a1, t1 = theta1[:, :, :n], theta1[:, :, n:]
    a2, t2 = theta2[:, :, :n], theta2[:, :, n:]
    return torch.cat([a1 @ a2, a1 @ t2 + t1], dim=2)


@float32
def fit_affine(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
               ridge: float = 0.0) -> torch.Tensor:
    """Weighted least-squares affine ``theta`` with ``theta(source_i) ≈ target_i``, in closed form.

    Minimises ``sum_i r_iᵀ W_i r_i + ridge ||theta - I||²`` with ``r_i = theta(s_i) - t_i``; the ridge
    term pulls an ill-posed fit (points on a line, all weight on one point) towards the identity and
    keeps the normal equations invertible. Differentiable in the points and the weights.

    Args:
        source, target: ``(B, n, P)`` points.
        weights: ``(B, P)`` non-negative scalars (``W_i = w_i I``), ``(B, n, n, P)`` symmetric positive
            semi-definite matrices (a point trusted along some directions only: the normal of an edge,
            not along it), or None for equal weights.
        ridge: Tikhonov weight (in the units of ``sum w_i |s_i|²``).

    Returns:
        ``(B, n, n + 1)``.
    """
    b, n, p = source.shape
    x = torch.cat([source, torch.ones(b, 1, p, dtype=source.dtype, device=source.device)], dim=1)  # (B, n+1, P)
    # Solved for M = theta - [I | 0] from the displacements target - source: the same problem, but
    # exactly the identity when every displacement is 0 (a zero-initialised head starts there).
    u = target - source  # (B, n, P)
    if weights is not None and weights.dim() == 4:  # matrix weights: one system in all n(n+1) unknowns
        k = n * (n + 1)
        lhs = torch.einsum("bkli,bai,bci->bkalc", weights, x, x).reshape(b, k, k)
        rhs = torch.einsum("bkli,bli,bai->bka", weights, u, x).reshape(b, k, 1)
        if ridge > 0:
            lhs = lhs + ridge * torch.eye(k, dtype=source.dtype, device=source.device)
        return identity_affine(b, n, source.device, source.dtype) + _solve(lhs, rhs).reshape(b, n, n + 1)
    xw = x if weights is None else x * weights[:, None, :]
    lhs = xw @ x.transpose(1, 2)  # (B, n+1, n+1)
    if ridge > 0:
        lhs = lhs + ridge * torch.eye(n + 1, dtype=source.dtype, device=source.device)
    rhs = xw @ u.transpose(1, 2)  # (B, n+1, n)
    return identity_affine(b, n, source.device, source.dtype) + _solve(lhs, rhs).transpose(1, 2)


def _solve(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``lhs⁻¹ rhs`` without checking LAPACK's info: ``torch.linalg.solve`` reads it back to raise on a
    singular system, which on a GPU stops the host until every queued kernel has run (and cannot be
    captured in a CUDA graph). A singular system gives non-finite values instead, which the training
    step's finite-loss check skips."""
    return torch.linalg.solve_ex(lhs, rhs).result


@float32
def fit_affine_to_field(disp: torch.Tensor, weights: torch.Tensor | None = None, ridge: float = 0.0) -> torch.Tensor:
    """The affine ``theta (B, n, n+1)`` closest (weighted least squares) to ``p -> p + disp(p)``.

    Args:
        disp: ``(B, n, *S)`` normalised displacement.
        weights: ``(B, *S)``, ``(B, n, n, *S)`` (matrices, see :func:`fit_affine`) or None.
    """
    b, n = disp.shape[:2]
    ident = identity_grid(disp.shape[2:], disp.device, disp.dtype).flatten(2).expand(b, -1, -1)
    w = None if weights is None else weights.flatten(weights.dim() - n)  # (B, P) or (B, n, n, P)
    return fit_affine(ident, ident + disp.flatten(2), w, ridge)


MOMENT_MODES = ("com", "scale", "principal")


@float32
def moments_affine(moving: torch.Tensor, fixed: torch.Tensor, spacing: Sequence[float], mode: str = "scale",
                   threshold: float = 0.05) -> torch.Tensor:
    """An affine from the images' foreground moments (the classic initialisation), fixed → moving.

    The foreground is where the intensity, mapped from [-1, 1] to [0, 1], exceeds ``threshold``: a mask,
    not intensity weights, so that two modalities with different contrasts have the same moments.
    Moments are taken in millimetres (``spacing``), so rotations are rotations.

    Args:
        moving, fixed: ``(B, 1, *S)`` in [-1, 1] on the same grid.
        spacing: voxel size in mm per axis.
        mode: ``"com"`` centres of mass only (a translation, as ANTs initialises); ``"scale"`` also
            the spread along each array axis (per-axis scaling); ``"principal"`` maps the principal axes
            of one foreground onto the other's (each fixed axis paired with the moving axis most
            parallel to it, so the rotation stays under 45°).

    Returns:
        ``(B, n, n + 1)`` normalised; the identity for an image with an empty foreground.
    """
    if mode not in MOMENT_MODES:
        raise ValueError(f"moments mode must be one of {MOMENT_MODES}, got {mode!r}")
    b, n = moving.shape[0], moving.dim() - 2
    shape = moving.shape[2:]
    dt = torch.float64
    half = constant([s * float(sp) / 2 for s, sp in zip(shape, spacing)], moving.device, dt)
    pts = identity_grid(shape, moving.device, dt).flatten(2)[0] * half[:, None]  # (n, P) mm

    def stats(x):
        w = (((x.detach().to(dt) + 1) / 2) > threshold).flatten(1).to(dt)  # (B, P)
        mass = w.sum(1, keepdim=True)
        w = w / mass.clamp_min(1)
        c = w @ pts.T  # (B, n)
        d = pts[None] - c[:, :, None]  # (B, n, P)
        cov = (d * w[:, None]) @ d.transpose(1, 2)
        return c, cov, mass[:, 0] > n + 1

    c_m, cov_m, ok_m = stats(moving)
    c_f, cov_f, ok_f = stats(fixed)
    eye = torch.eye(n, dtype=dt, device=moving.device).expand(b, n, n)
    if mode == "com":
        lin = eye
    elif mode == "scale":
        var_m, var_f = cov_m.diagonal(dim1=1, dim2=2), cov_f.diagonal(dim1=1, dim2=2)
        lin = torch.diag_embed((var_m.clamp_min(1e-9) / var_f.clamp_min(1e-9)).sqrt())
    else:
        ev_m, u_m = torch.linalg.eigh(cov_m)
        ev_f, u_f = torch.linalg.eigh(cov_f)
        dots = u_f.transpose(1, 2) @ u_m  # (B, n_f, n_m)
        match = dots.abs().argmax(2)  # greedy pairing; ties broken by the most parallel
        u_m = torch.gather(u_m, 2, match[:, None, :].expand(b, n, n))
        ev_m = torch.gather(ev_m, 1, match)
        sign = torch.sign(torch.gather(dots, 2, match[:, :, None])[..., 0])
        u_m = u_m * torch.where(sign == 0, 1.0, sign)[:, None, :]
        lin = u_m @ torch.diag_embed((ev_m.clamp_min(1e-9) / ev_f.clamp_min(1e-9)).sqrt()) @ u_f.transpose(1, 2)
        bad = torch.linalg.det(lin) <= 0  # two fixed axes paired with one moving axis: fall back to scaling
        lin = torch.where(bad[:, None, None], eye, lin)  # (no `if bad.any()`: a read back to the host)
    t = c_m - (lin @ c_f[:, :, None])[..., 0]
    ok = (ok_m & ok_f)[:, None, None]
    lin = torch.where(ok, lin, eye)
    t = torch.where(ok[:, :, 0], t, torch.zeros_like(t))
    # mm → normalised: p_mm = half * p
    theta = torch.cat([lin / half[None, :, None] * half[None, None, :], (t / half)[:, :, None]], dim=2)
    return theta.to(moving.dtype)


@float32
def affine_to_displacement(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Displacement field of an affine transform on a grid.

    Args:
        theta: ``(B, n, n + 1)`` in normalised coordinates (tensor-axis order).
        shape: spatial shape ``S`` of the output grid.

    Returns:
        ``(B, n, *S)``: ``theta(p) - p`` at the voxel centres.
    """
    n = theta.shape[1]
    if len(shape) != n or theta.shape[2] != n + 1:
        raise ValueError(f"affine of shape {tuple(theta.shape)} does not fit a {len(shape)}-D grid")
    ident = identity_grid(shape, theta.device, theta.dtype).expand(theta.shape[0], *([-1] * (n + 1)))
    return apply_affine(theta, ident) - ident
