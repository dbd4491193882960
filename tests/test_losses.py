"""Unit tests for fire_lightning.losses (tiny CPU tensors only)."""

from __future__ import annotations

import math

import pytest
import torch

from fire_lightning import spatial
from fire_lightning.losses import (
    FIRELoss,
    LocalNCC,
    MutualInformation,
    fire_forward,
    fire_loss,
    make_similarity,
    rms,
    smoothness,
    smoothness_weight,
)
from fire_lightning.nets.fire import FIRENet

from .conftest import gen as _gen
from .conftest import model_config

# Small image shapes whose axes all differ (so a mix-up of axes shows).
NET_SHAPES = {2: (36, 16), 3: (36, 12, 8)}


pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny_net(n: int) -> FIRENet:
    torch.manual_seed(0)
    return FIRENet(n, model_config(synthesis={"width": 2, "n_res": 1}, affine={"channels": [4, 4, 4], "hidden": 8}))


# ------------------------------------------------------------------------------ rms


def test_rms_identical_is_exactly_zero():
    a = torch.randn(3, 1, 8, 8, generator=_gen(0))
    assert rms(a, a.clone()).item() == 0.0


def test_rms_is_per_sample_root_mean_square_averaged_over_batch():
    # sample 0: every difference 1 (rms 1); sample 1: every difference 3 (rms 3)
    a = torch.zeros(2, 1, 4, 4)
    b = torch.cat([torch.ones(1, 1, 4, 4), 3 * torch.ones(1, 1, 4, 4)])
    # per sample then averaged: (1 + 3) / 2 = 2, whereas sqrt(global mse) = sqrt(5) = 2.236.
    # The documented eps regularisation (sqrt(mse + 1e-8) - sqrt(1e-8)) shifts the value by
    # at most sqrt(1e-8) = 1e-4, hence atol 2e-4.
    assert torch.allclose(rms(a, b), torch.tensor(2.0), atol=2e-4, rtol=0)

    x = torch.randn(4, 2, 6, 5, generator=_gen(1))
    y = torch.randn(4, 2, 6, 5, generator=_gen(2)) * torch.arange(1, 5).view(4, 1, 1, 1)
    expected = (x - y).pow(2).flatten(1).mean(1).sqrt().mean()
    assert torch.allclose(rms(x, y), expected, atol=2e-4, rtol=0)
    # symmetric
    assert torch.allclose(rms(x, y), rms(y, x), atol=0)


