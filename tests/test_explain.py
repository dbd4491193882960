"""Grad-CAM (fire_lightning/explain.py): known answers for the maps and for every measure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fire_lightning import explain as ex
from fire_lightning import spatial
from fire_lightning.config import ConfigError, load_config
from fire_lightning.nets.fire import FIRENet

from .conftest import PHANTOM2D, TINY, gen, model_config

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------- Grad-CAM itself
class HalfSighted(nn.Module):
    """A toy network whose answer depends on one half of its input only (along axis 0 of the grid):
    it zeroes the other half, then conv → ReLU → strided conv (the Grad-CAM layer) → mean."""

    def __init__(self, n: int, side: str | None = "left"):
        super().__init__()
        Conv = getattr(nn, f"Conv{n}d")
        self.side = side
        self.conv1 = Conv(1, 4, 3, padding=1, bias=False)
        self.conv2 = Conv(4, 4, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():  # positive weights: the answer grows with the input, the map is not all zero
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.rand(conv.weight.shape, generator=gen(3)) + 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side is not None:
            half = x.shape[2] // 2
            mask = torch.zeros_like(x)
            mask[:, :, :half] = 1 if self.side == "left" else 0
            mask[:, :, half:] = 0 if self.side == "left" else 1
            x = x * mask
        return torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1).mean(1)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_network_that_sees_one_half_gets_no_attention_on_the_other_half(n, side):
    shape = (32, 24) if n == 2 else (24, 16, 12)
    x = torch.rand(2, 1, *shape, generator=gen(0))
    net = HalfSighted(n, side)
    cam = ex.grad_cam(net, net.conv2, x, shape)
    assert cam.shape == (2, 1, *shape) and (cam >= 0).all()
    half = shape[0] // 2
    margin = 4  # receptive field of two 3-wide convolutions (one strided) plus the linear upsampling
    seen, unseen = (cam[:, :, : half - margin], cam[:, :, half + margin:]) if side == "left" else \
        (cam[:, :, half + margin:], cam[:, :, : half - margin])
    assert torch.all(unseen == 0)
    assert torch.all(seen.flatten(1).sum(1) > 0)


class TwoChannels(nn.Module):
    """A layer with two channels of which the answer reads the first only: y = mean_p A_0(p)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x):
        return self.layer(x)[:, 0].flatten(1).mean(1)


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_the_map_of_a_known_answer_is_the_channel_it_reads(method):
    """y = mean_p A_0: ∂y/∂A_0 = 1/N everywhere and ∂y/∂A_1 = 0, so both methods give ReLU(A_0) / N."""
    x = torch.randn(2, 2, 8, 6, generator=gen(9))
    net = TwoChannels()
    cam = ex.grad_cam(net, net.layer, x, (8, 6), method)
    torch.testing.assert_close(cam, torch.relu(x[:, :1]) / 48)


def test_the_same_toy_network_seeing_everything_attends_to_both_halves():
    """The control: the test above could fail (unmasked, the right half gets attention)."""
    x = torch.rand(1, 1, 32, 24, generator=gen(0))
    net = HalfSighted(2, None)
    cam = ex.grad_cam(net, net.conv2, x, (32, 24))
    assert cam[:, :, 20:].sum() > 0 and cam[:, :, :12].sum() > 0


# ---------------------------------------------------------------------------------- FIRE's maps
def _net(n: int, adversarial: bool = True) -> FIRENet:
    """A tiny FIRENet made non-trivial: random affine and non-rigid heads (at initialisation
    both are exactly zero, so T_af and T_nr would have no gradient to explain)."""
    torch.manual_seed(0)
    net = FIRENet(n, model_config(synthesis={"width": 4, "n_res": 1}, affine={"channels": [8, 8, 8], "hidden": 8},
                                  adversarial=adversarial, disc_width=4))
    with torch.no_grad():
        for t in (net.T_ab, net.T_ba):
            t.nonrigid.head.weight.copy_(torch.randn(t.nonrigid.head.weight.shape, generator=gen(1)) * 0.05)
            t.affine.fc[-1].weight.copy_(torch.randn(t.affine.fc[-1].weight.shape, generator=gen(2)) * 0.05)
    return net.eval()


def _pair(n: int):
    shape = (32, 40) if n == 2 else (16, 16, 20)
    x_a = torch.rand(2, 1, *shape, generator=gen(4)) * 2 - 1
    x_b = torch.rand(2, 1, *shape, generator=gen(5)) * 2 - 1
    labels = torch.randint(0, 4, (2, 1, *shape), generator=gen(6))
    return x_a, x_b, labels


