"""Augmentation on the training device: the same transforms as the TorchIO path, from the
same draws, applied to a whole batch with one resampling; evaluation pairs untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_modules.augment import apply_params, known_transform, sample_params
from data_modules.device_augment import DeviceTransform, apply_batch, device_transform, source_coordinates
from data_modules.loading import augment_on_device
from data_modules.phantom import PhantomDataModule
from fire_lightning import spatial
from fire_lightning.config import data_section, load_config

from .conftest import PHANTOM2D, TINY

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE, SPACING = (64, 72), (3.0, 3.0)


def _labels_agree_within_a_voxel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Part of ``a``'s voxels (``(B, 1, *S)``, 2D) whose label ``b`` has within one voxel: nearest-neighbour
    resampling moves a boundary by up to half a voxel, and TorchIO resamples twice."""
    import torch.nn.functional as F

    near = torch.zeros_like(a, dtype=torch.bool)
    for label in torch.unique(torch.cat([a, b])):
        grown = F.max_pool2d((b == label).float(), 3, stride=1, padding=1) > 0
        near |= (a == label) & grown
    return near[..., 3:-3, 3:-3].float().mean().item()


def _params(seed: int, cfg):
    extent = [s * e for s, e in zip(SPACING, SHAPE)]
    return sample_params(np.random.default_rng(seed), 2, extent, cfg.data.augment)


@pytest.mark.parametrize("shape, spacing, seed", [((64, 72), (3.0, 3.0), s) for s in range(3)]
                         + [((24, 28, 20), (3.0, 3.0, 3.0), s) for s in range(2)])
def test_the_device_transform_is_torchio_s_within_interpolation_error(shape, spacing, seed):
    """Against the transform read off TorchIO itself (augment.known_transform), 2D and 3D: where both
    are measured exactly (not within the 4 edge voxels, where TorchIO's double resampling holds the
    border, nor within 4 voxels of where the source point leaves the image), the sampled points agree to 1/50 voxel."""
    cfg = load_config(PHANTOM2D)
    n = len(shape)
    extent = [s * e for s, e in zip(spacing, shape)]
    p = sample_params(np.random.default_rng(seed), n, extent, cfg.data.augment)
    truth = known_transform(p, spacing, shape)
    coords = spatial.identity_grid(shape, dtype=torch.float64)
    tau = (spatial.apply_affine(spatial.invert_affine(truth.theta[None].double()), coords)
           + truth.elastic[None].double())[0]
    t = device_transform(p, shape, spacing)
    mine = source_coordinates(DeviceTransform(t.affine[None], t.coefficients[None]), shape, spacing,
                              cfg.data.augment.elastic_control_points)[0]
    view = (n,) + (1,) * n
    lim = torch.tensor([1 - 4 / s for s in shape], dtype=torch.float64).view(view)
    ok = torch.zeros(shape, dtype=torch.bool)
    ok[(slice(4, -4),) * n] = True
    ok &= (tau.abs() < lim).all(0) & (truth.elastic.abs().sum(0) > 0)
    assert ok.float().mean() > 0.1  # a small 3D grid loses most to its edges
    voxels = ((mine - tau).abs() * torch.tensor(shape).view(view) / 2)[:, ok]
    assert voxels.max() < 0.02


@pytest.mark.parametrize("shape, spacing", [((64, 72), (3.0, 3.0)), ((20, 24, 16), (2.0, 2.5, 3.0))])
def test_the_per_axis_b_spline_equals_the_gathered_one_and_a_rotated_grid_falls_back(shape, spacing):
    """The separable evaluation (every voxel at once, per-axis weights) against the per-point one
    (64 gathered terms per voxel, ITK's support and valid region), 2D and 3D, a batch of 3; a voxel
    grid that is not axis-aligned with the control grid is left to the per-point route."""
    from data_modules import device_augment as da

    cfg = load_config(PHANTOM2D)
    n = len(shape)
    extent = [s * e for s, e in zip(spacing, shape)]
    ts = [device_transform(sample_params(np.random.default_rng(s), n, extent, cfg.data.augment), shape, spacing)
          for s in range(3)]
    coef = torch.stack([t.coefficients for t in ts])
    shape3, sp3 = tuple(shape) + (1,) * (3 - n), da._spacing3(spacing, n)
    grid = da.bspline_grid(shape3, sp3, cfg.data.augment.elastic_control_points)
    to_lps = torch.as_tensor(da._lps(sp3))
    vox = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape3], indexing="ij"), -1)
    points = (vox.reshape(1, -1, 3) @ to_lps[:3, :3].T + to_lps[:3, 3]).expand(3, -1, -1)
    gathered = da._bspline_displacement(points, coef, grid)
    assert gathered.abs().max() > 1  # a real deformation (mm)
    torch.testing.assert_close(da._grid_displacement(to_lps, shape3, coef, grid), gathered, rtol=0, atol=1e-12)
    rotated = to_lps.clone()
    rotated[:2, :2] = torch.tensor([[0.0, -3.0], [3.0, 0.0]])
    assert da._grid_displacement(rotated, shape3, coef, grid) is None


