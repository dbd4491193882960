"""Spatial transforms: the one place that builds grids, warps, composes and converts.

Conventions (METHOD.md, "Notation"):

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

import functools
from typing import Sequence

import torch
import torch.nn.functional as F

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
]


def float32(fn):
    """Run ``fn`` in float32 with autocast off when autocast is on (mixed precision): floating
    tensor arguments are cast to float32, so results are float32. Without autocast: ``fn`` as is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        if not (torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)):  # meta has no autocast
            return fn(*args, **kwargs)

        def cast(a):
            return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        with torch.autocast(dev, enabled=False):
            return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})

    return wrapper


def _spatial_dims(x: torch.Tensor) -> int:
    n = x.dim() - 2
    if n not in (2, 3):
        raise ValueError(f"expected a (B, C, *S) tensor with 2 or 3 spatial dims, got shape {tuple(x.shape)}")
    return n


def identity_grid(
    shape: Sequence[int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised coordinates of the voxel centres of a grid.

    Args:
        shape: spatial shape ``S`` (2 or 3 values).

    Returns:
        ``(1, n, *S)``: channel ``k`` holds the coordinate along axis ``k``,
        ``(2 i + 1) / S_k - 1`` (``align_corners=False``). Built once per shape, device and dtype
        and shared (every warp needs one; building it is most of a small warp's cost): never
        modify it in place.
    """
    return _identity_grid(tuple(int(s) for s in shape), torch.device(device or "cpu"), dtype)


@functools.lru_cache(maxsize=32)
def _identity_grid(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # an ordinary tensor even when first asked for under inference mode (Lightning's validation),
    # so that training can use the shared grid afterwards
    with torch.inference_mode(False), torch.no_grad():
        axes = [(torch.arange(s, device=device, dtype=dtype) * 2 + 1) / s - 1 for s in shape]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack(mesh, dim=0).unsqueeze(0)


def constant(values, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``values`` (numbers, nested sequences or an array: per-axis scales, a small matrix) as a tensor
    on ``device``, built once per values, device and dtype and shared, like :func:`identity_grid`:
    never modify it in place.

    On a GPU, ``torch.tensor(values, device=...)`` copies from the host and waits for every kernel
    queued before it, at each call; a training iteration asks for the same few constants every time
    (:class:`profiling.HostCopies` counts what is left)."""
    shape, flat = _flatten(values.tolist() if hasattr(values, "tolist") else values)
    return _constant(shape, flat, torch.device(device or "cpu"), dtype)


def _flatten(values) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Nested sequences of numbers → (shape, the numbers in row-major order)."""
    if not isinstance(values, (list, tuple)):
        return (), (float(values),)
    parts = [_flatten(v) for v in values]
    shapes = {shape for shape, _ in parts}
    if len(shapes) > 1:
        raise ValueError(f"ragged constant: {values!r}")
    inner = shapes.pop() if shapes else ()
    return (len(parts), *inner), tuple(x for _, flat in parts for x in flat)


@functools.lru_cache(maxsize=64)
def _constant(shape: tuple[int, ...], values: tuple[float, ...], device: torch.device, dtype: torch.dtype
              ) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        return torch.tensor(values, device=device, dtype=dtype).reshape(shape)


def _sample(x: torch.Tensor, disp: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    n = _spatial_dims(x)
    if disp.shape[1] != n or disp.dim() != x.dim():
        raise ValueError(f"field shape {tuple(disp.shape)} does not fit image shape {tuple(x.shape)}")
    coords = identity_grid(disp.shape[2:], disp.device, disp.dtype) + disp
    # grid_sample wants (B, *S, n) with the last axis in reversed (x, y[, z]) order.
    grid = coords.permute(0, *range(2, n + 2), 1).flip(-1)
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], *grid.shape[1:])
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


@float32
def warp(x: torch.Tensor, disp: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Resample ``x`` at ``phi(p) = p + disp(p)`` with (bi/tri)linear interpolation.

    Args:
        x: image or feature map ``(B, C, *S_in)``.
        disp: normalised displacement ``(B, n, *S_out)``; the output has the field's grid.
        padding_mode: ``"border"`` (default), ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(B, C, *S_out)``.
    """
    return _sample(x, disp, "bilinear", padding_mode)


@float32
def warp_labels(labels: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Warp an integer label map with nearest-neighbour sampling; outside = background 0.

    Args:
        labels: ``(B, 1, *S_in)``, any integer or float dtype.
        disp: ``(B, n, *S_out)``.

    Returns:
        ``(B, 1, *S_out)`` with the dtype of ``labels``.
    """
    out = _sample(labels.to(disp.dtype), disp, "nearest", "zeros")
    return out.round().to(labels.dtype)


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


@float32
def compose(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Compose two displacement fields: ``phi = phi1 ∘ phi2``.

    ``u(p) = u2(p) + u1(p + u2(p))``, so ``warp(x, u) ≈ warp(warp(x, u1), u2)``.

    Args:
        u1: ``(B, n, *S1)``, applied last to the coordinates (sampled).
        u2: ``(B, n, *S2)``; the result lives on u2's grid.

    Returns:
        ``(B, n, *S2)``.
    """
    return u2 + _sample(u1, u2, "bilinear", "border")


@float32
def compose_affine_displacement(theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``phi_af ∘ phi_nr`` as one displacement field: ``theta(p + u(p)) - p``.

    Exact (no interpolation): the affine is evaluated analytically at the displaced points.

    Args:
        theta: ``(B, n, n + 1)``.
        u: ``(B, n, *S)`` non-rigid displacement.

    Returns:
        ``(B, n, *S)``.
    """
    ident = identity_grid(u.shape[2:], u.device, u.dtype)
    return apply_affine(theta, ident + u) - ident.expand_as(u)


@float32
def resize_field(field: torch.Tensor, shape: Sequence[int], unit: str = "normalised") -> torch.Tensor:
    """Resample a displacement field to another grid, keeping its vectors correct.

    Normalised vectors mean the same at every resolution and are only interpolated;
    voxel vectors are also multiplied by the per-axis size ratio.

    Args:
        field: ``(B, n, *S_in)``.
        shape: the new spatial shape ``S_out``.
        unit: ``"normalised"`` or ``"voxel"``.

    Returns:
        ``(B, n, *S_out)``.
    """
    n = _spatial_dims(field)
    if unit not in ("normalised", "voxel"):
        raise ValueError(f"unit must be 'normalised' or 'voxel', got {unit!r}")
    shape = tuple(int(s) for s in shape)
    if tuple(field.shape[2:]) == shape:
        return field
    mode = "bilinear" if n == 2 else "trilinear"
    out = F.interpolate(field, size=shape, mode=mode, align_corners=False)
    if unit == "voxel":
        ratio = constant([so / si for so, si in zip(shape, field.shape[2:])], field.device, field.dtype)
        out = out * ratio.view(1, n, *([1] * n))
    return out


@float32
def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of ``exp(v)`` for a stationary velocity field.

    Args:
        velocity: ``(B, n, *S)`` normalised.
        steps: number of squarings (the field is scaled by ``2**-steps`` first).

    Returns:
        ``(B, n, *S)`` displacement of a diffeomorphism (for smooth, small enough ``v``).
    """
    u = velocity / (2**steps)
    for _ in range(steps):
        u = compose(u, u)
    return u


def normalised_to_voxel(disp: torch.Tensor) -> torch.Tensor:
    """Normalised displacement ``(B, n, *S)`` to voxels: ``d_vox = d_norm * S_k / 2``."""
    n = _spatial_dims(disp)
    scale = constant([s / 2 for s in disp.shape[2:]], disp.device, disp.dtype)
    return disp * scale.view(1, n, *([1] * n))


def voxel_to_normalised(disp: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalised_to_voxel`."""
    n = _spatial_dims(disp)
    scale = constant([2 / s for s in disp.shape[2:]], disp.device, disp.dtype)
    return disp * scale.view(1, n, *([1] * n))


def voxel_to_mm(disp: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Voxel displacement ``(B, n, *S)`` to millimetres along the array axes (``spacing`` per axis)."""
    n = _spatial_dims(disp)
    if len(spacing) != n:
        raise ValueError(f"need {n} spacings, got {list(spacing)}")
    sp = constant(spacing, disp.device, disp.dtype)
    return disp * sp.view(1, n, *([1] * n))


def mm_to_voxel(disp: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`voxel_to_mm`."""
    return voxel_to_mm(disp, [1.0 / s for s in spacing])


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
    n = _spatial_dims(disp)
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
    n = _spatial_dims(field)
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


@float32
def sample_at(x: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``x`` at given points (absolute normalised coordinates, not a displacement).

    For resampling between grids (e.g. through world coordinates): ``sample_at(x, c)(p) = x(c(p))``.

    Args:
        x: image ``(B, C, *S_in)``; sampled in its own dtype (use float64 for large integer labels).
        coords: ``(B or 1, n, *S_out)`` normalised coordinates in ``x``'s grid (tensor-axis order,
            ``align_corners=False``); points outside ``[-1, 1]`` get ``padding_mode``.
        mode: ``"bilinear"`` ((bi/tri)linear) or ``"nearest"``.
        padding_mode: ``"zeros"`` (default), ``"border"`` or ``"reflection"``.

    Returns:
        ``(B, C, *S_out)``.
    """
    ident = identity_grid(coords.shape[2:], coords.device, coords.dtype)
    return _sample(x, coords - ident, mode, padding_mode)


def clear_caches() -> None:
    """Empty the grids and constants cached by :func:`identity_grid` and :func:`constant`."""
    _identity_grid.cache_clear()
    _constant.cache_clear()