def test_rms_shape_mismatch_raises():
    with pytest.raises(ValueError):
        rms(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


def test_rms_gradient_finite_at_identical_inputs():
    a = torch.randn(2, 1, 5, 5, generator=_gen(3), requires_grad=True)
    loss = rms(a, a.detach().clone())
    loss.backward()
    assert a.grad is not None
    assert torch.isfinite(a.grad).all()
    # and also when both arguments are the same tensor
    b = torch.randn(2, 1, 5, 5, generator=_gen(4), requires_grad=True)
    rms(b, b).backward()
    assert torch.isfinite(b.grad).all()


# ----------------------------------------------------------------------- smoothness


@pytest.mark.parametrize("n", [2, 3])
def test_smoothness_of_affine_field_is_zero(n):
    shape = (9, 7) if n == 2 else (6, 5, 4)
    g = _gen(5)
    theta = torch.eye(n, n + 1).unsqueeze(0) + 0.2 * torch.randn(2, n, n + 1, generator=g)
    u = spatial.affine_to_displacement(theta, shape)
    assert u.abs().max() > 0.05
    assert smoothness(u).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n", [2, 3])
def test_smoothness_of_nonlinear_field_is_positive(n):
    shape = (9, 7) if n == 2 else (6, 5, 4)
    p = spatial.identity_grid(shape)
    u = 0.1 * torch.sin(math.pi * p) * torch.cos(math.pi * p.flip(1))
    assert smoothness(u).item() > 1e-6


def test_smoothness_exact_value_for_quadratic_field():
    """u_0 = c * i^2 (voxel index i along axis 0): Laplacian 2c per voxel² inside, 0 on the two
    border rows (linear extrapolation there). Derivatives are taken in normalised coordinates
    (spacing h = 2 / S0), so each value is 2c / h²; the sum of squares is 4 c^2 (S0 - 2) S1 / h⁴
    and the batch mean of c = 1 and c = 2 gives 10 (S0 - 2) S1 / h⁴."""
    s0, s1 = 7, 5
    i = torch.arange(s0, dtype=torch.float32).view(s0, 1).expand(s0, s1)
    u = torch.zeros(2, 2, s0, s1)
    u[0, 0] = i**2
    u[1, 0] = 2 * i**2
    h = 2 / s0
    assert smoothness(u).item() == pytest.approx(10 * (s0 - 2) * s1 / h**4, rel=1e-5)


@pytest.mark.parametrize("n,shape", [(2, (36, 16)), (2, (128, 128)), (3, (8, 8, 8)), (3, (64, 32, 16))])
def test_smoothness_weight(n, shape):
    assert smoothness_weight(n, shape) == pytest.approx(2 ** (2 * n) / (10 * math.prod(shape)), rel=1e-12)


# ------------------------------------------------------------------ mutual information


def _ring_labels(h: int = 32, w: int = 32) -> torch.Tensor:
    """(h, w) integer map with 4 regions of unequal area (rings around an off-centre point)."""
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    r = ((yy - 12) ** 2 + (xx - 18) ** 2).sqrt()
    return torch.bucketize(r, torch.tensor([5.0, 10.0, 15.0]))


LEVELS = torch.tensor([-0.75, -0.25, 0.25, 0.75])


def test_mi_of_image_with_itself_beats_shuffled_copy():
    lab = _ring_labels()
    h, w = lab.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = (LEVELS[lab] + 0.15 * torch.sin(2 * yy) * torch.cos(1.5 * xx)).clamp(-1, 1).view(1, 1, h, w)
    mi = MutualInformation()
    same = mi(img, img)  # -MI: lower = more shared information
    for seed in range(3):
        shuffled = img.flatten()[torch.randperm(h * w, generator=_gen(seed))].view_as(img)
        other = mi(img, shuffled)
        # marginals identical, dependence destroyed: MI drops to near its small-sample bias
        assert same < other - 0.5, (same, other)
        assert -other < 0.3
    assert torch.isfinite(same) and same.dim() == 0


def test_mi_invariant_to_non_monotonic_intensity_permutation():
    """MI depends only on the joint distribution of *which* intensity level co-occurs with
    which, not on the level values, so any bijective remapping of one image's intensities
    (here a non-monotonic permutation of 4 levels) leaves the true MI unchanged.

    The Parzen estimate keeps this property when each level's Gaussian window is disjoint
    from the others': the joint histogram is then a sum of non-overlapping blocks
    c_l * w(l) w(pi(l))^T, and MI = sum_l c_l log(1 / c_l) = the level entropy, whatever the
    window shapes. Here levels are 0.25 apart in [0, 1] and sigma = 0.5 / 31, i.e. ~15
    sigmas apart, so the windows do not overlap at float precision.
    """
    lab = _ring_labels()
    h, w = lab.shape
    img = LEVELS[lab].view(1, 1, h, w)
    perm = torch.tensor([2, 0, 3, 1])  # -0.75->0.25, -0.25->-0.75, 0.25->0.75, 0.75->-0.25
    remapped = LEVELS[perm][lab].view(1, 1, h, w)
    # the remap is non-trivial for intensity-based losses
    assert rms(img, remapped) > 0.5
    mi = MutualInformation()
    ref = mi(img, img)
    assert torch.allclose(mi(img, remapped), ref, rtol=1e-3, atol=0)
    assert torch.allclose(mi(remapped, img), ref, rtol=1e-3, atol=0)
    # and it is the entropy of the level distribution (areas are unequal, so this is not log 4)
    c = torch.bincount(lab.flatten(), minlength=4).float() / lab.numel()
    entropy = -(c * c.log()).sum()
    assert abs(entropy - math.log(4)) > 0.05
    assert torch.allclose(-ref, entropy, rtol=1e-3, atol=0)


def test_mi_batch_and_3d():
    g = _gen(6)
    a = torch.rand(2, 1, 6, 6, 6, generator=g) * 2 - 1
    mi = MutualInformation(num_bins=16)
    v = mi(a, a)
    assert v.dim() == 0 and torch.isfinite(v)
    assert v < mi(a, torch.rand(2, 1, 6, 6, 6, generator=g) * 2 - 1)


@pytest.mark.parametrize("bins,sigma", [(32, 0.5), (16, 1.0)])
def test_mi_equals_monais_dense_parzen_mi_in_value_and_gradient(bins, sigma):
    """The windowed implementation keeps only the nearest bins; MONAI's evaluates them all."""
    from monai.losses import GlobalMutualInformationLoss

    g = _gen(7)
    x = torch.rand(3, 1, 20, 24, generator=g) * 2 - 1
    y = (torch.sin(3 * x) + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = MutualInformation(bins, sigma)(a, y)
    monai_mi = GlobalMutualInformationLoss(kernel_type="gaussian", num_bins=bins, sigma_ratio=sigma)
    ref = monai_mi((b + 1) / 2, (y + 1) / 2)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=2e-3)
    assert torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), 0) > 0.999
    per = MutualInformation(bins, sigma).per_sample(x, y)
    assert per.shape == (3,) and per.mean().item() == pytest.approx(ours.item(), abs=1e-6)


