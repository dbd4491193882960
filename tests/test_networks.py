"""Unit tests for fire_lightning.nets (tiny CPU networks only)."""

from __future__ import annotations

import itertools

import pytest
import torch

from fire_lightning import spatial
from fire_lightning.losses import fire_forward, fire_loss
from fire_lightning.nets.affine import AffineNet, DenseAffineNet, MatchAffineNet, build_affine_head
from fire_lightning.nets.fire import FIRENet
from fire_lightning.nets.nonrigid import NonRigidNet
from fire_lightning.nets.synthesis import Decoder, Encoder
from fire_lightning.nets.transformation import TransformationNet
from fire_lightning.schema import AffineConfig

from .conftest import gen as _gen
from .conftest import model_config

# See tests/test_losses.py: AffineNet's instance norms need > 1 spatial element after three
# halvings of the S/4 feature grid, so one image axis must be >= 33 voxels in training mode.
NET_SHAPES = {2: (36, 16), 3: (36, 12, 8)}
WIDTH = 2


pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny_net(n: int, width: int = WIDTH, spacing=None, **sections) -> FIRENet:
    """A tiny FIRENet; ``sections``: the ``model`` section's keys (its sections as dicts) on top of the tiny ones."""
    torch.manual_seed(0)
    synthesis = {"width": width, "n_res": 1, **sections.pop("synthesis", {})}
    affine = {"channels": [4, 4, 4], "hidden": 8, **sections.pop("affine", {})}
    return FIRENet(n, model_config(synthesis=synthesis, affine=affine, **sections), spacing)


def _affine(**keys) -> AffineConfig:
    return AffineConfig(**{"channels": [4, 4, 4], "hidden": 8, **keys})


def _inputs(n: int, batch: int = 2, seed: int = 0):
    g = _gen(seed)
    shape = NET_SHAPES[n]
    return (torch.rand(batch, 1, *shape, generator=g) * 2 - 1, torch.rand(batch, 1, *shape, generator=g) * 2 - 1)


