"""FIRE+IO: per-pair refinement of the network's transform (fire_lightning/refine.py)."""

from __future__ import annotations

import pytest
import torch

from fire_lightning import spatial
from fire_lightning.losses import MutualInformation, smoothness, smoothness_weight
from fire_lightning.refine import RefineSettings, objective, refine, settings_from_cli

from .conftest import gen

pytestmark = pytest.mark.usefixtures("single_thread")


def _blobs(shape, centre_shift=0.0) -> torch.Tensor:
    """(1, 1, *S) two smooth blobs of different brightness, moved by ``centre_shift`` along axis 0."""
    p = spatial.identity_grid(shape)[0]
    img = torch.zeros(shape)
    for c, amp, w in (((-0.25, 0.1, 0.0), 1.0, 0.06), ((0.3, -0.2, 0.1), 0.5, 0.04)):
        r = sum((p[k] - (c[k] + (centre_shift if k == 0 else 0))) ** 2 for k in range(len(shape)))
        img = img + amp * torch.exp(-r / w)
    return (img.clamp(0, 1) * 2 - 1)[None, None]


@pytest.mark.parametrize("n", [2, 3])
def test_refinement_lowers_the_loss_it_optimises(n):
    shape = (24, 20, 16)[:n]
    fixed = _blobs(shape)
    moving = -_blobs(shape, 0.1)  # another modality (inverted contrast), shifted
    theta = spatial.identity_affine(1, n)
    nr = 0.01 * torch.randn(1, n, *[s // 4 for s in shape], generator=gen(0))
    settings = RefineSettings(steps=30)
    th, v, losses = refine(moving, fixed, theta, nr, settings)
    mi = MutualInformation(settings.mi_bins, settings.mi_sigma_ratio)
    lam = smoothness_weight(n, shape)
    before = objective(moving, fixed, theta, nr, mi, lam).item()
    after = objective(moving, fixed, th, v, mi, lam).item()
    assert after < before - 0.05 and losses[0] == pytest.approx(before, rel=1e-5)
    assert not th.requires_grad and not v.requires_grad


def test_zero_steps_is_the_networks_output_bit_for_bit():
    theta, nr = torch.randn(2, 2, 3, generator=gen(1)), torch.randn(2, 2, 4, 5, generator=gen(2))
    x = torch.rand(2, 1, 16, 20)
    th, v, losses = refine(x, x, theta, nr, RefineSettings(steps=0))
    assert th is theta and v is nr and losses == []


def test_refinement_recovers_a_shift_the_network_missed():
    shape = (32, 32)
    fixed = _blobs(shape)
    moving = _blobs(shape, 0.15)  # moving shows the anatomy 0.15 further along axis 0
    theta, nr = spatial.identity_affine(1, 2), torch.zeros(1, 2, 8, 8)
    th, v, _ = refine(moving, fixed, theta, nr, RefineSettings(steps=150, lr_affine=5e-3, field=False))
    assert th[0, 0, 2].item() == pytest.approx(0.15, abs=0.02)  # fixed point p is found at p + 0.15 in moving
    assert th[0, 1, 2].abs().item() < 0.02
    assert torch.equal(v, nr)  # the field was not refined


def test_refinement_is_deterministic():
    shape = (20, 20)
    fixed, moving = _blobs(shape), _blobs(shape, 0.08)
    args = (moving, fixed, spatial.identity_affine(1, 2), torch.zeros(1, 2, 5, 5), RefineSettings(steps=10))
    a, b = refine(*args), refine(*args)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("steps,lr,match", [("-1", None, "integer >= 0"), ("2.5", None, "integer"),
                                            ("x", None, "integer"), ("5", "0", "> 0"), ("5", "-1e-3", "> 0"),
                                            ("5", "fast", "number")])
def test_bad_refine_values_are_one_line_errors(steps, lr, match):
    with pytest.raises(ValueError, match=match) as e:
        settings_from_cli(steps, lr_affine=lr)
    assert "\n" not in str(e.value)
    assert settings_from_cli(None) is None and settings_from_cli("3").steps == 3


@pytest.mark.parametrize("smooth,match", [("-1", ">= 0"), ("heavy", "number"), ("inf", ">= 0"), ("nan", ">= 0")])
def test_refine_smooth_option_is_checked_and_needs_steps(smooth, match):
    with pytest.raises(ValueError, match=match):
        settings_from_cli("5", smooth=smooth)
    with pytest.raises(ValueError, match="need --refine N"):
        settings_from_cli(None, smooth="0.5")
    assert settings_from_cli("5", smooth="0.25").smooth_weight == 0.25
    assert settings_from_cli("5", smooth="0").smooth_weight == 0.0


def test_a_lighter_smoothness_term_lets_the_refined_field_bend_more():
    shape = (24, 24)
    fixed, moving = _blobs(shape), _blobs(shape, 0.1)
    theta, v0 = spatial.identity_affine(1, 2), torch.zeros(1, 2, 12, 12)

    def bending(weight):
        _, v, _ = refine(moving, fixed, theta, v0, RefineSettings(steps=30, smooth_weight=weight, affine=False))
        return float(smoothness(v, shape))

    assert bending(0.0) > bending(1.0) > bending(100.0)


@pytest.mark.parametrize("text", ["", "a,b", "-1,5", "2.5"])
def test_bad_refine_curve_steps_are_one_line_errors(text):
    from fire_lightning.refine_curve import parse_steps

    with pytest.raises(ValueError, match="integers >= 0") as e:
        parse_steps(text)
    assert "\n" not in str(e.value)
    assert parse_steps("25, 0,10,10") == [0, 10, 25]


def test_the_step_hook_sees_what_a_shorter_refinement_returns():
    shape = (20, 20)
    fixed, moving = _blobs(shape), -_blobs(shape, 0.08)
    theta, nr = spatial.identity_affine(1, 2), 0.01 * torch.randn(1, 2, 5, 5, generator=gen(3))
    seen = {}
    refine(moving, fixed, theta, nr, RefineSettings(steps=6), on_step=lambda k, th, v: seen.update({k: (th, v)}))
    assert sorted(seen) == list(range(1, 7))
    th4, v4, _ = refine(moving, fixed, theta, nr, RefineSettings(steps=4))
    assert torch.equal(seen[4][0], th4) and torch.equal(seen[4][1], v4)