def test_mi_against_precomputed_windows_of_the_fixed_image_is_the_same_value_and_gradient():
    g = _gen(3)
    x = torch.rand(2, 1, 10, 12, 8, generator=g) * 2 - 1
    y = (x.pow(2) + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    mi = MutualInformation()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    direct, cached = mi.per_sample(a, y), mi.per_sample(b, mi.windows(y))
    direct.sum().backward()
    cached.sum().backward()
    assert torch.equal(direct, cached) and torch.equal(a.grad, b.grad)
    with pytest.raises(ValueError, match="shapes differ"):
        mi.per_sample(x[:, :, :-1], mi.windows(y))


# ------------------------------------------------------------------- make_similarity


def test_make_similarity_unknown_raises():
    with pytest.raises(ValueError):
        make_similarity("bogus", 2)


@pytest.mark.parametrize("name", ["rms", "mi", "lncc"])
def test_make_similarity_returns_finite_scalar(name):
    g = _gen(7)
    a = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    b = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    fn = make_similarity(name, 2)
    assert callable(fn)
    v = fn(a, b)
    assert v.dim() == 0 and torch.isfinite(v)
    # every similarity is a dissimilarity: identical images score lower than unrelated ones
    assert fn(a, a) < v


def test_make_similarity_types_and_3d_lncc():
    assert make_similarity("rms", 3) is rms
    assert isinstance(make_similarity("mi", 3), MutualInformation)
    ncc = make_similarity("lncc", 3, ncc_kernel=3)
    assert isinstance(ncc, LocalNCC)
    a = torch.rand(1, 1, 8, 8, 8, generator=_gen(8))
    v = ncc(a, a)
    assert torch.isfinite(v)
    assert v.item() == pytest.approx(-1.0, abs=1e-2)  # -LNCC of an image with itself


# ------------------------------------------------------------------------ fire_loss


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def fire_setup(request):
    n = request.param
    net = _tiny_net(n)
    g = _gen(10 + n)
    shape = NET_SHAPES[n]
    x_a = torch.rand(2, 1, *shape, generator=g) * 2 - 1
    x_b = torch.rand(2, 1, *shape, generator=g) * 2 - 1
    out = fire_forward(net, x_a, x_b)
    return n, net, x_a, x_b, out


def test_fire_loss_total_is_sum_of_parts(fire_setup):
    n, net, x_a, x_b, out = fire_setup
    loss = fire_loss(out, x_a, x_b)
    assert isinstance(loss, FIRELoss)
    for name, v in loss._asdict().items():
        assert v.dim() == 0, name
        assert torch.isfinite(v), name
    parts = [v for k, v in loss._asdict().items() if k != "total"]
    assert torch.allclose(loss.total, torch.stack(parts).sum(), rtol=1e-6, atol=1e-6)
    assert loss.total > 0
    # at the exact-identity initialisation, the transform terms vanish
    assert loss.r_smooth.item() == 0.0  # disp_nr == 0 exactly
    assert loss.reg_ic.item() == pytest.approx(0.0, abs=1e-4)  # compose(0, 0) = 0
    d = loss.as_dict("train/")
    assert set(d) == {f"train/{k}" for k in FIRELoss._fields}


def test_fire_loss_adversarial_and_similarity(fire_setup):
    n, net, x_a, x_b, out = fire_setup
    base = fire_loss(out, x_a, x_b)
    adv = torch.tensor(0.5)
    with_adv = fire_loss(out, x_a, x_b, adversarial=adv)
    assert with_adv.adv.item() == 0.5
    assert torch.allclose(with_adv.total, base.total + 0.5, atol=1e-5)
    # only reg_acc depends on the similarity
    mi_loss = fire_loss(out, x_a, x_b, similarity=make_similarity("mi", n))
    assert torch.isfinite(mi_loss.total)
    assert not torch.allclose(mi_loss.reg_acc, base.reg_acc)
    for k in FIRELoss._fields:
        if k not in ("total", "reg_acc"):
            assert torch.equal(getattr(mi_loss, k), getattr(base, k)), k


def test_smoothness_in_image_voxels_relates_to_normalised_by_the_grid_size():
    """Fields varying along axis 0 only. In image-voxel units, component k is scaled by S_k/2 and
    the derivative along axis 0 is taken per image voxel (×(2/S_0)² against normalised), so the
    Laplacian of component k is (S_k/2)(2/S_0)² times the normalised one — whatever the feature grid."""
    feat, image = (9, 6), (36, 24)
    i = torch.linspace(-1, 1, feat[0]).view(feat[0], 1).expand(*feat)
    for k in (0, 1):
        u = torch.zeros(1, 2, *feat)
        u[0, k] = 0.1 * torch.sin(3 * i)
        factor = (image[k] / 2) * (2 / image[0]) ** 2
        assert smoothness(u, image).item() == pytest.approx(smoothness(u).item() * factor**2, rel=1e-4)
        assert smoothness(u, image).item() > 0
