"""T_nr heads (fire_lightning/nets/nonrigid.py): shapes, identity at initialisation, the cascade, and that the
U-Net learns a deformation that carries over to a pair it was not trained on."""

from __future__ import annotations

import pytest
import torch

from fire_lightning import spatial
from fire_lightning.config import ConfigError, load_config
from fire_lightning.losses import MutualInformation
from fire_lightning.nets.fire import FIRENet
from fire_lightning.nets.nonrigid import NonRigidNet, UNetNonRigid, build_nonrigid
from fire_lightning.schema import NonRigidConfig

from .conftest import gen, model_config

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = {2: (32, 24), 3: (16, 16, 8)}


def _identity(theta_batch: int, n: int) -> torch.Tensor:
    return spatial.identity_affine(theta_batch, n)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("out_level", [0, 1, 2])
def test_unet_field_grid_and_zero_start(n, out_level):
    """The field lives on S/2^out_level, and a fresh U-Net outputs exactly 0 (phi_nr = identity)."""
    net = UNetNonRigid(n, channels=(4, 8, 8), out_level=out_level, passes=2)
    x = torch.rand(2, 1, *SHAPES[n], generator=gen(0)) * 2 - 1
    v = net(x, x.flip(0), _identity(2, n), lambda raw: raw)
    assert v.shape == (2, n, *[s // 2**out_level for s in SHAPES[n]])
    assert torch.equal(v, torch.zeros_like(v))


def test_unet_cascade_passes_rewarp_the_moving_image():
    """Pass 2 sees the moving image warped by pass 1's field: with a field layer that answers a constant
    shift, two passes give twice it, and ``passes_eval`` sets the count at inference."""
    net = UNetNonRigid(2, channels=(4, 8), out_level=1, passes=2, passes_eval=3)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.5, -0.25]))
    x = torch.rand(1, 1, *SHAPES[2], generator=gen(1))
    step = torch.tensor([0.5, -0.25]).view(1, 2, 1, 1) * UNetNonRigid.OUTPUT_SCALE
    seen = []
    net.field = (lambda f: (lambda m, fx: seen.append(m) or f(m, fx)))(net.field)
    v = net.train()(x, x, _identity(1, 2), lambda raw: raw)
    torch.testing.assert_close(v, (2 * step).expand_as(v))
    torch.testing.assert_close(seen[1], spatial.warp(x, spatial.resize_field(step.expand(1, 2, 16, 12), SHAPES[2])))
    with torch.no_grad():
        three = net.eval()(x, x, _identity(1, 2), lambda raw: raw)
    torch.testing.assert_close(three, (3 * step).expand_as(three))


def test_build_nonrigid_heads_and_errors():
    assert isinstance(build_nonrigid(2, 8), NonRigidNet)
    assert isinstance(build_nonrigid(2, 8, NonRigidConfig(head="unet")), UNetNonRigid)
    with pytest.raises(ValueError, match="model.nonrigid.head"):
        build_nonrigid(2, 8, NonRigidConfig(head="transformer"))


@pytest.mark.parametrize("bad, match", [("model.nonrigid.head=mlp", "nonrigid.head"),
                                        ("model.nonrigid.out_level=4", "out_level"),
                                        ("model.nonrigid.passes=0", "passes")])
def test_config_checks_the_nonrigid_section(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [bad])


def test_fire_transform_with_the_unet_needs_the_images():
    """A FIRE model whose T_nr reads images: the transform's field is on T_nr's grid, and calling it with
    encodings alone is an error that says what is missing."""
    net = FIRENet(2, model_config(synthesis={"width": 2, "n_res": 1}, affine={"channels": [4, 4, 4], "hidden": 4},
                                  nonrigid={"head": "unet", "channels": [4, 8, 8], "out_level": 1, "passes": 2})).eval()
    x = torch.rand(1, 1, 36, 16, generator=gen(2)) * 2 - 1
    t = net(x, x)
    assert t.disp_nr.shape == (1, 2, 18, 8) and t.field((36, 16)).shape == (1, 2, 36, 16)
    g, _ = net.encode(x)
    with pytest.raises(ValueError, match="reads the images"):
        net.transform("AtoB", g, g)


def _shifted_pairs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blobs (moving) and the same blobs under a smooth, pair-specific deformation (fixed), in two
    contrasts (fixed = 1 - moving inside the blobs): ``(moving, fixed, true backward field)``."""
    g = gen(seed)
    shape = (32, 32)
    grid = spatial.identity_grid(shape)
    centres = torch.rand(count, 4, 2, generator=g) * 1.2 - 0.6
    img = sum(torch.exp(-((grid - centres[:, k].view(count, 2, 1, 1)) ** 2).sum(1, keepdim=True) / 0.04)
              for k in range(4)).clamp(max=1)
    coarse = (torch.rand(count, 2, 3, 3, generator=g) * 2 - 1) * 0.12
    disp = spatial.resize_field(coarse, shape)
    fixed = 1 - spatial.warp(img, disp)
    return img * 2 - 1, fixed * 2 - 1, disp


def test_unet_learns_a_deformation_that_carries_over_to_new_pairs():
    """Trained unsupervised (MI, multi-modal contrast) on random deformed pairs, the U-Net's field on
    pairs it never saw lowers the MI loss and correlates with the true field (the paper's T_nr did not)."""
    torch.manual_seed(0)
    net = UNetNonRigid(2, channels=(8, 16, 16), out_level=1, passes=1)
    mi = MutualInformation(16, 0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    theta = _identity(8, 2)
    for step in range(200):
        moving, fixed, _ = _shifted_pairs(8, 100 + step)
        u = spatial.resize_field(net(moving, fixed, theta, lambda raw: raw), (32, 32))
        loss = mi(spatial.warp(moving, u), fixed)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moving, fixed, truth = _shifted_pairs(8, 7)
    with torch.no_grad():
        u = spatial.resize_field(net.eval()(moving, fixed, theta, lambda raw: raw), (32, 32))
    before, after = mi(moving, fixed), mi(spatial.warp(moving, u), fixed)
    on_blobs = (fixed < 0.6).expand(-1, 2, -1, -1)  # where there is something to match (the field is free elsewhere)
    corr = torch.corrcoef(torch.stack([u[on_blobs], truth[on_blobs]]))[0, 1]
    assert after < before - 0.1
    assert corr > 0.6
