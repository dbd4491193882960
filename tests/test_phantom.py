"""The embedded phantom data module: splits, determinism, shapes, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_modules.augment import apply_params, sample_params
from data_modules.phantom import PhantomDataModule, split_ranges
from fire_lightning.config import data_section, load_config

from .conftest import PHANTOM2D, ROOT, TINY


@pytest.fixture(scope="module")
def dm2d():
    cfg = load_config(PHANTOM2D, TINY + ["data.n_test_images=3", "data.test_transforms_per_image=3"])
    dm = PhantomDataModule(data_section(cfg))
    dm.setup()
    return dm


def test_split_ranges_are_disjoint_with_gaps():
    r = split_ranges(10, 110, blocks=4, fractions={"train": 0.7, "val": 0.1, "test": 0.2}, gap=3)
    spans = sorted((a, b, k) for k, v in r.items() for a, b in v)
    for (_a1, b1, _), (a2, _b2, _) in zip(spans, spans[1:]):
        assert b1 + 3 <= a2  # at least `gap` slices between any two ranges
    assert all(len(v) == 4 for v in r.values())
    assert spans[0][0] == 10 and spans[-1][1] == 110


def test_test_anatomy_never_appears_in_training(dm2d):
    ranges = dm2d.prep.ranges
    train = {z for a, b in ranges["train"] for z in range(a, b)}
    for split in ("val", "test"):
        other = {z for a, b in ranges[split] for z in range(a, b)}
        assert not train & other
    # at least gap_mm (3 slices of 1 mm) of anatomy between any training slice and any
    # val/test slice, across block boundaries too
    held_out = {z for split in ("val", "test") for a, b in ranges[split] for z in range(a, b)}
    gap = round(dm2d.cfg.phantom.split.gap_mm / dm2d.prep.spacing[2])
    assert min(abs(t - h) for t in train for h in held_out) > gap


def _trained_on(dm, batch: dict) -> dict:
    """A training batch as the training step sees it (with ``data.augment.device``, the demo's setting,
    the loader's pairs are transformed after the transfer to the device)."""
    return dm.on_after_batch_transfer(batch, 0)


def _drawn(dm, item: dict) -> torch.Tensor:
    """The moving image of one training pair as training sees it."""
    from data_modules.loading import collate_pairs

    return _trained_on(dm, collate_pairs([item]))["moving"][0]


@pytest.mark.parametrize("device", [False, True])
def test_batches_have_the_documented_shapes_and_ranges(device):
    cfg = load_config(PHANTOM2D, TINY + [f"data.augment.device={device}"])
    dm = PhantomDataModule(data_section(cfg))
    dm.setup()
    batch = _trained_on(dm, next(iter(dm.train_dataloader())))
    assert set(batch) == {"moving", "fixed", "moving_label", "fixed_label", "id"}
    assert batch["moving"].shape == (2, 1, 64, 72)
    assert batch["fixed"].shape == (2, 1, 64, 72)
    assert batch["moving_label"].dtype == torch.long
    assert batch["moving"].min() >= -1 and batch["moving"].max() <= 1
    assert set(batch["moving_label"].unique().tolist()) <= {0, 1, 2, 3}


def test_the_test_pairs_are_identical_across_runs():
    def pairs():
        cfg = load_config(PHANTOM2D, TINY + ["data.n_test_images=2", "data.test_transforms_per_image=3"])
        dm = PhantomDataModule(data_section(cfg))
        dm.setup()
        ds = dm.test_dataset()
        return [ds[i] for i in range(len(ds))]

    a, b = pairs(), pairs()
    assert len(a) == 6
    for pa, pb in zip(a, b):
        assert pa["id"] == pb["id"]
        assert torch.equal(pa["moving"], pb["moving"]) and torch.equal(pa["moving_label"], pb["moving_label"])
    # the transforms differ between the pairs of one image, and the fixed image is untransformed
    assert not torch.equal(a[0]["moving"], a[1]["moving"])
    assert torch.equal(a[0]["fixed"], a[1]["fixed"])


def test_training_pairs_change_every_draw(dm2d):
    ds = dm2d.train_dataloader().dataset
    torch.manual_seed(0)
    x, y = ds[0], ds[0]
    assert not torch.equal(_drawn(dm2d, x), _drawn(dm2d, y))


def test_ddp_ranks_draw_other_pairs_and_rank_0_the_single_process_ones(dm2d):
    """Every rank is seeded alike (DDP): ranks > 0 mix their rank into each pair's generator."""
    from data_modules.phantom import TrainPairs

    def draws(rank):
        torch.manual_seed(0)
        ds = TrainPairs(dm2d.prep, dm2d.cfg) if rank is None else TrainPairs(dm2d.prep, dm2d.cfg).on_rank(rank)
        return [_drawn(dm2d, ds[i]) for i in range(3)]

    plain, r0, r1, r2 = draws(None), draws(0), draws(1), draws(2)
    assert all(torch.equal(a, b) for a, b in zip(plain, r0))
    assert not any(torch.equal(a, b) for a, b in zip(r0, r1))
    assert not any(torch.equal(a, b) for a, b in zip(r1, r2))
    assert dm2d.train_dataloader().dataset.rank == 0  # no trainer attached: rank 0


def test_augmentation_changes_one_axis_by_20_to_50_percent():
    cfg = load_config(None)
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = sample_params(rng, 2, (200.0, 240.0), cfg.data.augment)
        change = [abs(s - 1) for s in p.scales[:2]]
        assert max(change) >= 0.2 - 1e-9 and max(change) <= 0.5 + 1e-9
        assert p.scales[2] == 1.0 and p.translation_mm[2] == 0.0
        assert np.all(p.control_points[..., 2] == 0)


def test_augmentation_scales_a_structure_by_the_sampled_factor():
    """A square scaled by s along axis 0 (no rotation, no elastic) grows by s in that axis."""
    cfg = load_config(None, ["data.augment.rotate_deg=0", "data.augment.translate=0",
                             "data.augment.elastic_max_mm=0", "data.augment.other_scale=0"])
    img = torch.zeros(1, 64, 64)
    img[0, 22:42, 22:42] = 1  # 20 px wide
    lab = img.long()
    rng = np.random.default_rng(3)
    p = sample_params(rng, 2, (64.0, 64.0), cfg.data.augment)
    axis = int(np.argmax([abs(s - 1) for s in p.scales[:2]]))
    _, out = apply_params(img, lab, (1.0, 1.0), p)
    width = out[0].any(dim=1 - axis).sum().item()
    assert width == pytest.approx(20 * p.scales[axis], abs=1.5)
    assert out.dtype == lab.dtype and set(out.unique().tolist()) <= {0, 1}


def test_3d_slabs_do_not_cross_the_splits():
    cfg = load_config(ROOT / "experiments" / "phantom3d.yaml", TINY)
    dm = PhantomDataModule(data_section(cfg))
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["moving"].shape[1:] == (1, 48, 56, 8)
    assert dm.spacing == (4.0, 4.0, 4.0)
    train = {z for a, b in dm.prep.ranges["train"] for z in range(a, b)}
    for z in dm.test_dataset().zs:
        assert not set(range(z, z + 8)) & train


def test_bad_modality_is_a_clear_error():
    cfg = load_config(None, ["data.modalities=[T1,T3]"])
    with pytest.raises(ValueError, match="T3|modalities"):
        PhantomDataModule(data_section(cfg))


class _Counted(torch.utils.data.Dataset):
    """Items of 4 KiB that count how often each was made."""

    def __init__(self, n: int):
        self.made = [0] * n
        self.zs = "wrapped attribute"

    def __len__(self):
        return len(self.made)

    def __getitem__(self, i):
        self.made[i] += 1
        return {"moving": torch.full((1024,), float(i)), "id": f"pair{i}"}


def test_memoised_makes_each_pair_once_within_its_budget_and_again_beyond():
    from data_modules.loading import Memoised

    inner = _Counted(5)
    ds = Memoised(inner, max_bytes=3 * 4096)  # room for three items
    for _ in range(3):
        got = [ds[i] for i in range(5)]
    assert [g["id"] for g in got] == [f"pair{i}" for i in range(5)] and float(got[4]["moving"][0]) == 4.0
    assert inner.made == [1, 1, 1, 3, 3] and ds.kept_bytes == 3 * 4096
    assert len(ds) == 5 and ds.zs == "wrapped attribute"


def test_the_validation_loader_keeps_its_pairs_and_they_equal_the_unkept_ones():
    """The validation loader (a persistent worker) hands out the same batches at every validation, equal
    to the pairs made directly."""
    import pickle

    from data_modules.loading import Memoised
    from data_modules.phantom import FixedPairs

    cfg = load_config(PHANTOM2D, TINY + ["data.num_workers=1", "data.n_val_images=2",
                                         "data.val_transforms_per_image=2"])
    dm = PhantomDataModule(data_section(cfg))
    dm.setup()
    loader = dm.val_dataloader()
    assert isinstance(loader.dataset, Memoised) and loader.persistent_workers
    first, second = list(loader), list(loader)
    c = cfg.data
    direct = FixedPairs(dm.prep, c, "val", c.n_val_images, c.val_transforms_per_image)
    assert len(direct) == 4 and sum(b["moving"].shape[0] for b in first) == 4
    for a, b, i in zip(first, second, range(0, 4, c.batch_size)):
        assert a["id"] == b["id"] == [direct[j]["id"] for j in range(i, i + c.batch_size)]
        for key in ("moving", "fixed", "moving_label", "fixed_label", "true_theta", "true_elastic"):
            assert torch.equal(a[key], b[key])
            assert torch.equal(a[key], torch.stack([direct[j][key] for j in range(i, i + c.batch_size)]))
    assert len(pickle.loads(pickle.dumps(loader.dataset))) == 4  # spawned workers receive it pickled


def test_the_pair_datasets_read_their_config_as_a_dataclass(tiny_overrides):
    """A loader worker reads a dozen config values per sample: from the typed schema's dataclass,
    not through OmegaConf (tens of µs a read); the values are the config's."""
    from omegaconf import OmegaConf

    from fire_lightning.schema import AugmentConfig, DataConfig
    from fire_lightning.train import make_datamodule

    cfg = load_config(PHANTOM2D, tiny_overrides)
    dm = make_datamodule(cfg)
    dm.setup("fit")
    ds = dm.train_dataloader().dataset
    assert isinstance(ds.cfg, DataConfig) and isinstance(ds.cfg.augment, AugmentConfig)
    assert OmegaConf.to_container(OmegaConf.structured(ds.cfg)) == OmegaConf.to_container(cfg.data)