# ------------------------------------------------------------- identity at init


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_transformation_is_exact_identity_at_init(n, diffeomorphic):
    net = _tiny_net(n, width=4, nonrigid={"diffeomorphic": diffeomorphic, "integration_steps": 4})
    net.train()
    x_a, x_b = _inputs(n, seed=1)
    shape = NET_SHAPES[n]
    with torch.no_grad():
        t = net(x_a, x_b)
        t_ba = net.T_ba(net.G(x_b), net.G(x_a))
    for tr in (t, t_ba):
        assert torch.equal(tr.theta, spatial.identity_affine(2, n))
        assert torch.equal(tr.nr_feat, torch.zeros_like(tr.nr_feat))
        assert torch.equal(tr.disp_nr, torch.zeros_like(tr.disp_nr))
        assert tr.disp_nr.shape == (2, n, *[s // 4 for s in shape])
        field = tr.field(shape)
        assert field.shape == (2, n, *shape)
        assert torch.equal(field, torch.zeros_like(field))
        af = tr.affine_field(shape)
        assert torch.equal(af, torch.zeros_like(af))


@pytest.mark.parametrize("n", [2, 3])
def test_sub_networks_identity_init_on_arbitrary_features(n):
    g = _gen(2)
    fshape = (9, 4) if n == 2 else (9, 3, 2)
    fa = 10 * torch.randn(3, 8, *fshape, generator=g)
    fb = 10 * torch.randn(3, 8, *fshape, generator=g)
    torch.manual_seed(0)
    aff = AffineNet(n, 16, channels=(4, 4, 4), hidden=8)
    assert torch.equal(aff(fa, fb), spatial.identity_affine(3, n))
    nr = NonRigidNet(n, 8, 4)
    assert torch.equal(nr(fa, fb), torch.zeros(3, n, *fshape))
    tn = TransformationNet(n, (8, 4, 2), _affine())
    tr = tn(fa, fb)
    assert torch.equal(tr.theta, spatial.identity_affine(3, n))
    assert torch.equal(tr.disp_nr, torch.zeros(3, n, *fshape))


# ------------------------------------------------------------- how T_af produces theta


@pytest.mark.parametrize("n", [2, 3])
def test_the_dense_affine_head_starts_at_the_identity_and_fits_its_correspondences(n):
    g = _gen(4)
    fshape = (12, 8) if n == 2 else (12, 8, 8)
    fa, fb = torch.randn(2, 8, *fshape, generator=g), torch.randn(2, 8, *fshape, generator=g)
    torch.manual_seed(0)
    head = DenseAffineNet(n, 16, channels=(4, 4, 4))
    assert torch.equal(head(fa, fb), spatial.identity_affine(2, n))
    # theta is the least-squares affine through the head's correspondences, whatever they are
    with torch.no_grad():
        head.head.weight.normal_(0, 0.3)
    u, w = head.correspondences(fa, fb)
    assert u.shape == (2, n, *fshape) and w.shape == (2, *fshape)
    torch.testing.assert_close(w.flatten(1).sum(1), torch.ones(2))
    torch.testing.assert_close(head(fa, fb), spatial.fit_affine_to_field(u, w, ridge=head.ridge))
    # tiny feature grids still give one correspondence per point
    small = torch.randn(1, 8, *([3] * n), generator=g)
    assert head.correspondences(small, small)[0].shape == (1, n, *([3] * n))


def _sharp_match_head(n: int, weighting: str) -> MatchAffineNet:
    torch.manual_seed(0)
    head = MatchAffineNet(n, 8, channels=(16, 16, 16), weighting=weighting)
    with torch.no_grad():
        head.log_temperature.fill_(-5.0)  # a near-hard argmax
    return head


@pytest.mark.parametrize("radius", [2, 3])
def test_the_match_heads_search_radius_bounds_the_shift_it_finds(radius):
    """``model.affine.radius``: a shift of 3 feature points is found with a radius of 3, not with 2."""
    torch.manual_seed(0)
    head = build_affine_head(2, 8, AffineConfig(head="match", channels=[16, 16, 16], radius=radius))
    with torch.no_grad():
        head.log_temperature.fill_(-5.0)  # a near-hard argmax
    f = torch.randn(1, 8, 16, 20, generator=_gen(11))
    u, _ = head.correspondences(f, torch.roll(f, shifts=-3, dims=2))
    found = u[:, 0, 5:-5, 5:-5] * 16 / 2  # in feature points
    if radius >= 3:
        torch.testing.assert_close(found, torch.full_like(found, 3.0), atol=0.05, rtol=0)
    else:  # out of reach: no point finds it
        assert (found.abs() <= radius + 1e-3).all() and (found - 3).abs().min() > 0.9


@pytest.mark.parametrize("weighting", ["peak", "aperture"])
def test_the_match_head_finds_a_shift_and_fits_the_affine_through_its_matches(weighting):
    head = _sharp_match_head(2, weighting)
    f = torch.randn(1, 8, 16, 20, generator=_gen(11))
    fb = torch.roll(f, shifts=-1, dims=2)  # fixed point p shows moving point p + 1 along axis 0
    u, w = head.correspondences(f, fb)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    torch.testing.assert_close(u[inner][:, 0], torch.full_like(u[inner][:, 0], 2 / 16), atol=1e-3, rtol=0)
    torch.testing.assert_close(u[inner][:, 1], torch.zeros_like(u[inner][:, 1]), atol=1e-3, rtol=0)
    assert w.shape == ((1, 16, 20) if weighting == "peak" else (1, 2, 2, 16, 20))
    torch.testing.assert_close(head(f, fb), head.fit(u, w))
    if weighting == "peak":  # the scalar fit, ridge as given
        torch.testing.assert_close(head(f, fb), spatial.fit_affine_to_field(u, w, ridge=head.ridge))


@pytest.mark.parametrize("size, radii", [((5, 6), (2, 1)), ((16, 18), (2, 2)), ((32, 36), (2, 2)),
                                         ((4, 5, 3), (1, 2, 1))])
def test_both_cost_volume_routes_give_the_windowed_dot_products(size, radii, monkeypatch):
    """The cost volume against a point-by-point reference (the moving descriptor at p + offset, the
    border replicated), on the all-pairs route and on the shifted-product route, values and gradients."""
    from fire_lightning.nets import cost_volume

    ea, eb = torch.randn(2, 2, 3, *size, generator=_gen(21), dtype=torch.float64)
    offsets = MatchAffineNet.offsets(radii).t().tolist()  # (D, n)
    ref = torch.zeros(2, len(offsets), *size, dtype=torch.float64)
    for p in itertools.product(*[range(s) for s in size]):
        for k, off in enumerate(offsets):
            q = tuple(min(max(c + o, 0), s - 1) for c, o, s in zip(p, off, size))
            ref[(slice(None), k) + p] = (eb[(slice(None), slice(None)) + p] * ea[(slice(None), slice(None)) + q]).sum(1)
    grads = []
    for dense_limit in (10 ** 6, 0):  # every grid all-pairs, then none
        monkeypatch.setattr(cost_volume, "DENSE_POINTS_PER_OFFSET", dense_limit)
        a, b = ea.clone().requires_grad_(), eb.clone().requires_grad_()
        out = MatchAffineNet.cost_volume(a, b, radii)
        torch.testing.assert_close(out, ref)
        (out * ref).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_the_shifted_route_backward_adds_into_one_gradient(monkeypatch):
    """Its backward adds each window's gradient into one gradient of the padded descriptors, in place
    (two ops per offset): autograd's own backward of the windows built a zero tensor of the padded
    size per window and axis (``slice_backward``), 2 of 3 of such ops in a FIRE step."""
    from fire_lightning.nets import cost_volume
    from fire_lightning.profiling import OpCounter

    monkeypatch.setattr(cost_volume, "DENSE_POINTS_PER_OFFSET", 0)
    a, b = (torch.randn(2, 3, 8, 9, generator=_gen(k)).requires_grad_() for k in (1, 2))
    out = MatchAffineNet.cost_volume(a, b, (2, 2))
    with OpCounter() as ops:
        out.square().sum().backward()
    assert "slice_backward" not in ops.by_op and ops.by_op["addcmul_"] == 2 * 25
    assert ops.kernels < 3 * 25


@pytest.mark.slow  # about 45 s: inductor generates and compiles C++ for the head's forward and backward
def test_the_match_head_compiles_with_inductor_on_the_shifted_route(monkeypatch):
    """``torch.compile``'s default backend (inductor) on the matching head, forward and backward, on
    the shifted-product route of the cost volume: the same values and gradients as eager. (Padding
    with ``F.pad(mode="replicate")`` stopped inductor here: its backward's strides disagree with
    their fake kernel's; under compilation the border is replicated by indexing, eager by F.pad.)"""
    import torch._dynamo

    from fire_lightning.nets import cost_volume

    monkeypatch.setattr(cost_volume, "DENSE_POINTS_PER_OFFSET", 0)
    torch.manual_seed(0)
    head = MatchAffineNet(2, 8, channels=(8, 8, 8))
    fa, fb = torch.randn(2, 2, 8, 32, 36, generator=_gen(31))
    results = []
    try:
        for fn in (head, torch.compile(head, backend="inductor", fullgraph=True)):
            head.zero_grad()
            a, b = fa.clone().requires_grad_(), fb.clone().requires_grad_()
            theta = fn(a, b)
            theta.pow(2).sum().backward()
            results.append((theta.detach(), a.grad, b.grad, head.log_temperature.grad))
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(results[1], results[0])


def test_aperture_weights_distrust_the_direction_along_an_edge():
    """Features that vary along axis 0 only (edges along axis 1): a match cannot say where along
    axis 1 it lies, and the aperture weights give that direction (almost) nothing."""
    head = _sharp_match_head(2, "aperture")
    profile = torch.randn(1, 8, 16, 1, generator=_gen(12))
    f = profile.expand(1, 8, 16, 20).contiguous()
    _, w = head.correspondences(f, f)
    inner = w[..., 3:-3, 3:-3]
    across, along = inner[:, 0, 0] * (2 / 16) ** 2, inner[:, 1, 1] * (2 / 20) ** 2  # in points
    assert (along < 0.2 * across).all()
    torch.testing.assert_close(inner[:, 0, 1], inner[:, 1, 0])  # symmetric


def test_a_thin_axis_is_not_searched():
    """An 8-slice slab has 2 feature slices: matching along them would only meet the replicated
    border, so the head neither searches nor displaces along that axis."""
    head = _sharp_match_head(3, "peak")
    assert head.search_radii((12, 14, 2)) == (2, 2, 0) and head.search_radii((16, 18)) == (2, 2)
    fa, fb = torch.randn(2, 1, 8, 12, 14, 2, generator=_gen(13))
    u, _ = head.correspondences(fa, fb)
    assert torch.equal(u[:, 2], torch.zeros_like(u[:, 2]))
    theta = head(fa, fb)
    torch.testing.assert_close(theta[:, 2], spatial.identity_affine(1, 3)[:, 2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["regress", "dense"])
@pytest.mark.parametrize("passes", [1, 3])
def test_an_initial_affine_and_a_cascade_start_where_they_are_told(head, passes):
    n = 2
    g = _gen(5)
    fa, fb = torch.randn(2, 8, 12, 8, generator=g), torch.randn(2, 8, 12, 8, generator=g)
    torch.manual_seed(0)
    tn = TransformationNet(n, (8, 4, 2), _affine(head=head, passes=passes))
    theta0 = spatial.identity_affine(2, n) + 0.1 * torch.randn(2, n, n + 1, generator=g)
    tr = tn(fa, fb, theta0)  # every head starts at the identity: the cascade adds nothing yet
    torch.testing.assert_close(tr.theta, theta0)
    torch.testing.assert_close(tr.feat_affine, spatial.warp(fa, spatial.affine_to_displacement(theta0, (12, 8))))


def test_each_pass_of_the_cascade_sees_the_rewarped_features_and_composes_its_correction():
    n = 2
    delta = spatial.identity_affine(1, n) + torch.tensor([[[0.05, 0.02, 0.1], [-0.03, 0.04, -0.05]]])
    seen = []

    class Head(torch.nn.Module):
        def forward(self, fa, fb):
            seen.append(fa.clone())
            return delta

    tn = TransformationNet(n, (4, 2, 1), _affine(passes=3))
    tn.affine = Head()
    fa = torch.randn(1, 4, 12, 8, generator=_gen(6))
    tr = tn(fa, fa)
    expect = spatial.compose_affine(spatial.compose_affine(delta, delta), delta)
    torch.testing.assert_close(tr.theta, expect)
    assert torch.equal(seen[0], fa)  # the first pass sees the raw features, the next ones the re-warped
    torch.testing.assert_close(seen[2], spatial.warp(fa, spatial.affine_to_displacement(
        spatial.compose_affine(delta, delta), (12, 8))))


def test_inference_runs_affine_passes_eval_passes_and_training_affine_passes():
    calls = []

    class Head(torch.nn.Module):
        def forward(self, fa, fb):
            calls.append(1)
            return spatial.identity_affine(fa.shape[0], 2)

    tn = TransformationNet(2, (4, 2, 1), _affine(passes=3, passes_eval=7))
    tn.affine = Head()
    fa = torch.randn(1, 4, 12, 8, generator=_gen(7))
    tn.train()(fa, fa)
    assert len(calls) == 3
    calls.clear()
    tn.eval()(fa, fa)
    assert len(calls) == 7
    assert TransformationNet(2, (4, 2, 1), _affine(passes=3)).passes_eval["affine"] == 3  # default: the same


def test_the_fine_level_corrects_the_coarse_theta_on_half_resolution_features_warped_by_it():
    n = 2
    coarse = spatial.identity_affine(1, n) + torch.tensor([[[0.05, 0.02, 0.1], [-0.03, 0.04, -0.05]]])
    fine = spatial.identity_affine(1, n) + torch.tensor([[[0.01, 0.0, -0.02], [0.0, -0.01, 0.03]]])
    seen = {}

    class Head(torch.nn.Module):
        def __init__(self, name, theta):
            super().__init__()
            self.name, self.theta = name, theta

        def forward(self, fa, fb):
            seen.setdefault(self.name, []).append((fa.clone(), fb))
            return self.theta

    tn = TransformationNet(n, (4, 2, 1), _affine(passes=2, fine_passes=1))
    assert isinstance(tn.affine_fine, MatchAffineNet)
    tn.affine, tn.affine_fine = Head("coarse", coarse), Head("fine", fine)
    g = _gen(8)
    fa, fb = torch.randn(1, 4, 12, 8, generator=g), torch.randn(1, 4, 12, 8, generator=g)
    ha, hb = torch.randn(1, 2, 24, 16, generator=g), torch.randn(1, 2, 24, 16, generator=g)
    tr = tn(fa, fb, fine=((ha, hb),))
    after_coarse = spatial.compose_affine(coarse, coarse)
    torch.testing.assert_close(tr.theta, spatial.compose_affine(after_coarse, fine))
    (ha_seen, hb_seen), = seen["fine"]
    torch.testing.assert_close(ha_seen, spatial.warp(ha, spatial.affine_to_displacement(after_coarse, (24, 16))))
    assert hb_seen is hb and len(seen["coarse"]) == 2
    torch.testing.assert_close(tr.feat_affine, spatial.warp(fa, spatial.affine_to_displacement(tr.theta, (12, 8))))
    with pytest.raises(ValueError, match="finer level"):
        tn(fa, fb)


def test_the_full_resolution_level_follows_the_fine_level_with_its_own_passes_at_inference():
    n = 2
    thetas = {name: spatial.identity_affine(1, n) + torch.tensor([[[d, 0.0, d], [0.0, -d, 2 * d]]])
              for name, d in (("coarse", 0.04), ("fine", 0.01), ("full", -0.005))}
    seen = []

    class Head(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, fa, fb):
            seen.append((self.name, fa.clone(), fb))
            return thetas[self.name]

    tn = TransformationNet(n, (4, 2, 1), _affine(passes=1, fine_passes=1, full_passes=1, full_passes_eval=3))
    assert isinstance(tn.affine_full, MatchAffineNet) and tn.affine_full.project[0][0].in_channels == 1
    tn.affine, tn.affine_fine, tn.affine_full = Head("coarse"), Head("fine"), Head("full")
    g = _gen(9)
    fa, fb = torch.randn(1, 4, 6, 8, generator=g), torch.randn(1, 4, 6, 8, generator=g)
    half = (torch.randn(1, 2, 12, 16, generator=g), torch.randn(1, 2, 12, 16, generator=g))
    full = (torch.randn(1, 1, 24, 32, generator=g), torch.randn(1, 1, 24, 32, generator=g))
    expect = spatial.compose_affine(thetas["coarse"], thetas["fine"])
    for mode, passes in ((tn.train, 1), (tn.eval, 3)):
        seen.clear()
        mode()
        tr = tn(fa, fb, fine=(half, full))
        assert [name for name, *_ in seen] == ["coarse", "fine"] + ["full"] * passes
        theta = expect
        for _, moved, fixed in seen[2:]:  # each full pass sees the S/1 moving features warped by theta so far
            torch.testing.assert_close(moved, spatial.warp(full[0], spatial.affine_to_displacement(theta, (24, 32))))
            assert fixed is full[1]
            theta = spatial.compose_affine(theta, thetas["full"])
        torch.testing.assert_close(tr.theta, theta)
    with pytest.raises(ValueError, match="2 finer level"):
        tn(fa, fb, fine=(half,))


@pytest.mark.parametrize("n", [2, 3])
def test_a_firenet_with_a_fine_level_feeds_it_g_half_and_optimises_it_with_t_af(n):
    net = _tiny_net(n, affine={"head": "match", "fine_passes": 1})
    x_a, x_b = _inputs(n, seed=9)
    (ha, hb), = net.fine_features(x_a, x_b)
    assert ha.shape == (2, 2 * WIDTH, *[s // 2 for s in NET_SHAPES[n]])
    torch.testing.assert_close(ha, net.G.net[1](net.G.net[0](x_a)))
    t_af = {id(p) for p in net.parameter_groups()["T_af"]}
    assert {id(p) for p in net.T_ab.affine_fine.parameters()} <= t_af
    assert {id(p) for p in net.T_ba.affine_fine.parameters()} <= t_af
    g, finer = net.encode(x_a)  # one pass of G gives G(x) and the finer level
    torch.testing.assert_close(g, net.G(x_a))
    torch.testing.assert_close(finer[0], ha)
    with torch.no_grad():
        t = net(x_a, x_b)
        theta = net.affine_theta("AtoB", net.G(x_a), net.G(x_b), x_a, x_b)
    torch.testing.assert_close(t.theta, theta)
    with pytest.raises(ValueError, match="needs the images"):
        net.transform("AtoB", net.G(x_a), net.G(x_b))
    assert _tiny_net(n).fine_features(x_a, x_b) is None


@pytest.mark.parametrize("n", [2, 3])
def test_a_firenet_with_a_full_resolution_level_feeds_it_g_first_block(n):
    net = _tiny_net(n, affine={"head": "match", "fine_passes": 1, "full_passes": 1})
    x_a, x_b = _inputs(n, seed=10)
    (ha, _), (fa, fb) = net.fine_features(x_a, x_b)
    assert fa.shape == (2, WIDTH, *NET_SHAPES[n])
    torch.testing.assert_close(fa, net.G.net[0](x_a))
    torch.testing.assert_close(fb, net.G.net[0](x_b))
    torch.testing.assert_close(ha, net.G.net[1](fa))
    g_a, g_b, fine = net.encode_pair(x_a, x_b)
    torch.testing.assert_close(g_b, net.G(x_b))
    torch.testing.assert_close(fine[1][0], fa)
    t_af = {id(p) for p in net.parameter_groups()["T_af"]}
    assert {id(p) for p in net.T_ab.affine_full.parameters()} <= t_af
    net.eval()
    with torch.no_grad():  # the full level moves theta: the net's theta is not the fine level's alone
        t = net(x_a, x_b)
        net.T_ab.passes_eval["affine_full"] = 0
        without = net(x_a, x_b)
    assert not torch.allclose(t.theta, without.theta)


@pytest.mark.parametrize("n", [2, 3])
def test_a_moments_initialised_firenet_starts_at_the_images_moments(n):
    net = _tiny_net(n, affine={"init": "scale"}, spacing=(1.0, 2.0, 1.5)[:n])
    x_a, x_b = _inputs(n, seed=7)
    x_a = torch.where(x_a > 0.5, x_a, -torch.ones_like(x_a))  # different foregrounds
    with torch.no_grad():
        t = net(x_a, x_b)
    torch.testing.assert_close(t.theta, spatial.moments_affine(x_a, x_b, (1.0, 2.0, 1.5)[:n], "scale"))
    assert not torch.allclose(t.theta, spatial.identity_affine(2, n))
    with pytest.raises(ValueError, match="needs the images"):
        net.transform("AtoB", net.G(x_a), net.G(x_b))


@pytest.mark.parametrize("kernel,centre", [(3, 4.0), (4, 5.5)])
def test_grid_aligned_downsampling_puts_features_where_the_grid_says(kernel, centre):
    """Feature point o of G's two stride-2 levels lies over image pixel 4o + 1.5 in the
    align_corners=False convention that every warp uses; kernel 3 puts it at 4o (1.5 px off)."""
    enc = Encoder(2, 2, down_kernel=kernel)
    levels = []
    for block in (enc.net[1], enc.net[2]):
        c = block[0]
        probe = torch.nn.Conv2d(1, 1, c.kernel_size, stride=c.stride, padding=c.padding, bias=False)
        torch.nn.init.constant_(probe.weight, 1.0 / c.kernel_size[0] ** 2)
        levels.append(probe)
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 1, 32, 32)  # value = column index
    out = levels[1](levels[0](ramp))
    assert out.shape[-1] == 8
    assert out[0, 0, 3, 1].item() == pytest.approx(centre)  # interior point o = 1


@pytest.mark.parametrize("n", [2, 3])
def test_outer_kernel_changes_the_full_resolution_convolutions_not_the_shapes(n):
    """``model.synthesis.outer_kernel``: G's first and F's conv7 take that kernel; G(x) and F(G(x)) keep
    their shapes, and the default is the paper's 7."""
    from fire_lightning.nets.synthesis import Decoder

    x = torch.randn(1, 1, *(16,) * n)
    shapes = []
    for k in (7, 3):
        enc, dec = Encoder(n, 2, n_res=1, outer_kernel=k), Decoder(n, 2, n_res=1, outer_kernel=k)
        full_res = [m for m in (*enc.modules(), *dec.modules()) if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))
                    and m.kernel_size[0] not in (1, 3)]
        assert [m.kernel_size for m in full_res] == ([(7,) * n] * 2 if k == 7 else [])
        z = enc(x)
        shapes.append((tuple(z.shape), tuple(dec(z).shape)))
    assert shapes[0] == shapes[1] == ((1, 8, *(4,) * n), (1, 1, *(16,) * n))
    assert Encoder(n, 2).net[0][0].kernel_size == (7,) * n


# ---------------------------------------------------------------- forward + backward


@pytest.fixture(scope="module", params=[(2, "regress"), (3, "regress"), (2, "dense"), (3, "dense")],
                ids=["2d", "3d", "2d-dense", "3d-dense"])
def trained_step(request):
    n, head = request.param
    net = _tiny_net(n, affine={"head": head, "passes": 1 if head == "regress" else 2})
    net.train()
    x_a, x_b = _inputs(n, seed=3)
    out = fire_forward(net, x_a, x_b)
    loss = fire_loss(out, x_a, x_b)
    loss.total.backward()
    return n, net, x_a, x_b, out, loss


def test_every_parameter_gets_a_gradient(trained_step):
    n, net, *_ = trained_step
    modules = {"G": net.G, "F_ab": net.F_ab, "F_ba": net.F_ba, "T_ab": net.T_ab, "T_ba": net.T_ba}
    sq = 0.0
    for mname, mod in modules.items():
        for pname, p in mod.named_parameters():
            assert p.grad is not None, f"{mname}.{pname} has no gradient"
            assert torch.isfinite(p.grad).all(), f"{mname}.{pname}"
            sq += p.grad.pow(2).sum().item()
    assert 0 < sq < float("inf")
    # encoder / decoders receive a real signal
    for mod in (net.G, net.F_ab, net.F_ba):
        assert sum(p.grad.abs().sum().item() for p in mod.parameters()) > 0
    # The heads of both transformation networks are zero-initialised (identity output) but
    # their own gradients must be non-zero, otherwise registration could never start.
    # (Layers upstream of a zero-weight head legitimately get exactly zero gradient here.)
    for t in (net.T_ab, net.T_ba):
        assert t.nonrigid.head.weight.grad.abs().sum() > 0
        last = t.affine.last_conv if isinstance(t.affine, DenseAffineNet) else t.affine.fc[-1]
        assert last.weight.grad.abs().sum() > 0
        assert last.bias.grad.abs().sum() > 0


def test_forward_outputs_at_identity_init(trained_step):
    n, net, x_a, x_b, out, loss = trained_step
    shape = NET_SHAPES[n]
    b = x_a.shape[0]
    fshape = tuple(s // 4 for s in shape)
    assert out.g_a.shape == (b, 4 * WIDTH, *fshape)
    for name in ("u_ab", "u_ba", "af_ab", "af_ba"):
        assert getattr(out, name).shape == (b, n, *shape)
    for name in ("xhat_b", "xhat_a", "xhat_t_b", "cyc_a", "reg_b", "rsyn_b", "rreg_a"):
        assert getattr(out, name).shape == (b, 1, *shape), name
    # identity transforms: warped images and features equal the originals
    assert torch.allclose(out.warped_a, x_a, atol=1e-6)
    assert torch.allclose(out.affine_b, x_b, atol=1e-6)
    assert torch.allclose(out.g_a_warped, out.g_a, atol=1e-5)


# ---------------------------------------------------------------- parameter groups


def _check_groups(net: FIRENet, expected_keys):
    groups = net.parameter_groups()
    assert set(groups) == set(expected_keys)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)), "a parameter is in two groups (or twice in one)"
    all_ids = {id(p) for p in net.parameters()}
    assert set(ids) == all_ids, "some parameter is in no group"
    for ps in groups.values():
        assert len(ps) > 0
    return groups


@pytest.mark.parametrize("n", [2, 3])
def test_parameter_groups_cover_all_parameters_once(n):
    net = _tiny_net(n)
    groups = _check_groups(net, {"T_af", "T_nr", "G_F"})
    t_af = {id(p) for p in [*net.T_ab.affine.parameters(), *net.T_ba.affine.parameters()]}
    t_nr = {id(p) for p in [*net.T_ab.nonrigid.parameters(), *net.T_ba.nonrigid.parameters()]}
    assert {id(p) for p in groups["T_af"]} == t_af
    assert {id(p) for p in groups["T_nr"]} == t_nr


@pytest.mark.parametrize("n", [2, 3])
def test_parameter_groups_adversarial(n):
    net = _tiny_net(n, adversarial=True, disc_width=2)
    groups = _check_groups(net, {"T_af", "T_nr", "G_F", "D_A", "D_B"})
    assert {id(p) for p in groups["D_A"]} == {id(p) for p in net.D_a.parameters()}
    assert {id(p) for p in groups["D_B"]} == {id(p) for p in net.D_b.parameters()}


# ------------------------------------------------------------------ output shapes


@pytest.mark.parametrize("n,shape", [(2, (16, 24)), (3, (8, 12, 16))])
def test_encoder_decoder_shapes_and_range(n, shape):
    net = _tiny_net(n, width=3, adversarial=True, disc_width=2)
    x = torch.rand(2, 1, *shape, generator=_gen(4)) * 2 - 1
    g = net.G(x)
    assert g.shape == (2, 4 * 3, *[s // 4 for s in shape])
    assert net.G.out_channels == 12
    for dec in (net.F_ab, net.F_ba):
        y = dec(g)
        assert y.shape == (2, 1, *shape)
        assert y.min() >= -1 and y.max() <= 1
        # huge features: the tanh output still stays within [-1, 1]
        y_big = dec(1e4 * torch.randn_like(g))
        assert y_big.abs().max() <= 1
    # ExFIRE discriminator: (B, 1, S/8) realness logits
    d = net.D_a(x)
    assert d.shape == (2, 1, *[s // 8 for s in shape])


# ------------------------------------------------------------- activation checkpointing


def _saved_bytes(fn) -> tuple[object, int]:
    """``fn()`` and the bytes autograd saved for the backward while it ran."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_checkpointed_g_and_f_give_the_same_loss_and_gradients_and_save_less():
    """``model.synthesis.checkpoint_activations``: the same training step, value for value, in less memory; with
    ``model.synthesis.checkpoint_chunk`` = 1 each sample of a G/F call is recomputed apart, so the backward's
    transient, and with it the step's peak, shrinks too (counted by ``profiling.LiveTensorMemory``)."""
    from fire_lightning.profiling import LiveTensorMemory

    x_a, x_b = _inputs(3, batch=2, seed=11)
    results = {}
    for variant, kw in {"plain": {}, "whole calls": {"checkpoint_activations": True},
                        "chunks of 1": {"checkpoint_activations": True, "checkpoint_chunk": 1}}.items():
        net = _tiny_net(3, width=4, affine={"head": "match", "init": "scale"}, synthesis=kw)
        net.train()

        def step():  # called only within this iteration, so `net` is this variant's
            return fire_loss(fire_forward(net, x_a, x_b), x_a, x_b).total  # noqa: B023

        with LiveTensorMemory() as memory:
            loss, saved = _saved_bytes(step)
            loss.backward()
        results[variant] = (loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None},
                            saved, memory.peak)
    (l0, g0, s0, p0), (l1, g1, s1, p1), (l2, g2, s2, p2) = results.values()
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    torch.testing.assert_close(l2, l0, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() == g2.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7, msg=k)
    # chunks: per-chunk convolutions round differently (1e-6 in the loss), which the matching heads
    # and MI amplify in the gradients to ~2e-3 of their norm; each G/F alone agrees to 1e-5 (below)
    _assert_gradients_close(g2, g0, rel=1e-2)
    assert s1 < 0.6 * s0 and s2 <= 1.01 * s1, (s0, s1, s2)  # G and F's inner activations are not kept
    assert p1 < 0.8 * p0 and p2 < 0.8 * p1, (p0, p1, p2)
    print(f"saved for the backward: {s0 / 2**20:.2f} MiB plain, {s1 / 2**20:.2f} MiB checkpointed; "
          f"peak {p0 / 2**20:.2f} / {p1 / 2**20:.2f} / {p2 / 2**20:.2f} MiB (plain / whole calls / chunks of 1)")


def _assert_gradients_close(grads: dict, ref: dict, rel: float) -> None:
    """Each gradient within ``rel`` of its reference's norm, above a floor of 1e-4 of the largest
    gradient's norm: a convolution's bias before instance norm has a zero gradient, whose float
    noise has no relative size."""
    floor = 1e-4 * max(float(g.norm()) for g in ref.values())
    for k, g in ref.items():
        err = float((grads[k] - g).norm())
        assert err <= rel * float(g.norm()) + floor, (k, err, float(g.norm()), floor)


@pytest.mark.parametrize("chunk", [1, 2])
def test_checkpointing_in_chunks_gives_g_and_f_the_same_outputs_and_gradients(chunk):
    """``model.synthesis.checkpoint_chunk``: G and F checkpointed per run of ``chunk`` samples of a batch of 3."""
    g = _gen(3)
    for module, x in ((Encoder(3, 4, n_res=1), torch.rand(3, 1, 8, 8, 8, generator=g)),
                      (Decoder(3, 4, n_res=1), torch.rand(3, 16, 4, 4, 4, generator=g))):
        module.train()
        results = []
        for checkpointed, size in ((False, 0), (True, chunk)):
            module.checkpoint, module.chunk = checkpointed, size
            module.zero_grad(set_to_none=True)
            y = module.pyramid(x, 2)[0] if isinstance(module, Encoder) else module(x)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            results.append((y.detach(), {k: p.grad.clone() for k, p in module.named_parameters()}))
        (y0, g0), (y1, g1) = results
        torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
        _assert_gradients_close(g1, g0, rel=1e-5)


def test_checkpointing_is_off_in_eval_mode_so_inference_and_grad_cam_hooks_run_once():
    net = _tiny_net(2, synthesis={"checkpoint_activations": True}).eval()
    calls = []
    net.G.gradcam_layer.register_forward_hook(lambda *a: calls.append(1))
    x = _inputs(2, batch=1)[0].requires_grad_()
    net.G(x).sum().backward()
    assert len(calls) == 1 and net.G.checkpoint


@pytest.mark.parametrize("n", [2, 3])
def test_channels_last_is_the_same_step_in_another_memory_layout(n):
    """``model.channels_last``: weights and convolution outputs channels-last, the same loss and gradients."""
    from omegaconf import OmegaConf

    from fire_lightning.config import Config
    from fire_lightning.inference import build_net

    fmt = torch.channels_last if n == 2 else torch.channels_last_3d
    x_a, x_b = _inputs(n, batch=2, seed=5)
    results = {}
    for layout in (False, True):
        cfg = OmegaConf.structured(Config)
        cfg.data.spatial_dims = n
        cfg.model.merge_with({"synthesis": {"width": WIDTH, "n_res": 1}, "channels_last": layout,
                              "affine": {"channels": [4, 4, 4], "hidden": 8, "head": "match", "init": "scale"}})
        torch.manual_seed(0)
        net = build_net(cfg).train()
        weights = [p for p in net.parameters() if p.dim() == n + 2]
        assert weights and all(p.is_contiguous(memory_format=fmt) == layout for p in weights
                                   if p.shape[1] > 1 and max(p.shape[2:]) > 1)  # else both layouts are the same
        outputs = []
        first_conv = next(mod for mod in net.G.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv3d)))
        # the hook sits on this iteration's net, which only runs within this iteration: `outputs` is this one's
        first_conv.register_forward_hook(lambda mod, inp, out: outputs.append(out))  # noqa: B023
        loss = fire_loss(fire_forward(net, x_a, x_b), x_a, x_b).total
        loss.backward()
        assert outputs[0].is_contiguous(memory_format=fmt) == layout
        results[layout] = loss.detach(), {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    (l0, g0), (l1, g1) = results[False], results[True]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:  # float32 rounding in another summation order, through MI's histograms: relative to the largest
        assert (g1[k] - g0[k]).abs().max() <= 1e-3 * g0[k].abs().max() + 1e-5, k


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("fine", [0, 1])
def test_symmetric_inference_averages_the_affine_with_the_inverse_of_the_opposite_finest_level(n, fine):
    """``model.affine.symmetric_passes_eval`` K: at inference phi_af^{A→B} is the mean of T^{A→B}'s affine and the
    inverse of what T^{B→A}'s finest head reaches in K passes from its inverse; T_nr then reads the features
    warped by that mean. Training, and K = 0, are the one-sided network."""
    net = _tiny_net(n, affine={"head": "match", "init": "scale", "fine_passes": fine, "symmetric_passes_eval": 2})
    x_a, x_b = _inputs(n, seed=12)
    g_a, g_b, fine_features = net.encode_pair(x_a, x_b)
    net.eval()
    with torch.no_grad():
        t = net.transform("AtoB", g_a, g_b, x_a, x_b, fine_features)
        own = net.T_ab.affine_theta(g_a, g_b, net.initial_affine(x_a, x_b), fine_features)
        if fine:
            (h_a, h_b), = fine_features
            head, moving, fixed = net.T_ba.affine_fine, h_b, h_a
        else:
            head, moving, fixed = net.T_ba.affine, g_b, g_a
        back = net.T_ba._cascade(head, moving, fixed, spatial.invert_affine(own), 2)
        expected = 0.5 * (own + spatial.invert_affine(back))
        torch.testing.assert_close(t.theta, expected)
        assert not torch.allclose(t.theta, own, atol=1e-4)
        torch.testing.assert_close(t.feat_affine,
                                   spatial.warp(g_a, spatial.affine_to_displacement(expected, g_a.shape[2:])))
        net.affine_symmetric_passes_eval = 0
        torch.testing.assert_close(net.transform("AtoB", g_a, g_b, x_a, x_b, fine_features).theta, own)
        net.affine_symmetric_passes_eval = 2
        net.train()
        trained = net.T_ab.affine_theta(g_a, g_b, net.initial_affine(x_a, x_b), fine_features)
        torch.testing.assert_close(net.transform("AtoB", g_a, g_b, x_a, x_b, fine_features).theta, trained)


@pytest.mark.parametrize("n", [2, 3])
def test_symmetric_nonrigid_inference_averages_the_velocity_with_the_opposite_networks_estimate_of_its_inverse(n):
    """``model.nonrigid.symmetric_passes_eval`` K: at inference T^{B→A}'s U-Net registers the fixed image to the
    moving one as phi_af aligns it (K passes from the identity, on the fixed grid); its velocity v' estimates
    -v, and phi_nr's velocity is (v - v') / 2, integrated as the network's own. The affine is untouched;
    training, and K = 0, are the one-sided network; two estimates that agree (v' = -v) give v back."""
    net = _tiny_net(n, affine={"head": "match", "init": "scale"},
                    nonrigid={"head": "unet", "channels": [4, 4, 4], "passes": 2, "diffeomorphic": True,
                              "symmetric_passes_eval": 1})
    with torch.no_grad():  # the field layers start at zero: give both directions a field of their own
        for seed, t in enumerate((net.T_ab, net.T_ba)):
            t.nonrigid.head.weight.normal_(0.0, 0.5, generator=_gen(seed))
    x_a, x_b = _inputs(n, seed=15)
    g_a, g_b, fine = net.encode_pair(x_a, x_b)
    net.eval()
    with torch.no_grad():
        sym = net.transform("AtoB", g_a, g_b, x_a, x_b, fine)
        net.nonrigid_symmetric_passes_eval = 0
        own = net.transform("AtoB", g_a, g_b, x_a, x_b, fine)
        moving_af = spatial.warp(x_a, spatial.affine_to_displacement(own.theta, x_a.shape[2:]))
        ident = spatial.identity_affine(x_a.shape[0], n)
        back = net.T_ba.nonrigid(x_b, moving_af, ident, net.T_ba.displacement, passes=1)
        expected = 0.5 * (own.nr_feat - back)
        torch.testing.assert_close(sym.theta, own.theta)
        torch.testing.assert_close(sym.nr_feat, expected)
        torch.testing.assert_close(sym.disp_nr, spatial.integrate_velocity(expected, net.T_ab.integration_steps))
        assert not torch.allclose(sym.nr_feat, own.nr_feat, atol=1e-4)
        net.nonrigid_symmetric_passes_eval = 1
        net.T_ba.nonrigid.forward = lambda *args, **kw: -own.nr_feat  # an opposite estimate that agrees
        torch.testing.assert_close(net.transform("AtoB", g_a, g_b, x_a, x_b, fine).nr_feat, own.nr_feat)
        del net.T_ba.nonrigid.forward
        net.train()
        trained = net.transform("AtoB", g_a, g_b, x_a, x_b, fine)
        net.nonrigid_symmetric_passes_eval = 0
        torch.testing.assert_close(net.transform("AtoB", g_a, g_b, x_a, x_b, fine).nr_feat, trained.nr_feat)


@pytest.mark.parametrize("n", [2, 3])
def test_the_instance_norm_is_torch_instance_norm_and_loads_its_weights(n):
    """``inorm`` (GroupNorm, one channel per group) normalises as ``InstanceNorm{n}d(affine=True)`` in
    training and eval mode, and takes its state dict (checkpoints written before the switch)."""
    from fire_lightning.nets.blocks import inorm

    reference = getattr(torch.nn, f"InstanceNorm{n}d")(5, affine=True)
    with torch.no_grad():
        reference.weight.normal_(generator=_gen(3))
        reference.bias.normal_(generator=_gen(4))
    norm = inorm(n, 5)
    norm.load_state_dict(reference.state_dict())
    x = torch.randn(3, 5, *([6] * n), generator=_gen(5)) * 3 + 1
    for training in (True, False):
        norm.train(training), reference.train(training)
        torch.testing.assert_close(norm(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_a_frozen_affine_encoder_holds_what_t_af_reads_while_g_trains(n):
    """``model.affine.encoder=frozen``: until :meth:`FIRENet.freeze_affine_encoder`, T_af reads G (the shared
    network's output); after it, a copy of G as it was then, which takes no gradient, whatever G becomes;
    T_nr's input and F's warped features stay G's; the copy and its flag travel in the state dict."""
    net = _tiny_net(n, affine={"head": "match", "init": "scale", "encoder": "frozen"})
    shared = _tiny_net(n, affine={"head": "match", "init": "scale"})
    own = ("G", "F_ab", "F_ba", "T_ab", "T_ba")
    shared.load_state_dict({k: v for k, v in net.state_dict().items() if k.split(".")[0] in own})
    x_a, x_b = _inputs(n, seed=13)
    torch.testing.assert_close(fire_forward(net, x_a, x_b).t_ab.theta, fire_forward(shared, x_a, x_b).t_ab.theta)
    net.freeze_affine_encoder()
    with torch.no_grad():
        for p in net.G.parameters():  # G trains on after the copy
            p.add_(0.05 * torch.randn_like(p))
    calls = []
    hook = net.G_affine.net[0].register_forward_hook(lambda *a: calls.append(1))
    out = fire_forward(net, x_a, x_b)
    hook.remove()
    assert len(calls) == 1  # the copy encodes the pair once for both directions
    frozen_theta = out.t_ab.theta
    torch.testing.assert_close(frozen_theta, fire_forward(shared, x_a, x_b).t_ab.theta)  # G as it was copied
    g_a = net.G(x_a)
    torch.testing.assert_close(out.g_a, g_a)  # F and the losses read the G that trains
    torch.testing.assert_close(out.t_ab.feat_affine,
                               spatial.warp(g_a, spatial.affine_to_displacement(frozen_theta, g_a.shape[2:])))
    frozen_theta.sum().backward()
    assert all(p.grad is None for p in net.G_affine.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.T_ab.affine.parameters())
    optimised = {id(p) for ps in net.parameter_groups().values() for p in ps}
    assert not {id(p) for p in net.G_affine.parameters()} & optimised
    loaded = _tiny_net(n, affine={"head": "match", "init": "scale", "encoder": "frozen"})
    assert not bool(loaded.affine_encoder_frozen)
    loaded.load_state_dict(net.state_dict())
    assert bool(loaded.affine_encoder_frozen)
    torch.testing.assert_close(fire_forward(loaded, x_a, x_b).t_ab.theta, frozen_theta.detach())
    with pytest.raises(RuntimeError, match="encoder='frozen'"):
        shared.freeze_affine_encoder()
    # without the setting the state dict is what it always was: checkpoints saved before the setting still load
    assert {k.split(".")[0] for k in shared.state_dict()} == set(own)
    assert {k.split(".")[0] for k in net.state_dict()} == {*own, "G_affine", "affine_encoder_frozen"}


@pytest.mark.parametrize("nonrigid_head", ["conv", "unet"])
def test_registering_with_a_frozen_affine_encoder_runs_g_only_where_something_reads_it(nonrigid_head):
    """At inference a frozen-encoder model runs G_affine once for the affine stage, and G only when T_nr reads
    G's features (the paper's head), not when it reads the images (the U-Net); the transform is the same either
    way as the one computed from G's own features."""
    net = _tiny_net(2, affine={"head": "match", "init": "scale", "encoder": "frozen"},
                    nonrigid={"head": nonrigid_head, "channels": [4, 4, 4]})
    net.freeze_affine_encoder()
    with torch.no_grad():
        for p in net.G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    x_a, x_b = _inputs(2, seed=14)
    calls = {"G": 0, "G_affine": 0}
    hooks = [getattr(net, k).net[0].register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
             for k in calls]  # the first block: G runs through Encoder.pyramid, not its forward
    with torch.no_grad():
        t = net(x_a, x_b)
    for h in hooks:
        h.remove()
    assert calls == {"G": int(nonrigid_head == "conv"), "G_affine": 1}
    with torch.no_grad():
        g_a, g_b, _ = net.encode_pair(x_a, x_b)
        full = net.transform("AtoB", g_a, g_b, x_a, x_b)
    torch.testing.assert_close(t.theta, full.theta)
    torch.testing.assert_close(t.disp_nr, full.disp_nr)


@pytest.mark.parametrize("cin,cout,k,stride,batch,layout", [(2, 4, 3, 1, 1, "default"), (2, 4, 3, 1, 1, "last"),
                                                             (3, 5, 4, 2, 2, "default"), (1, 3, 7, 1, 1, "last")])
def test_the_3d_convolution_takes_onednn_and_gives_torchs_values_and_gradients(cin, cout, k, stride, batch, layout):
    """``blocks.Conv3d`` (every 3D convolution of the networks) runs oneDNN's convolution on the CPU where
    PyTorch's own rule would take its slower loop (one sample, 3³ kernels, few channels): the same outputs and
    gradients as ``nn.Conv3d`` to float rounding, in either memory layout; checkpoints load into it unchanged."""
    from torch.profiler import profile

    from fire_lightning.nets.blocks import Conv3d, conv

    torch.manual_seed(0)
    ref = torch.nn.Conv3d(cin, cout, k, stride=stride, padding=(k - 1) // 2)
    ours = conv(3, cin, cout, k, stride=stride, padding=(k - 1) // 2)
    assert type(ours) is Conv3d and type(conv(2, cin, cout, k)) is torch.nn.Conv2d
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, cin, 12, 10, 8, generator=_gen(5))
    if layout == "last":
        ref, ours, x = (t.to(memory_format=torch.channels_last_3d) for t in (ref, ours, x))
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    with profile() as prof:
        yo = ours(xo)
    yr = ref(xr)
    g = torch.randn(yr.shape, generator=_gen(6))
    yr.backward(g)
    yo.backward(g)
    torch.testing.assert_close(yo, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops


def test_the_3d_convolution_keeps_torchs_route_for_other_dtypes_and_pointwise_kernels():
    from torch.profiler import profile

    from fire_lightning.nets.blocks import conv

    for layer, x in ((conv(3, 2, 3, 3, padding=1).double(), torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)),
                     (conv(3, 2, 3, 1), torch.randn(1, 2, 6, 6, 6))):
        ref = torch.nn.Conv3d(2, 3, layer.kernel_size, padding=layer.padding).to(x.dtype)
        ref.load_state_dict(layer.state_dict())
        with profile() as prof:
            out = layer(x)
        assert "aten::mkldnn_convolution" not in {e.key for e in prof.key_averages()}
        assert torch.equal(out, ref(x))
