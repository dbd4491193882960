"""Registration metrics against known answers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from fire_lightning import metrics, spatial

pytestmark = pytest.mark.usefixtures("single_thread")


def _labels(shape=(24, 20)) -> torch.Tensor:
    lab = torch.zeros(1, 1, *shape, dtype=torch.long)
    lab[..., 4:12, 5:15] = 1
    lab[..., 14:20, 3:9] = 2
    return lab


def test_dice_of_identical_maps_is_one_and_of_disjoint_maps_zero():
    lab = _labels()
    assert torch.equal(metrics.dice_per_label(lab, lab, [1, 2]), torch.ones(1, 2, dtype=torch.float64))
    other = torch.zeros_like(lab)
    other[..., 0:2, 0:2] = 1
    d = metrics.dice_per_label(other, lab, [1, 2, 3])
    assert d[0, 0] == 0 and d[0, 1] == 0 and math.isnan(d[0, 2])  # 3 absent from both: NaN


@pytest.mark.parametrize("k, axis, spacing", [(1, 0, (1.0, 1.0)), (3, 0, (2.0, 0.5)), (2, 1, (2.0, 0.5))])
def test_hd95_of_a_stripe_shifted_by_k_voxels_is_k_times_the_spacing(k, axis, spacing):
    # A one-voxel-thick stripe across the image: every surface point is exactly k voxels from the other.
    a = torch.zeros(1, 1, 24, 20, dtype=torch.long)
    index = [slice(None)] * 4
    index[2 + axis] = 8
    a[tuple(index)] = 1
    b = torch.roll(a, k, dims=2 + axis)
    hd = metrics.hd95_per_label(a, b, [1], spacing)
    assert hd.shape == (1, 1)
    assert hd[0, 0].item() == pytest.approx(k * spacing[axis])


def test_hd95_is_zero_for_identical_maps_and_nan_for_an_absent_label():
    lab = _labels()
    hd = metrics.hd95_per_label(lab, lab, [1, 2, 3], (1.0, 1.0))
    assert hd[0, 0] == 0 and hd[0, 1] == 0 and math.isnan(hd[0, 2])


def test_hd95_of_an_erased_structure_is_the_largest_distance_not_a_gap():
    lab = _labels()
    erased = lab.clone()
    erased[erased == 2] = 0
    hd = metrics.hd95_per_label(erased, lab, [1, 2], (2.0, 1.0))
    assert hd[0, 0] == 0
    assert hd[0, 1].item() == pytest.approx(math.hypot(24 * 2.0, 20 * 1.0))  # the grid's diagonal in mm
    assert metrics.hd95_per_label(lab, erased, [2], (2.0, 1.0))[0, 0] == hd[0, 1]  # invented: the same


@pytest.mark.parametrize("shape, spacing", [((40, 44), (3.0, 3.0)), ((40, 44), (2.0, 0.7)),
                                            ((14, 16, 12), (1.0, 1.5, 2.5))])
def test_hd95_equals_monais_hausdorff_distance(shape, spacing):
    # Smooth random label maps (3 structures; one map with a structure erased, one with a structure
    # touching the border): the scipy route must give MONAI's figures.
    from monai.metrics import compute_hausdorff_distance

    g = torch.Generator().manual_seed(len(shape))
    pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
    x = pool(torch.randn(6, 1, *shape, generator=g), 5, 1, 2)
    y = pool(torch.randn(6, 1, *shape, generator=g), 5, 1, 2)
    cuts = torch.tensor([-0.1, 0.0, 0.1])
    lab_f, lab_m = torch.bucketize(x, cuts), torch.bucketize(0.8 * x + 0.2 * y, cuts)
    lab_m[0][lab_m[0] == 2] = 0
    ours = metrics.hd95_per_label(lab_m, lab_f, [1, 2, 3], spacing)
    onehot = [torch.cat([(m == k) for k in (1, 2, 3)], dim=1) for m in (lab_m, lab_f)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about the erased structure
        ref = compute_hausdorff_distance(*onehot, include_background=True, percentile=95, spacing=list(spacing))
    present = [torch.stack([(m == k).flatten(1).any(1) for k in (1, 2, 3)], 1) for m in (lab_m, lab_f)]
    both = present[0] & present[1]
    assert both.sum() >= 15 and not both[0, 1]
    torch.testing.assert_close(ours[both], ref.double()[both], rtol=1e-6, atol=1e-5)
    assert (ours[~both] == math.dist([0] * len(shape), [n * s for n, s in zip(shape, spacing)])).all()


def test_hd95_in_3d_uses_the_spacing_of_the_shifted_axis():
    a = torch.zeros(1, 1, 10, 12, 8, dtype=torch.long)
    a[..., 3] = 1  # a plane normal to axis 2
    b = torch.roll(a, 2, dims=4)
    assert metrics.hd95_per_label(a, b, [1], (1.0, 1.0, 2.5))[0, 0].item() == pytest.approx(5.0)


def test_folding_and_log_jacobian_of_known_fields():
    zero = torch.zeros(2, 2, 16, 16)
    assert torch.all(metrics.folding_percent(zero) == 0)
    assert torch.allclose(metrics.log_jacobian_std(zero), torch.zeros(2, dtype=torch.float64))
    grid = spatial.identity_grid((16, 16))
    # a uniform scaling: det J constant (no spread of log det J), nothing folds
    scale = 0.3 * grid
    assert metrics.folding_percent(scale)[0] == 0
    assert metrics.log_jacobian_std(scale)[0] < 1e-6
    # u_0 = -2 p_0 mirrors axis 0: det J = -1 everywhere → everything folds
    mirror = torch.cat([-2 * grid[:, :1], torch.zeros_like(grid[:, 1:])], dim=1)
    assert metrics.folding_percent(mirror)[0] == 100
    # a field folded on one half only: folding strictly between 0 and 100, log det J spread > 0
    half = mirror * (grid[:, :1] > 0)
    f = metrics.folding_percent(half)[0]
    assert 0 < f < 100
    assert metrics.log_jacobian_std(half)[0] > 1


def test_inverse_consistency_error_in_mm():
    shape, spacing = (16, 20), (2.0, 3.0)
    t_vox = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(1, 2, *shape)
    t = spatial.voxel_to_normalised(t_vox)
    assert metrics.inverse_consistency_error(t, -t, spacing)[0] == pytest.approx(0, abs=1e-5)
    expected = math.hypot(1.5 * 2.0, 2.0 * 3.0)
    assert metrics.inverse_consistency_error(t, torch.zeros_like(t), spacing)[0] == pytest.approx(expected, rel=1e-5)


def test_score_methods_scores_every_method_the_same_way():
    lab = _labels()
    shift_vox = torch.zeros(1, 2, 24, 20)
    shift_vox[:, 0] = 1.0  # sample one voxel further along axis 0: labels move by -1 voxel
    shift = spatial.voxel_to_normalised(shift_vox)
    names = {1: "A", 2: "B"}
    res = metrics.score_methods(lab, lab, {"none": None, "shifted": shift}, names, (2.0, 1.0),
                                inverse_fields={"shifted": -shift})
    assert set(res) == {"none", "shifted"}
    none, shifted = res["none"], res["shifted"]
    assert none["dice_mean"][0] == 1 and none["hd95_mean"][0] == 0
    assert "folding_pct" not in none and "ice_mm" not in none
    assert shifted["dice_A"][0] == pytest.approx(2 * 7 * 10 / (2 * 8 * 10))
    assert shifted["hd95_A"][0] == pytest.approx(2.0)  # one voxel along axis 0 at 2 mm
    assert shifted["folding_pct"][0] == 0 and shifted["logjac_std"][0] < 1e-6
    assert shifted["ice_mm"][0] < 1e-5  # exact where phi_ba stays inside the grid
    assert all(v.dtype == torch.float64 and v.shape == (1,) for r in res.values() for v in r.values())


def test_inverse_consistency_of_an_exact_affine_inverse_is_zero_even_where_it_leaves_the_grid():
    shape = (20, 24)
    theta = torch.tensor([[[1.4, 0.2, 0.3], [-0.1, 0.8, -0.2]]])  # scales out of the grid in places
    full = torch.cat([theta, torch.tensor([[[0.0, 0.0, 1.0]]])], dim=1)
    inv = torch.linalg.inv(full)[:, :2]
    u_ab, u_ba = spatial.affine_to_displacement(theta, shape), spatial.affine_to_displacement(inv, shape)
    assert metrics.inverse_consistency_error(u_ab, u_ba, (1.0, 1.0))[0] < 0.01  # only the outer half-voxel clamps
    # a field that maps everything outside: no point to measure
    assert torch.isnan(metrics.inverse_consistency_error(u_ab, torch.full_like(u_ba, 3.0), (1.0, 1.0))[0])


def _smooth_field(seed: int, shape=(24, 20), amplitude: float = 0.08) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return spatial.resize_field((torch.rand(1, 2, 3, 3, generator=g) * 2 - 1) * amplitude, shape)


def test_the_nonaffine_part_of_an_affine_field_is_zero_and_of_a_sum_is_the_nonaffine_term():
    theta = torch.tensor([[[1.1, 0.2, 0.05], [-0.1, 0.9, -0.1]]])
    affine = spatial.affine_to_displacement(theta, (24, 20))
    region = torch.ones(1, 1, 24, 20)
    assert metrics.nonaffine_part(affine, region).abs().max() < 1e-6
    wiggle = _smooth_field(0)
    torch.testing.assert_close(metrics.nonaffine_part(affine + wiggle, region), metrics.nonaffine_part(wiggle, region),
                               atol=1e-6, rtol=0)


def test_field_errors_are_zero_for_the_true_field_and_the_true_magnitude_for_the_identity():
    spacing = (2.0, 3.0)
    true = _smooth_field(1) + spatial.affine_to_displacement(torch.tensor([[[1.0, 0.1, 0.0], [0.0, 1.0, 0.05]]]),
                                                             (24, 20))
    region = torch.zeros(1, 1, 24, 20)
    region[..., 4:20, 3:17] = 1
    zero = metrics.field_errors(true, true, region, spacing)
    assert zero["field_err_mm"].item() == pytest.approx(0, abs=1e-9)
    assert zero["field_err_nonaffine_mm"].item() == pytest.approx(0, abs=1e-9)
    ident = metrics.field_errors(None, true, region, spacing)
    mm = spatial.voxel_to_mm(spatial.normalised_to_voxel(true.double()), spacing).norm(dim=1)
    assert ident["field_err_mm"].item() == pytest.approx(mm[region[:, 0] > 0].mean().item(), rel=1e-9)
    # the identity has no non-affine part: its non-affine error is the truth's non-affine magnitude, which an
    # affine-only method shares
    affine_only = spatial.affine_to_displacement(spatial.fit_affine_to_field(true, region[:, 0]), (24, 20))
    assert metrics.field_errors(affine_only, true, region, spacing)["field_err_nonaffine_mm"].item() == \
        pytest.approx(ident["field_err_nonaffine_mm"].item(), rel=1e-6)
