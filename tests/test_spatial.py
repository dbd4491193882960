"""Unit tests for fire_lightning.spatial (grids, warping, composition, conversions).

Conventions under test (spatial.py module docstring): fields are ``(B, n, *S)`` with
channel k = displacement along tensor axis k, normalised coordinates in [-1, 1] with
``align_corners=False``, backward warping ``warp(x, u)(p) = x(p + u(p))`` and
``compose(u1, u2) = phi1 ∘ phi2``.

All grids are tiny and run on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from fire_lightning import spatial

from .conftest import gen as _gen

DIMS = pytest.mark.parametrize("n", [2, 3])

# Anisotropic shapes (every axis a different length) catch axis-order mix-ups.
# Powers of two keep voxel-centre coordinates exactly representable in float32.
SHAPES = {2: (16, 8), 3: (16, 8, 4)}


pytestmark = pytest.mark.usefixtures("single_thread")


def _interior(shape, margin: int):
    return tuple(slice(margin, s - margin) for s in shape)


def _voxel_coords(shape, dtype=torch.float32) -> torch.Tensor:
    """(1, n, *S): channel k holds the integer voxel index along axis k."""
    axes = [torch.arange(s, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0).unsqueeze(0)


def _random_affine(n: int, batch: int = 1, strength: float = 0.08, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    a = torch.eye(n) + strength * torch.randn(batch, n, n, generator=g)
    b = 0.5 * strength * torch.randn(batch, n, 1, generator=g)
    return torch.cat([a, b], dim=2)


def _invert_affine(theta: torch.Tensor) -> torch.Tensor:
    n = theta.shape[1]
    a_inv = torch.linalg.inv(theta[:, :, :n].double())
    b_inv = -a_inv @ theta[:, :, n:].double()
    return torch.cat([a_inv, b_inv], dim=2).to(theta.dtype)


def _affine_product(t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """theta of p -> t1(t2(p))."""
    n = t1.shape[1]
    a = t1[:, :, :n] @ t2[:, :, :n]
    b = t1[:, :, :n] @ t2[:, :, n:] + t1[:, :, n:]
    return torch.cat([a, b], dim=2)


def _inside_centre_range(points: torch.Tensor, shape) -> torch.Tensor:
    """(B, *S) mask: normalised points lie within the voxel-centre range of ``shape`` along
    every axis (where linear interpolation of a linear field is exact, no border clamping)."""
    mask = torch.ones(points.shape[0], *points.shape[2:], dtype=torch.bool)
    for k, s in enumerate(shape):
        lim = 1 - 1 / s - 1e-6
        mask &= points[:, k].abs() <= lim
    return mask


def _smooth_field(shape, amplitude: float, batch: int = 1) -> torch.Tensor:
    """A smooth, asymmetric normalised displacement field (different pattern per channel)."""
    p = spatial.identity_grid(shape).expand(batch, -1, *([-1] * len(shape)))
    n = len(shape)
    chans = []
    for k in range(n):
        c = torch.ones_like(p[:, 0])
        for j in range(n):
            freq = 1.0 + 0.5 * ((j + k) % 3)
            phase = 0.3 * (j + 1) + 0.7 * k
            c = c * torch.sin(math.pi * 0.5 * freq * p[:, j] + phase)
        chans.append(c)
    return amplitude * torch.stack(chans, 1)


# --------------------------------------------------------------------------- grids


@DIMS
def test_identity_grid_voxel_centres(n):
    shape = SHAPES[n]
    grid = spatial.identity_grid(shape)
    assert grid.shape == (1, n, *shape)
    for k, s in enumerate(shape):
        # channel k varies along axis k only, from -1 + 1/s to 1 - 1/s in steps of 2/s
        line = grid[0, k].movedim(k, 0).reshape(s, -1)
        expected = (2 * torch.arange(s, dtype=torch.float32) + 1) / s - 1
        assert torch.allclose(line, expected[:, None].expand_as(line), atol=0)


# ------------------------------------------------------------------- identity warp


@DIMS
def test_zero_field_warp_is_identity(n):
    shape = SHAPES[n]
    x = torch.randn(2, 3, *shape, generator=_gen(1))
    zero = torch.zeros(2, n, *shape)
    for mode in ("border", "zeros", "reflection"):
        out = spatial.warp(x, zero, padding_mode=mode)
        assert out.shape == x.shape
        assert torch.allclose(out, x, atol=1e-6, rtol=0)


@DIMS
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_zero_field_warp_labels_is_identity(n, dtype):
    shape = SHAPES[n]
    labels = torch.randint(0, 7, (2, 1, *shape), generator=_gen(2)).to(dtype)
    out = spatial.warp_labels(labels, torch.zeros(2, n, *shape))
    assert out.dtype == dtype
    assert torch.equal(out, labels)


@DIMS
def test_warp_broadcasts_single_field_over_batch(n):
    shape = SHAPES[n]
    x = torch.randn(3, 1, *shape, generator=_gen(3))
    u = _smooth_field(shape, 0.05)  # batch 1
    out = spatial.warp(x, u)
    for i in range(3):
        assert torch.allclose(out[i : i + 1], spatial.warp(x[i : i + 1], u), atol=1e-6)


# ---------------------------------------------------------------------- known shift


@DIMS
@pytest.mark.parametrize("k", [-3, 2])
def test_integer_shift_moves_square(n, k):
    """u = k voxels along axis a  =>  out(i) = x(i + k): the square moves by -k voxels."""
    shape = (16, 16) if n == 2 else (16, 16, 8)
    for axis in range(n):
        x = torch.zeros(1, 1, *shape)
        lo = [s // 2 - 1 for s in shape]
        hi = [s // 2 + 1 for s in shape]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        x[(0, 0, *sl)] = 1.0

        u_vox = torch.zeros(1, n, *shape)
        u_vox[:, axis] = float(k)
        u = spatial.voxel_to_normalised(u_vox)
        out = spatial.warp(x, u)
        labels_out = spatial.warp_labels(x.long(), u)

        expected = torch.zeros_like(x)
        lo_e, hi_e = list(lo), list(hi)
        lo_e[axis] -= k
        hi_e[axis] -= k
        expected[(0, 0, *tuple(slice(a, b) for a, b in zip(lo_e, hi_e)))] = 1.0
        # integer shift: sampling hits voxel centres, no interpolation error
        assert torch.allclose(out, expected, atol=1e-6, rtol=0), f"axis {axis}"
        assert torch.equal(labels_out, expected.long()), f"axis {axis}"


@DIMS
def test_warp_labels_nearest_neighbour_and_zero_outside(n):
    shape = (16, 16) if n == 2 else (16, 16, 8)
    labels = torch.randint(1, 9, (1, 1, *shape), generator=_gen(15))  # no background inside
    for frac, step in ((0.4, 0), (0.6, 1), (-0.6, -1)):
        u_vox = torch.zeros(1, n, *shape)
        u_vox[:, 0] = 3 + frac  # out(i) = labels(nearest(i + 3 + frac)) = labels(i + 3 + step)
        out = spatial.warp_labels(labels, spatial.voxel_to_normalised(u_vox))
        s = 3 + step
        # no interpolated (new) label values, exact nearest-neighbour copy
        assert torch.equal(out[:, :, : shape[0] - s], labels[:, :, s:])
        # sampled outside the image: background 0 (not the border label)
        assert torch.equal(out[:, :, shape[0] - s + 1 :], torch.zeros_like(out[:, :, shape[0] - s + 1 :]))


# ----------------------------------------------------------------- composition


@DIMS
def test_invert_affine_undoes_apply_affine(n):
    theta = _random_affine(n, batch=3, seed=7).double()
    inv = spatial.invert_affine(theta)
    assert torch.allclose(inv, _invert_affine(theta), atol=1e-10)  # the block formula A^-1, -A^-1 b
    pts = torch.randn(3, n, 5, 4, dtype=torch.float64)
    assert torch.allclose(spatial.apply_affine(inv, spatial.apply_affine(theta, pts)), pts, atol=1e-10)


@DIMS
def test_compose_affine_with_its_inverse_is_identity(n):
    shape = SHAPES[n] if n == 2 else (12, 10, 8)
    theta = _random_affine(n, batch=2, seed=4)
    theta_inv = _invert_affine(theta)
    u = spatial.affine_to_displacement(theta, shape)
    u_inv = spatial.affine_to_displacement(theta_inv, shape)
    ident = spatial.identity_grid(shape)

    # phi^-1 ∘ phi: u_inv is sampled at phi(p); exact where phi(p) stays inside the centres
    r1 = spatial.compose(u_inv, u)
    m1 = _inside_centre_range(ident + u, shape)
    assert m1.float().mean() > 0.3  # the check is not vacuous
    assert r1.abs().amax(1)[m1].max() < 1e-5

    # phi ∘ phi^-1
    r2 = spatial.compose(u, u_inv)
    m2 = _inside_centre_range(ident + u_inv, shape)
    assert m2.float().mean() > 0.3
    assert r2.abs().amax(1)[m2].max() < 1e-5

    # and the composition is really not trivially zero where the affine moves points
    assert u.abs().max() > 0.02


@DIMS
def test_compose_order_is_phi1_after_phi2(n):
    """compose(u1, u2) = phi1 ∘ phi2, checked on two non-commuting affines."""
    shape = SHAPES[n] if n == 2 else (12, 10, 8)
    t1 = _random_affine(n, seed=5, strength=0.1)
    t2 = _random_affine(n, seed=6, strength=0.1)
    u1 = spatial.affine_to_displacement(t1, shape)
    u2 = spatial.affine_to_displacement(t2, shape)
    got = spatial.compose(u1, u2)
    want = spatial.affine_to_displacement(_affine_product(t1, t2), shape)
    wrong = spatial.affine_to_displacement(_affine_product(t2, t1), shape)
    mask = _inside_centre_range(spatial.identity_grid(shape) + u2, shape)
    assert mask.float().mean() > 0.3
    err = (got - want).abs().amax(1)[mask]
    assert err.max() < 1e-5
    # the two orders differ by far more than the tolerance, so the check means something
    assert (want - wrong).abs().amax(1)[mask].max() > 1e-3


@DIMS
def test_warp_of_composition_equals_sequential_warps(n):
    """warp(x, compose(u1, u2)) == warp(warp(x, u1), u2) for integer shifts (exact sampling)."""
    shape = (16, 16) if n == 2 else (16, 16, 8)
    x = torch.randn(1, 1, *shape, generator=_gen(7))
    u1_vox = torch.zeros(1, n, *shape)
    u2_vox = torch.zeros(1, n, *shape)
    u1_vox[:, 0] = 2.0
    u1_vox[:, n - 1] = -1.0
    u2_vox[:, 1] = 1.0
    u2_vox[:, 0] = -1.0
    u1, u2 = spatial.voxel_to_normalised(u1_vox), spatial.voxel_to_normalised(u2_vox)
    a = spatial.warp(x, spatial.compose(u1, u2), padding_mode="zeros")
    b = spatial.warp(spatial.warp(x, u1, padding_mode="zeros"), u2, padding_mode="zeros")
    # away from the borders (where the zero padding of the intermediate image differs)
    sl = (slice(None), slice(None), *_interior(shape, 3))
    assert torch.allclose(a[sl], b[sl], atol=1e-6)
    # total shift (+1 along axis 0 etc.) really moved the image
    assert not torch.allclose(a[sl], x[sl], atol=1e-3)


@DIMS
def test_compose_smooth_field_with_fixed_point_inverse(n):
    shape = (32, 24) if n == 2 else (24, 24, 16)
    amp = 0.12  # normalised; max |grad u| ~ 0.4 voxel/voxel, so the iteration contracts
    u = _smooth_field(shape, amp)
    assert u.abs().max() > 0.5 * amp
    # inverse by fixed-point iteration v = -u(p + v)
    v = -u.clone()
    for _ in range(50):
        v = -spatial.warp(u, v)
    interior = (slice(None), slice(None), *_interior(shape, 3))
    # phi_u ∘ phi_v: this is the fixed-point equation itself, so it must converge to ~0
    assert spatial.compose(u, v)[interior].abs().max() < 1e-5
    # phi_v ∘ phi_u: an independent check (samples v at points moved by u); only the
    # linear interpolation error of v remains (~2-4e-3 on these grids)
    tol = 7e-3
    assert spatial.compose(v, u)[interior].abs().max() < tol
    # the first-order inverse -u is measurably worse, so the tolerance discriminates
    assert spatial.compose(-u, u)[interior].abs().max() > 2 * tol


@DIMS
def test_compose_affine_displacement_special_cases(n):
    shape = SHAPES[n]
    theta = _random_affine(n, batch=2, seed=8)
    zero = torch.zeros(2, n, *shape)
    assert torch.allclose(
        spatial.compose_affine_displacement(theta, zero), spatial.affine_to_displacement(theta, shape), atol=1e-6
    )
    u = _smooth_field(shape, 0.1, batch=2)
    ident = spatial.identity_affine(2, n)
    assert torch.allclose(spatial.compose_affine_displacement(ident, u), u, atol=1e-6)


@DIMS
def test_compose_affine_displacement_matches_compose(n):
    """theta(p + u(p)) - p equals compose(affine field, u) where no border clamping occurs."""
    shape = (16, 12) if n == 2 else (12, 10, 8)
    theta = _random_affine(n, seed=9)
    u = _smooth_field(shape, 0.05)
    exact = spatial.compose_affine_displacement(theta, u)
    via_grid = spatial.compose(spatial.affine_to_displacement(theta, shape), u)
    mask = _inside_centre_range(spatial.identity_grid(shape) + u, shape)
    assert mask.float().mean() > 0.3
    assert (exact - via_grid).abs().amax(1)[mask].max() < 1e-5


def test_affine_to_displacement_shape_mismatch_raises():
    with pytest.raises(ValueError):
        spatial.affine_to_displacement(spatial.identity_affine(1, 2), (4, 4, 4))


# ---------------------------------------------------------------- Jacobian determinant


@DIMS
def test_jacobian_identity_is_one(n):
    shape = SHAPES[n]
    for unit in ("normalised", "voxel"):
        det = spatial.jacobian_determinant(torch.zeros(2, n, *shape), unit=unit)
        assert det.shape == (2, *shape)
        assert torch.equal(det, torch.ones_like(det))


@DIMS
def test_jacobian_of_scaling_is_product_of_scales(n):
    shape = SHAPES[n]
    scales = [1.2, 0.7, 1.5][:n]
    expected = math.prod(scales)
    # normalised: u_k(p) = (s_k - 1) p_k
    p = spatial.identity_grid(shape)
    u_norm = torch.cat([(s - 1) * p[:, k : k + 1] for k, s in enumerate(scales)], 1)
    det = spatial.jacobian_determinant(u_norm)
    assert torch.allclose(det, torch.full_like(det, expected), atol=1e-5)  # whole grid
    # voxel units directly
    q = _voxel_coords(shape)
    u_vox = torch.cat([(s - 1) * q[:, k : k + 1] for k, s in enumerate(scales)], 1)
    det_v = spatial.jacobian_determinant(u_vox, unit="voxel")
    assert torch.allclose(det_v, torch.full_like(det_v, expected), atol=1e-5)
    # the unit flag matters: the normalised field read as voxels is almost the identity
    det_wrong = spatial.jacobian_determinant(u_norm, unit="voxel")
    assert not torch.allclose(det_wrong, torch.full_like(det_wrong, expected), atol=1e-2)


@DIMS
def test_jacobian_of_affine_is_det_of_matrix(n):
    shape = SHAPES[n]
    theta = _random_affine(n, seed=10, strength=0.2)
    det = spatial.jacobian_determinant(spatial.affine_to_displacement(theta, shape))
    # in voxel units the matrix is A_vox = D A D^-1 (D = diag(S/2)): same determinant
    assert torch.allclose(det, torch.linalg.det(theta[:, :, :n]).view(1, *([1] * n)).expand_as(det), atol=1e-4)


@DIMS
def test_jacobian_detects_fold(n):
    shape = SHAPES[n]
    axis = 0
    q = _voxel_coords(shape)[:, axis]  # voxel index along axis 0
    a, b = 4, 10  # band of rows reversed: phi(i) = a + b - 1 - i for a <= i < b
    u = torch.zeros(1, n, *shape)
    band = (q >= a) & (q < b)
    u[:, axis] = torch.where(band, (a + b - 1) - 2 * q, torch.zeros_like(q))
    det = spatial.jacobian_determinant(u, unit="voxel")
    assert (det <= 0).any()
    # strictly inside the band the mapping is a reflection: det == -1
    inner = det[:, a + 1 : b - 1]
    assert torch.allclose(inner, -torch.ones_like(inner))
    # far from the band the identity is untouched
    assert torch.allclose(det[:, b + 1 :], torch.ones_like(det[:, b + 1 :]))


# ------------------------------------------------------------------------ resizing


@DIMS
def test_resize_field_voxel_constant_scales_with_size(n):
    shape = SHAPES[n]
    v = torch.tensor([1.5, -2.0, 0.75][:n])
    field = v.view(1, n, *([1] * n)).expand(2, n, *shape).clone()
    up = spatial.resize_field(field, [2 * s for s in shape], unit="voxel")
    assert up.shape == (2, n, *[2 * s for s in shape])
    assert torch.allclose(up, (2 * v).view(1, n, *([1] * n)).expand_as(up), atol=1e-6)
    # anisotropic resize: per-axis ratios
    new = [s * f for s, f in zip(shape, (2, 3, 1)[:n])]
    ratio = torch.tensor([2.0, 3.0, 1.0][:n])
    up2 = spatial.resize_field(field, new, unit="voxel")
    assert torch.allclose(up2, (ratio * v).view(1, n, *([1] * n)).expand_as(up2), atol=1e-6)


@DIMS
def test_resize_field_normalised_constant_unchanged(n):
    shape = SHAPES[n]
    v = torch.tensor([0.1, -0.2, 0.05][:n])
    field = v.view(1, n, *([1] * n)).expand(1, n, *shape).clone()
    for new in ([2 * s for s in shape], [s // 2 for s in shape]):
        out = spatial.resize_field(field, new)
        assert out.shape == (1, n, *new)
        assert torch.allclose(out, v.view(1, n, *([1] * n)).expand_as(out), atol=1e-6)


@DIMS
def test_resize_field_affine_low_to_high_matches_direct(n):
    low = (8, 4) if n == 2 else (8, 4, 4)
    high = tuple(2 * s for s in low)
    theta = _random_affine(n, batch=2, seed=11, strength=0.15)
    up = spatial.resize_field(spatial.affine_to_displacement(theta, low), high)
    direct = spatial.affine_to_displacement(theta, high)
    # interior: the high-res voxel centres between the first and last low-res centres
    sl = (slice(None), slice(None), *_interior(high, 1))
    assert torch.allclose(up[sl], direct[sl], atol=1e-5)
    # the same field read as voxel units would be wrong (vectors doubled)
    up_vox = spatial.resize_field(spatial.affine_to_displacement(theta, low), high, unit="voxel")
    assert not torch.allclose(up_vox[sl], direct[sl], atol=1e-3)


def test_resize_field_bad_unit_raises():
    with pytest.raises(ValueError):
        spatial.resize_field(torch.zeros(1, 2, 4, 4), (8, 8), unit="mm")


# --------------------------------------------------------------------- conversions


@DIMS
def test_normalised_voxel_round_trip_and_values(n):
    shape = SHAPES[n]
    d = torch.randn(2, n, *shape, generator=_gen(12))
    vox = spatial.normalised_to_voxel(d)
    assert torch.allclose(spatial.voxel_to_normalised(vox), d, atol=1e-6)
    assert torch.allclose(spatial.normalised_to_voxel(spatial.voxel_to_normalised(d)), d, atol=1e-6)
    # a normalised displacement of 1 is half the axis length in voxels
    one = torch.ones(1, n, *shape)
    v1 = spatial.normalised_to_voxel(one)
    for k, s in enumerate(shape):
        assert torch.allclose(v1[:, k], torch.full_like(v1[:, k], s / 2))


@DIMS
def test_voxel_mm_round_trip_anisotropic(n):
    shape = SHAPES[n]
    spacing = [0.5, 1.25, 3.0][:n]
    d = torch.randn(2, n, *shape, generator=_gen(13))
    mm = spatial.voxel_to_mm(d, spacing)
    for k, s in enumerate(spacing):
        assert torch.allclose(mm[:, k], d[:, k] * s, atol=1e-6)
    assert torch.allclose(spatial.mm_to_voxel(mm, spacing), d, atol=1e-5)
    with pytest.raises(ValueError):
        spatial.voxel_to_mm(d, spacing + [1.0])


# ------------------------------------------------------------- velocity integration


@DIMS
def test_integrate_zero_velocity_is_zero(n):
    shape = SHAPES[n]
    out = spatial.integrate_velocity(torch.zeros(2, n, *shape))
    assert torch.equal(out, torch.zeros_like(out))


@DIMS
def test_integrate_small_smooth_velocity_is_diffeomorphic(n):
    shape = (32, 24) if n == 2 else (16, 16, 12)
    v = _smooth_field(shape, 0.05)
    u = spatial.integrate_velocity(v, steps=7)
    assert torch.isfinite(u).all()
    det = spatial.jacobian_determinant(u)
    assert (det > 0).all()
    # for a small velocity exp(v) ≈ id + v to first order, and is not trivially zero
    assert u.abs().max() > 0.5 * v.abs().max()
    assert (u - v).abs().max() < 0.2 * v.abs().max()
    # exp(-v) is the inverse of exp(v) (interior, interpolation error only)
    w = spatial.integrate_velocity(-v, steps=7)
    interior = (slice(None), slice(None), *_interior(shape, 3))
    assert spatial.compose(u, w)[interior].abs().max() < 2e-3


def test_integrate_velocity_avoids_folding_where_displacement_folds():
    """A velocity large enough that, used directly as a displacement, it folds; its
    scaling-and-squaring exponential does not."""
    shape = (32, 32)
    p = spatial.identity_grid(shape)
    # u_0 = a sin(pi p_0): d u_vox/d i = a * pi * cos(pi p_0) (voxel/voxel) -> folds if a*pi > 1
    a = 0.45
    v = torch.zeros(1, 2, *shape)
    v[:, 0] = a * torch.sin(math.pi * p[:, 0]) * torch.cos(0.5 * math.pi * p[:, 1])
    assert (spatial.jacobian_determinant(v) <= 0).any()
    u = spatial.integrate_velocity(v, steps=7)
    assert (spatial.jacobian_determinant(u) > 0).all()


# ------------------------------------------------------------------------ laplacian


@DIMS
def test_laplacian_of_affine_field_is_zero_everywhere(n):
    shape = SHAPES[n]
    q = _voxel_coords(shape)
    g = _gen(14)
    a = torch.randn(2, 3, n, generator=g)
    b = torch.randn(2, 3, 1, generator=g)
    field = (torch.einsum("bcn,ns->bcs", a, q[0].flatten(1)) + b).view(2, 3, *shape)
    lap = spatial.laplacian(field)
    assert lap.shape == field.shape
    assert torch.allclose(lap, torch.zeros_like(lap), atol=1e-5)  # borders included


@DIMS
def test_laplacian_of_quadratic(n):
    shape = SHAPES[n]
    q = _voxel_coords(shape)
    sl = (slice(None), slice(None), *_interior(shape, 1))
    for k in range(n):
        f = q[:, k : k + 1] ** 2
        lap = spatial.laplacian(f)
        assert torch.allclose(lap[sl], torch.full_like(lap[sl], 2.0), atol=1e-5)
    f_all = (q**2).sum(1, keepdim=True)
    lap = spatial.laplacian(f_all)
    assert torch.allclose(lap[sl], torch.full_like(lap[sl], 2.0 * n), atol=1e-4)
    # per channel: channel c of a multi-channel field gets its own Laplacian
    two = torch.cat([q[:, :1] ** 2, 3 * q[:, 1:2] ** 2], 1)
    lap2 = spatial.laplacian(two)
    assert torch.allclose(lap2[:, 0][sl[1:]], torch.full_like(lap2[:, 0][sl[1:]], 2.0), atol=1e-5)
    assert torch.allclose(lap2[:, 1][sl[1:]], torch.full_like(lap2[:, 1][sl[1:]], 6.0), atol=1e-4)


def test_spatial_dims_validation():
    with pytest.raises(ValueError):
        spatial.warp(torch.zeros(1, 1, 8), torch.zeros(1, 1, 8))
    with pytest.raises(ValueError):
        spatial.warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))


# --------------------------------------------------------------------------- affine fits and moments


@DIMS
def test_fit_affine_recovers_an_affine_from_exact_correspondences(n):
    theta = _random_affine(n, batch=3, strength=0.2).double()
    pts = torch.rand(3, n, 50, generator=_gen(1), dtype=torch.float64) * 2 - 1
    fit = spatial.fit_affine(pts, spatial.apply_affine(theta, pts))
    torch.testing.assert_close(fit, theta)
    # from a field: the affine's own displacement
    shape = SHAPES[n]
    u = spatial.affine_to_displacement(theta, shape)
    torch.testing.assert_close(spatial.fit_affine_to_field(u), theta)


@DIMS
def test_fit_affine_weights_ignore_outliers_and_ridge_keeps_a_degenerate_fit_at_identity(n):
    theta = _random_affine(n, batch=1, strength=0.2).double()
    pts = torch.rand(1, n, 40, generator=_gen(2), dtype=torch.float64) * 2 - 1
    target = spatial.apply_affine(theta, pts)
    target[:, :, :5] += 3.0  # five wild correspondences
    w = torch.ones(1, 40, dtype=torch.float64)
    assert (spatial.fit_affine(pts, target, w) - theta).abs().max() > 0.1
    w[:, :5] = 0
    torch.testing.assert_close(spatial.fit_affine(pts, target, w), theta)
    # every point the same: no affine is determined; the ridge picks the identity's linear part
    same = torch.zeros(1, n, 10, dtype=torch.float64)
    fit = spatial.fit_affine(same, same + 0.1, ridge=1e-6)
    torch.testing.assert_close(fit[:, :, :n], torch.eye(n, dtype=torch.float64)[None], atol=1e-4, rtol=0)
    torch.testing.assert_close(fit[:, :, n], torch.full((1, n), 0.1, dtype=torch.float64), atol=1e-4, rtol=0)


@DIMS
def test_fit_affine_matrix_weights_trust_only_the_directions_they_weigh(n):
    theta = _random_affine(n, batch=2, strength=0.2).double()
    g = _gen(6)
    pts = torch.rand(2, n, 60, generator=g, dtype=torch.float64) * 2 - 1
    target = spatial.apply_affine(theta, pts)
    w = torch.rand(2, 60, generator=g, dtype=torch.float64)
    # w_i I is the scalar weight w_i, ridge included
    iso = w[:, None, None, :] * torch.eye(n, dtype=torch.float64)[None, :, :, None]
    noisy = target + 0.05 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(spatial.fit_affine(pts, noisy, iso, ridge=1e-3),
                               spatial.fit_affine(pts, noisy, w, ridge=1e-3))
    # each target wrong along one direction (an edge's tangent), weighted only across it
    normal = torch.nn.functional.normalize(torch.randn(2, n, 60, generator=g, dtype=torch.float64), dim=1)
    tangent = torch.randn(2, n, 60, generator=g, dtype=torch.float64)
    tangent = tangent - (tangent * normal).sum(1, keepdim=True) * normal
    slid = target + 0.3 * tangent
    across = torch.einsum("bkp,blp->bklp", normal, normal)
    torch.testing.assert_close(spatial.fit_affine(pts, slid, across), theta)
    assert (spatial.fit_affine(pts, slid, w) - theta).abs().max() > 0.02
    # the same through a field
    shape = SHAPES[n]
    u = spatial.affine_to_displacement(theta, shape)
    eye = torch.eye(n, dtype=torch.float64).view(1, n, n, *([1] * n)).expand(2, n, n, *shape)
    torch.testing.assert_close(spatial.fit_affine_to_field(u, eye), theta)


@DIMS
def test_compose_affine_is_applying_one_after_the_other(n):
    t1, t2 = _random_affine(n, 2, seed=3).double(), _random_affine(n, 2, seed=4).double()
    pts = torch.rand(2, n, 20, generator=_gen(5), dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(spatial.apply_affine(spatial.compose_affine(t1, t2), pts),
                               spatial.apply_affine(t1, spatial.apply_affine(t2, pts)))


def _ellipsoid(shape, centre, radii) -> torch.Tensor:
    """(1, 1, *S) image in [-1, 1]: 1 inside an axis-aligned ellipsoid (normalised coords), -1 outside."""
    p = spatial.identity_grid(shape, dtype=torch.float64)[0]
    r = sum(((p[k] - c) / a) ** 2 for k, (c, a) in enumerate(zip(centre, radii)))
    return torch.where(r <= 1, 1.0, -1.0)[None, None].float()


@DIMS
def test_moments_recover_the_translation_and_axis_scaling_between_two_ellipsoids(n):
    shape = (64, 48, 40)[:n]
    spacing = (1.0, 2.0, 1.5)[:n]
    fixed = _ellipsoid(shape, [0.05] * n, [0.4, 0.3, 0.35][:n])
    moving = _ellipsoid(shape, [-0.1, 0.15, 0.0][:n], [0.52, 0.27, 0.35][:n])
    theta = spatial.moments_affine(moving, fixed, spacing, "scale").double()
    # fixed → moving: centre to centre, radii ratio per axis
    expect = torch.zeros(1, n, n + 1, dtype=torch.float64)
    ratio = torch.tensor([0.52 / 0.4, 0.27 / 0.3, 1.0][:n], dtype=torch.float64)
    expect[0, :, :n] = torch.diag(ratio)
    expect[0, :, n] = torch.tensor([-0.1, 0.15, 0.0][:n], dtype=torch.float64) - ratio * 0.05
    torch.testing.assert_close(theta, expect, atol=0.02, rtol=0)
    com = spatial.moments_affine(moving, fixed, spacing, "com").double()
    torch.testing.assert_close(com[0, :, :n], torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(com[0, :, n], expect[0, :, n] + (ratio - 1) * 0.05, atol=0.02, rtol=0)


def test_principal_axes_recover_a_rotation_in_millimetres_not_normalised_units():
    shape, spacing = (64, 32), (1.0, 2.0)  # a square field of view of 64 mm, anisotropic grid
    fixed = _ellipsoid(shape, [0.0, 0.0], [0.6, 0.25])
    angle = math.radians(15)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    # the moving image is the fixed one rotated: sample fixed at R^-1 p (the extents are equal in mm)
    theta_true = torch.cat([rot, torch.zeros(2, 1, dtype=torch.float64)], 1)[None]
    moving = (spatial.sample_at(fixed.double(), spatial.apply_affine(
        spatial.invert_affine(theta_true), spatial.identity_grid(shape, dtype=torch.float64))) > 0).float() * 2 - 1
    theta = spatial.moments_affine(moving, fixed, spacing, "principal").double()
    torch.testing.assert_close(theta, theta_true, atol=0.03, rtol=0)
    scale_only = spatial.moments_affine(moving, fixed, spacing, "scale").double()
    assert (scale_only[0, 0, 1]).abs() < 1e-9  # no rotation in "scale"


def test_moments_of_an_empty_image_give_the_identity():
    empty, img = -torch.ones(1, 1, 16, 16), _ellipsoid((16, 16), [0, 0], [0.5, 0.4])
    for mode in spatial.MOMENT_MODES:
        torch.testing.assert_close(spatial.moments_affine(empty, img, (1.0, 1.0), mode), spatial.identity_affine(1, 2))
    with pytest.raises(ValueError, match="moments mode"):
        spatial.moments_affine(img, img, (1.0, 1.0), "median")


# ------------------------------------------------------------- mixed precision


def test_geometry_stays_float32_and_exact_under_bf16_autocast():
    """A bf16-mixed run warps, composes and fits affines exactly as an fp32 run (spatial.float32)."""
    g = torch.Generator().manual_seed(3)
    theta = spatial.identity_affine(2, 2) + 0.05 * torch.randn(2, 2, 3, generator=g)
    x = torch.rand(2, 3, 40, 36, generator=g)
    u = 0.02 * torch.randn(2, 2, 40, 36, generator=g)
    src, dst = torch.rand(2, 2, 50, generator=g) * 2 - 1, torch.rand(2, 2, 50, generator=g) * 2 - 1

    def run():
        disp = spatial.affine_to_displacement(theta, (40, 36))
        return {"disp": disp, "warp": spatial.warp(x, disp), "compose": spatial.compose_affine_displacement(theta, u),
                "fit": spatial.fit_affine(src, dst), "theta": spatial.compose_affine(theta, theta)}

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16  # autocast is on
        mixed = run()
        features = spatial.warp(x.bfloat16(), u)  # a bf16 feature map (a convolution's output) warped
    for k in plain:
        assert mixed[k].dtype == torch.float32, k
        torch.testing.assert_close(mixed[k], plain[k], rtol=0, atol=0, msg=k)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, spatial.warp(x.bfloat16().float(), u), rtol=0, atol=0)


def test_the_shared_identity_grid_made_under_inference_mode_serves_training_too():
    shape = (13, 7)  # a shape no other test uses, so the grid is first built here
    with torch.inference_mode():
        first = spatial.identity_grid(shape)
        spatial.warp(torch.rand(1, 1, *shape), torch.zeros(1, 2, *shape))
    assert not first.is_inference() and spatial.identity_grid(shape) is first
    theta = (spatial.identity_affine(1, 2) + 0.01).requires_grad_()
    spatial.affine_to_displacement(theta, shape).sum().backward()  # would fail with an inference tensor
    assert theta.grad is not None
    assert spatial.identity_grid(shape, dtype=torch.float64).dtype == torch.float64