EXPECTED_MAPS = {"G/AtoB/x_A", "G/AtoB/x_B", "G/BtoA/x_A", "G/BtoA/x_B", "T_af/AtoB/on_x_B", "T_nr/AtoB/on_x_B",
                 "T_af/BtoA/on_x_A", "T_nr/BtoA/on_x_A", "D_A/real_rigid", "D_A/real_nonrigid", "D_A/synth",
                 "D_B/real", "D_B/synth_rigid", "D_B/synth_nonrigid"}


@pytest.mark.parametrize("n", [2, 3])
def test_every_component_has_maps_on_the_image_grid_and_the_model_is_untouched(n):
    net = _net(n)
    x_a, x_b, labels = _pair(n)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    maps = ex.explain_pair(net, x_a, x_b, fixed_label=labels)
    assert set(maps) == EXPECTED_MAPS
    for name, m in maps.items():
        assert m.cam.shape == x_a.shape and torch.isfinite(m.cam).all() and (m.cam >= 0).all(), name
        assert m.cam.flatten(1).amax(1).gt(0).all(), f"{name}: an all-zero map"
        assert m.scalar.shape == (2,) and m.background.shape == x_a.shape
        assert m.name == name
    assert maps["G/AtoB/x_A"].space == "A" and maps["T_nr/BtoA/on_x_A"].space == "A"
    assert all(maps[k].space == "B" for k in EXPECTED_MAPS if k.startswith("D_"))
    assert maps["D_B/real"].background is x_b
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    assert not net.training


def test_without_discriminators_there_are_no_discriminator_maps():
    x_a, x_b, _ = _pair(2)
    maps = ex.explain_pair(_net(2, adversarial=False), x_a, x_b)
    assert set(maps) == {k for k in EXPECTED_MAPS if not k.startswith("D_")}


def test_the_maps_of_one_pair_do_not_depend_on_the_other_pairs_in_the_batch():
    net = _net(2)
    x_a, x_b, _ = _pair(2)
    both = ex.explain_pair(net, x_a, x_b)
    alone = ex.explain_pair(net, x_a[1:], x_b[1:])
    for k in both:
        torch.testing.assert_close(both[k].cam[1:], alone[k].cam, rtol=1e-4,
                                   atol=1e-12 + 1e-4 * float(alone[k].cam.max()))


@pytest.mark.parametrize("n", [2, 3])
def test_grad_cam_weights_survive_on_the_chosen_layers_but_not_on_g(n):
    """Grad-CAM's channel weights are spatial means of the gradient: they must not vanish on the
    layers explained with Grad-CAM, and they do vanish on G (whose readers normalise each channel),
    which is why G is explained with HiResCAM by default."""
    net = _net(n)
    x_a, x_b, _ = _pair(n)
    shape = x_a.shape[2:]
    g_a, g_b = net.G(x_a).detach(), net.G(x_b).detach()
    ratio = {}
    for comp, kind in (("T_af", "affine"), ("T_nr", "displacement")):
        def fn(ga, gb, kind=kind):
            return ex.transform_scalar(net, "AtoB", ga, gb, kind, shape)
        ratio[comp] = ex.pooled_gradient_ratio(fn, ex.cam_layer(net, comp), (g_a, g_b))
    ratio["D_B"] = ex.pooled_gradient_ratio(lambda x: ex.discriminator_scalar(net.D_b, x), ex.cam_layer(net, "D_B"),
                                            x_b)

    def through_g(xa, xb):
        ga, gb = net.G(torch.cat([xa, xb])).split(xa.shape[0])
        return ex.transform_scalar(net, "AtoB", ga, gb, "displacement", shape)

    ratio["G"] = ex.pooled_gradient_ratio(through_g, ex.cam_layer(net, "G"), (x_a, x_b))
    # what remains for G comes from the zero-padded borders, a larger share of these tiny grids in 3D
    assert min(ratio["T_af"], ratio["T_nr"], ratio["D_B"]) > 0.15, ratio
    assert ratio["G"] < 0.1 and ratio["G"] < 0.4 * min(ratio["T_af"], ratio["T_nr"], ratio["D_B"]), ratio
    assert ex.ExplainSettings().method_G == "hirescam"