def test_a_batch_on_the_device_matches_the_torchio_images():
    cfg = load_config(PHANTOM2D, TINY)
    dm = PhantomDataModule(data_section(cfg))
    dm.setup()
    ds = dm.test_dataset()
    z = ds.zs[0]
    src = torch.stack([ds.cut(dm.prep.images["T1"], z)] * 3)  # (3, 1, *S) in [0, 1], 3 transforms
    lab = torch.stack([ds.cut(dm.prep.labels, z)] * 3).long()
    params = [_params(s, cfg) for s in range(3)]
    ts = [device_transform(p, SHAPE, SPACING) for p in params]
    batch = DeviceTransform(torch.stack([t.affine for t in ts]), torch.stack([t.coefficients for t in ts]))
    img, labels = apply_batch(src, lab, batch, SPACING, cfg.data.augment.elastic_control_points)
    for i, p in enumerate(params):
        ref_img, ref_lab = apply_params(src[i], lab[i], SPACING, p)
        inner = (slice(None), slice(3, -3), slice(3, -3))
        diff = (img[i] - ref_img)[inner].abs()
        assert diff.mean() < 0.01 and diff.max() < 0.35  # one resampling against two
        assert (labels[i] == ref_lab)[inner].float().mean() > 0.9
        assert _labels_agree_within_a_voxel(labels[i:i + 1], ref_lab[None]) > 0.999


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_batch_is_transformed_without_copies_between_host_and_device(spatial_dims):
    """On the meta device, where a host tensor has to be copied as on a GPU: after a first batch
    (which puts the geometry's constants on the device), a batch's transform copies nothing from
    the host and reads nothing back: on a GPU each would wait for every queued kernel."""
    from fire_lightning.nets.fire import fresh_caches
    from fire_lightning.profiling import HostCopies

    config = PHANTOM2D if spatial_dims == 2 else PHANTOM2D.parent / "phantom3d.yaml"
    cfg = load_config(config, [*TINY, "data.augment.device=true"])
    dm = PhantomDataModule(data_section(cfg))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "aug_moving_affine" in batch
    on_meta = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}
    with fresh_caches():
        augment_on_device(on_meta, dm.spacing, cfg.data.augment)  # a read back to the host would raise here
        with HostCopies("meta") as copies:
            out = augment_on_device(on_meta, dm.spacing, cfg.data.augment)
    assert copies.sites == {}
    assert out["moving"].device.type == "meta" and out["moving"].shape == batch["moving"].shape


def test_training_pairs_from_the_same_draws_agree_on_either_path():
    """transformed_pair with the same generators: TorchIO now, or the device later (the streams of
    a training loader differ: TorchIO's transforms draw from torch's RNG on their own)."""
    from data_modules.loading import collate_pairs, transformed_pair

    cfg = load_config(PHANTOM2D, TINY)
    dm = PhantomDataModule(data_section(cfg))
    dm.setup()
    ds = dm.test_dataset()
    z = ds.zs[0]
    mov, fix, lab = ds.cut(dm.prep.images["T1"], z), ds.cut(dm.prep.images["FLAIR"], z), ds.cut(dm.prep.labels, z)
    extent = [s * e for s, e in zip(SPACING, SHAPE)]

    def pairs(device):
        return collate_pairs([transformed_pair(mov, fix, lab, SPACING, extent, cfg.data.augment,
                                               np.random.default_rng([s, 0]), np.random.default_rng([s, 1]),
                                               f"p{s}", device=device) for s in range(3)])

    a, raw = pairs(False), pairs(True)
    assert {"aug_moving_affine", "aug_fixed_coef"} <= raw.keys() and raw["moving"].min() >= 0
    b = dm.on_after_batch_transfer(raw, 0)
    assert b.keys() == a.keys() and a["id"] == b["id"]
    for key in ("moving", "fixed"):
        assert b[key].shape == a[key].shape and b[key].min() >= -1 and b[key].max() <= 1
        assert (b[key] - a[key])[..., 3:-3, 3:-3].abs().mean() < 0.02
    for key in ("moving_label", "fixed_label"):
        assert (b[key] == a[key])[..., 3:-3, 3:-3].float().mean() > 0.9
        assert _labels_agree_within_a_voxel(b[key], a[key]) > 0.999


def test_evaluation_pairs_and_other_batches_are_untouched():
    cfg = load_config(PHANTOM2D, TINY)
    dev_cfg = load_config(PHANTOM2D, TINY + ["data.augment.device=true"])
    ref, dev = PhantomDataModule(data_section(cfg)), PhantomDataModule(data_section(dev_cfg))
    ref.setup(), dev.setup()
    a, b = next(iter(ref.test_dataloader())), next(iter(dev.test_dataloader()))
    b = dev.on_after_batch_transfer(b, 0)
    for key in ("moving", "fixed", "moving_label", "fixed_label", "true_theta", "true_elastic"):
        assert torch.equal(a[key], b[key]), key
    assert augment_on_device(a, SPACING, cfg.data.augment) is a


def test_a_run_trains_with_device_augmentation(tiny_overrides):
    from fire_lightning.train import train

    cfg = load_config(PHANTOM2D, [*tiny_overrides, "data.augment.device=true", "trainer.max_steps=2",
                                  "trainer.val_every_n_steps=2", "explain.every_n_epochs=0"])
    result = train(cfg)
    assert result["iterations"] == 2 and np.isfinite(result["metrics"]["val/dice_mean"])
