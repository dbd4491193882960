"""Scoring against known transforms: reading the test transform off TorchIO, the ceiling fields,
the single-resampling Dice, affine errors and their split, predicted-against-true slopes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_modules.augment import apply_params, known_transform, sample_params
from fire_lightning import metrics, spatial, truth
from fire_lightning.config import load_config

pytestmark = pytest.mark.usefixtures("single_thread")


def _smooth(shape) -> torch.Tensor:
    """(1, *S) a smooth, asymmetric image (linear interpolation of it is nearly exact)."""
    p = spatial.identity_grid(shape)[0]
    n = len(shape)
    r = sum(((p[k] - c) / w) ** 2 for k, (c, w) in enumerate(zip((0.1, -0.15, 0.05)[:n], (0.45, 0.3, 0.5)[:n])))
    return torch.exp(-r)[None]


def _params(n: int, seed: int, elastic: bool = True, **aug):
    cfg = load_config(None, [f"data.augment.{k}={v}" for k, v in aug.items()])
    if not elastic:
        cfg.data.augment.elastic_max_mm = 0.0
    shape = (48, 40, 32)[:n]
    spacing = (2.0, 2.5, 3.0)[:n]
    return sample_params(np.random.default_rng(seed), n, [s * e for s, e in zip(spacing, shape)], cfg.data.augment), \
        shape, spacing


def _inside(theta: torch.Tensor, shape, margin: float = 0.1) -> torch.Tensor:
    """Fixed-grid points that the affine sends well inside the moving grid (no border effects)."""
    q = spatial.apply_affine(theta[None], spatial.identity_grid(shape))
    return (q.abs().amax(1) < 1 - margin)[0]


@pytest.mark.parametrize("n", [2, 3])
def test_the_known_affine_undoes_what_torchio_did(n):
    params, shape, spacing = _params(n, seed=3, elastic=False)
    img = _smooth(shape)
    moved, _ = apply_params(img, None, spacing, params)
    kt = known_transform(params, spacing, shape)
    assert kt.theta.shape == (n, n + 1) and kt.elastic.shape == (n, *shape)
    assert kt.elastic.abs().max() < 1e-4  # no elastic part
    back = spatial.warp(moved[None], spatial.affine_to_displacement(kt.theta[None], shape))[0, 0]
    inside = _inside(kt.theta, shape)
    assert (back - img[0])[inside].abs().max() < 0.03  # the image was interpolated twice
    assert (moved[0] - img[0])[inside].abs().max() > 0.15
    # and the sampled parameters are what it reads: the scale along each axis, the rotation's size
    p = truth.affine_parameters(kt.theta[None].double(), shape, spacing)
    np.testing.assert_allclose(p["log_scale"][0].exp().numpy(), params.scales[:n], rtol=0.02)
    angles = np.abs(np.asarray(params.degrees))
    expect = angles[2:] if n == 2 else np.sort(angles)
    got = p["rotation_deg"][0].abs().numpy()
    np.testing.assert_allclose(got if n == 2 else np.sort(got), expect, atol=0.3)


@pytest.mark.parametrize("n", [2, 3])
def test_the_true_field_undoes_the_elastic_part_too(n):
    params, shape, spacing = _params(n, seed=5, elastic_max_mm=8.0)
    img = _smooth(shape)
    moved, _ = apply_params(img, None, spacing, params)
    kt = known_transform(params, spacing, shape)
    assert kt.elastic.abs().max() > 0.01
    fields = truth.true_fields(kt.theta[None], kt.elastic[None])
    inside = _inside(kt.theta, shape)
    err = {k: (spatial.warp(moved[None], u)[0, 0] - img[0])[inside].abs().mean() for k, u in fields.items()}
    assert err["True"] < 0.25 * err["True-Affine"]
    # it inverts the known transform: the fixed grid's points come back to themselves
    pts = truth.source_points(fields["True"], kt.theta[None], kt.elastic[None])
    assert (pts - spatial.identity_grid(shape)).abs().max() < 1e-4


def test_single_resampling_dice_is_exact_for_the_truth_and_lower_otherwise():
    params, shape, spacing = _params(2, seed=7)
    p = spatial.identity_grid(shape)[0]
    labels = ((p[0] ** 2 / 0.5 + p[1] ** 2 / 0.3) < 1).long() + ((p[0] ** 2 / 0.1 + p[1] ** 2 / 0.2) < 1).long()
    labels = labels[None, None]
    kt = known_transform(params, spacing, shape)
    th, el = kt.theta[None], kt.elastic[None]
    fields = truth.true_fields(th, el)
    exact = truth.single_resampling_labels(labels, fields["True"], th, el)
    assert torch.equal(exact, labels)
    dice = lambda lab: metrics.dice_per_label(lab, labels, [1, 2]).nanmean(1).item()  # noqa: E731
    aff = dice(truth.single_resampling_labels(labels, fields["True-Affine"], th, el))
    none = dice(truth.single_resampling_labels(labels, None, th, el))
    twice = dice(spatial.warp_labels(apply_params(labels[0].float(), labels[0], spacing, params)[1][None],
                                     fields["True"]))
    assert none < aff < 1.0 and twice < 1.0


def test_affine_error_splits_rotation_scale_and_translation():
    shape, spacing = (64, 72), (3.0, 3.0)
    ident = spatial.identity_affine(1, 2, dtype=torch.float64)
    h = truth.half_extent(shape, spacing)

    def from_mm(m, t):
        lin = torch.diag(1 / h) @ m @ torch.diag(h)
        return torch.cat([lin, (t / h)[:, None]], 1)[None]

    a = math.radians(7)
    rot = from_mm(torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64),
                  torch.zeros(2, dtype=torch.float64))
    e = truth.affine_error(rot, ident, shape, spacing)
    assert e["affine_err_rotation_deg"].item() == pytest.approx(7, abs=1e-6)
    assert e["affine_err_scale_pct"].item() < 1e-6 and e["affine_err_translation_mm"].item() < 1e-6
    shift = from_mm(torch.eye(2, dtype=torch.float64), torch.tensor([3.0, 4.0], dtype=torch.float64))
    e = truth.affine_error(shift, ident, shape, spacing)
    assert e["affine_err_mm"].item() == pytest.approx(5) and e["affine_err_translation_mm"].item() == pytest.approx(5)
    assert e["affine_err_rotation_deg"].item() < 1e-6
    scale = from_mm(torch.diag(torch.tensor([1.2, 1.0], dtype=torch.float64)), torch.zeros(2, dtype=torch.float64))
    e = truth.affine_error(ident, scale, shape, spacing)  # the method misses a 20 % scaling
    assert e["affine_err_scale_pct"].item() == pytest.approx(100 * (1 - 1 / 1.2))
    assert e["affine_err_shear_pct"].item() < 1e-6
    # over a region: the mean distance and the centroid's translation are the region's
    region = torch.zeros(1, 1, *shape, dtype=torch.bool)
    region[..., 40:, :] = True  # the part of the grid on the positive side of axis 0
    e = truth.affine_error(ident, scale, shape, spacing, region)
    assert e["affine_err_translation_mm"].item() > 1 and e["affine_err_mm"].item() > 1
    for k, v in truth.affine_error(rot, rot, shape, spacing).items():
        assert v.abs().max() < 1e-9, k


def test_slope_and_correlation():
    x = torch.linspace(-5, 5, 21)
    assert truth.slope_and_correlation(2 * x + 1, x) == pytest.approx((2.0, 1.0))
    slope, corr = truth.slope_and_correlation(torch.full_like(x, 3.0), x)
    assert slope == pytest.approx(0.0) and corr == pytest.approx(0.0)
    assert all(math.isnan(v) for v in truth.slope_and_correlation(x, torch.ones_like(x)))