def test_a_convolution_followed_by_instance_norm_has_no_grad_cam_weights():
    """Why explain.py hooks the block, not the bare convolution before an instance norm: the
    spatial mean of the gradient there is zero in every channel, so Grad-CAM's weights vanish."""
    net = _net(2)
    x_a, x_b, _ = _pair(2)
    acts = {}
    hook = net.D_b.net[-4].register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        score = net.D_b(x_b).mean()
    finally:
        hook.remove()
    grad = torch.autograd.grad(score, acts["a"])[0]
    weights = grad.mean((2, 3))
    assert weights.abs().max() < 1e-6 * grad.abs().max()
    block = ex.grad_cam(lambda x: net.D_b(x).flatten(1).mean(1), ex.cam_layer(net, "D_B"), x_b, x_b.shape[2:])
    assert block.flatten(1).amax(1).min() > 1e-4


def test_the_explained_scalars_are_what_the_settings_name():
    net = _net(2)
    x_a, x_b, labels = _pair(2)
    g_a, g_b = net.G(x_a), net.G(x_b)
    shape = x_a.shape[2:]
    t = net.T_ab(g_a, g_b)
    u = t.field(shape)
    torch.testing.assert_close(ex.transform_scalar(net, "AtoB", g_a, g_b, "displacement", shape),
                               u.norm(dim=1).flatten(1).mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ex.transform_scalar(net, "AtoB", g_a, g_b, "affine", shape),
                               (t.theta - torch.eye(2, 3)).flatten(1).norm(dim=1))
    nr = spatial.resize_field(t.disp_nr, shape)
    torch.testing.assert_close(ex.transform_scalar(net, "AtoB", g_a, g_b, "nonrigid", shape),
                               nr.norm(dim=1).flatten(1).mean(1), rtol=1e-4, atol=1e-5)
    mask = ex.region_mask(labels, [2, 3])
    assert torch.equal(mask, (labels >= 2).float())
    inside = (labels >= 2)
    expected = torch.stack([u[i].norm(dim=0)[inside[i, 0]].mean() for i in range(2)])
    torch.testing.assert_close(ex.transform_scalar(net, "AtoB", g_a, g_b, "displacement", shape, mask), expected,
                               rtol=1e-4, atol=1e-5)
    # the region setting reaches the maps: explaining another region gives another map
    whole = ex.explain_pair(net, x_a, x_b, fixed_label=labels)
    region = ex.explain_pair(net, x_a, x_b, ex.ExplainSettings(region=(3,)), fixed_label=labels, moving_label=labels)
    assert not torch.allclose(whole["T_nr/AtoB/on_x_B"].cam, region["T_nr/AtoB/on_x_B"].cam)
    assert torch.equal(whole["D_B/real"].cam, region["D_B/real"].cam)  # D's scalar has no region
    # D's other scalar explains the other sign
    fake = ex.explain_pair(net, x_a, x_b, ex.ExplainSettings(scalar_D="fakeness"))
    torch.testing.assert_close(fake["D_B/real"].scalar, -whole["D_B/real"].scalar)


def test_a_region_needs_both_label_maps_and_a_pair_without_it_is_undefined():
    net = _net(2)
    x_a, x_b, labels = _pair(2)
    with pytest.raises(ValueError, match="explain.region"):
        ex.explain_pair(net, x_a, x_b, ex.ExplainSettings(region=(3,)), fixed_label=labels)
    fixed = labels.clone()
    fixed[0][fixed[0] == 3] = 0  # the first pair's fixed image has no structure 3
    maps = ex.explain_pair(net, x_a, x_b, ex.ExplainSettings(region=(3,)), fixed_label=fixed, moving_label=labels)
    m = maps["T_nr/AtoB/on_x_B"]
    assert math.isnan(m.scalar[0].item()) and m.cam[0].max() == 0
    assert math.isfinite(m.scalar[1].item()) and m.cam[1].max() > 0
    assert math.isfinite(maps["T_nr/BtoA/on_x_A"].scalar[0].item())  # B→A uses x^A's labels


def test_the_output_layer_setting_hooks_the_projection():
    net = _net(2)
    assert ex.cam_layer(net, "D_A", layer="output") is net.D_a.net[-1]
    assert ex.cam_layer(net, "D_A") is net.D_a.net[-3] and isinstance(net.D_a.net[-3], nn.GroupNorm)
    assert ex.cam_layer(net, "T_nr", "BtoA", "output") is net.T_ba.nonrigid.head
    assert ex.cam_layer(net, "T_nr", "BtoA") is net.T_ba.nonrigid.res
    x_a, x_b, _ = _pair(2)
    out = ex.explain_pair(net, x_a, x_b, ex.ExplainSettings(layer="output"))
    # Grad-CAM on D's one-channel projection is its ReLU'd, upsampled patch-score map
    scores = net.D_b(x_b)
    expected = torch.nn.functional.interpolate(torch.relu(scores), size=x_b.shape[2:], mode="bilinear")
    torch.testing.assert_close(ex.unit_max(out["D_B/real"].cam), ex.unit_max(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("override, key", [("explain.scalar_G=curl", "explain.scalar_G"),
                                           ("explain.scalar_D=affine", "explain.scalar_D"),
                                           ("explain.method_T_nr=lime", "explain.method_T_nr"),
                                           ("explain.layer=first", "explain.layer"),
                                           ("explain.n_pairs=0", "explain.n_pairs")])
def test_a_wrong_explain_setting_is_a_config_error_naming_it(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(PHANTOM2D, TINY + [override])


# ---------------------------------------------------------------------------------- measures
def test_structure_share_counts_the_mass_inside_each_structure():
    labels = torch.zeros(1, 1, 8, 10, dtype=torch.long)
    labels[..., :4, :] = 1
    labels[..., 4:6, :] = 2
    names = {1: "one", 2: "two", 3: "three"}
    inside_two = (labels == 2).float() * 0.3
    share = ex.structure_share(inside_two, labels, names)
    assert share["two"].item() == pytest.approx(1.0) and share["one"].item() == 0 and share["three"].item() == 0
    uniform = ex.structure_share(torch.ones(1, 1, 8, 10), labels, names)
    area = ex.area_fraction(labels, names)
    for k in names.values():
        assert uniform[k].item() == pytest.approx(area[k].item())
    assert area["one"].item() == pytest.approx(0.5)
    assert math.isnan(ex.structure_share(torch.zeros(1, 1, 8, 10), labels, names)["one"].item())


def _blob(shape, centre, width=3.0):
    grid = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return torch.exp(-d2 / (2 * width**2))[None, None]


def test_symmetry_is_one_when_the_b_to_a_map_carried_by_phi_is_the_a_to_b_map():
    shape = (32, 36)
    cam_ba = _blob(shape, (12, 20))  # in A's space
    u_ab = spatial.voxel_to_normalised(torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, *shape).clone())
    cam_ab = spatial.warp(cam_ba, u_ab, padding_mode="zeros")  # the same anatomy, in B's space
    assert ex.symmetry(cam_ab, cam_ba, u_ab).item() == pytest.approx(1.0, abs=1e-5)
    # ... and not when the B→A map is not carried (the translation is ignored) or looks elsewhere
    assert ex.symmetry(cam_ab, cam_ba, torch.zeros_like(u_ab)).item() < 0.95
    assert ex.symmetry(cam_ab, _blob(shape, (26, 6)), u_ab).item() < 0.1
    # scale-free: Grad-CAM's units do not matter
    assert ex.symmetry(cam_ab * 1e-10, cam_ba * 1e3, u_ab).item() == pytest.approx(1.0, abs=1e-5)


def test_js_divergence_is_zero_for_proportional_maps_and_ln2_for_disjoint_ones():
    a = torch.zeros(1, 1, 6, 6)
    b = torch.zeros(1, 1, 6, 6)
    a[..., :3, :] = 1
    b[..., 3:, :] = 2
    assert ex.js_divergence(a, a * 1e-9).item() == pytest.approx(0, abs=1e-6)
    assert ex.js_divergence(a, b).item() == pytest.approx(math.log(2), rel=1e-5)
    assert 0 < ex.js_divergence(a, a + b).item() < math.log(2)
    assert math.isnan(ex.js_divergence(a, torch.zeros_like(a)).item())  # nothing to compare


def test_correlation_ranks_and_drops_missing_pairs():
    c = ex.correlation([1, 2, 3, 4, float("nan"), 5], [2, 4, 5, 9, 1, 10])
    assert c.n == 5 and c.spearman == pytest.approx(1.0) and 0.9 < c.pearson <= 1
    assert c.spearman_p < 0.05
    assert math.isnan(ex.correlation([1, 2], [3, 4]).spearman)
    assert math.isnan(ex.correlation([1, 1, 1, 1], [3, 4, 5, 6]).spearman)


def test_pair_measures_name_every_measure():
    net = _net(2)
    x_a, x_b, labels = _pair(2)
    maps = ex.explain_pair(net, x_a, x_b, fixed_label=labels)
    u_ab = net.T_ab(net.G(x_a), net.G(x_b)).field(x_a.shape[2:]).detach()
    names = {1: "CSF", 2: "GM", 3: "WM"}
    m = ex.pair_measures(maps, u_ab, {"A": None, "B": labels}, names)
    assert {f"symmetry/{c}" for c in ("G", "T_af", "T_nr")} <= set(m)
    assert {"divergence/D_A/nonrigid", "divergence/D_A/rigid", "divergence/D_B/nonrigid",
            "divergence/D_B/rigid"} <= set(m)
    assert "share/G/AtoB/x_B/GM" in m and "share/G/AtoB/x_A/GM" not in m  # x^A's labels not given
    assert "area/B/WM" in m and "area/A/WM" not in m
    assert all(v.shape == (2,) for v in m.values())
    total = sum(m[f"share/D_B/real/{s}"] for s in names.values()) + ex.structure_share(
        maps["D_B/real"].cam, labels, {0: "bg"})["bg"]
    torch.testing.assert_close(total, torch.ones(2))


def test_an_affine_stage_with_finer_levels_is_explained_through_g_and_t():
    """The demo's kind of T_af (matching heads on G's S/4, S/2 and S/1 features): recomputing the
    finer features must not run G's last block a second time, where the G map's hook sits."""
    torch.manual_seed(0)
    net = FIRENet(2, model_config(synthesis={"width": 4, "n_res": 1}, affine={
        "channels": [8, 8, 8], "hidden": 8, "head": "match", "init": "scale", "passes": 2, "fine_passes": 1,
        "full_passes": 1, "full_channels": [4, 4, 4]})).eval()
    with torch.no_grad():
        for t in (net.T_ab, net.T_ba):
            t.nonrigid.head.weight.copy_(torch.randn(t.nonrigid.head.weight.shape, generator=gen(1)) * 0.05)
    calls = []
    hook = net.G.gradcam_layer.register_forward_hook(lambda *a: calls.append(1))
    x_a, x_b, labels = _pair(2)
    net.fine_features(x_a, x_b)
    assert not calls  # the finer levels stop before G's last block
    hook.remove()
    maps = ex.explain_pair(net, x_a, x_b, fixed_label=labels)
    for name in ("G/AtoB/x_A", "G/BtoA/x_B", "T_af/AtoB/on_x_B", "T_nr/BtoA/on_x_A"):
        m = maps[name]
        assert m.cam.shape == x_a.shape and torch.isfinite(m.cam).all(), name
        assert m.cam.flatten(1).amax(1).gt(0).all(), f"{name}: an all-zero map"


def test_with_a_frozen_affine_encoder_the_g_maps_are_of_the_copy_the_affine_stage_reads():
    """``model.affine.encoder=frozen``: once G is copied, the affine stage reads the copy; the maps of G are
    the copy's (through the same images), and every component's maps stay non-zero."""
    torch.manual_seed(0)
    net = FIRENet(2, model_config(synthesis={"width": 4, "n_res": 1}, affine={
        "channels": [8, 8, 8], "hidden": 8, "head": "match", "init": "scale", "encoder": "frozen"}))
    with torch.no_grad():
        for t in (net.T_ab, net.T_ba):
            t.nonrigid.head.weight.copy_(torch.randn(t.nonrigid.head.weight.shape, generator=gen(1)) * 0.05)
    assert ex.cam_layer(net, "G") is net.G.gradcam_layer
    net.freeze_affine_encoder()
    with torch.no_grad():
        for p in net.G.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net.eval()
    assert ex.cam_layer(net, "G") is net.G_affine.gradcam_layer
    x_a, x_b, labels = _pair(2)
    maps = ex.explain_pair(net, x_a, x_b, ex.ExplainSettings(scalar_G="affine"), fixed_label=labels)
    for name in ("G/AtoB/x_A", "G/AtoB/x_B", "T_af/AtoB/on_x_B", "T_nr/BtoA/on_x_A"):
        m = maps[name]
        assert m.cam.shape == x_a.shape and torch.isfinite(m.cam).all(), name
        assert m.cam.flatten(1).amax(1).gt(0).all(), f"{name}: an all-zero map"
    assert all(p.grad is None for p in net.parameters())
