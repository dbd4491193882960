"""Synthetic subjects (data_modules/subjects.py): seeded, distinct, the modalities of one subject
aligned, and the seeds of the three splits disjoint."""

import numpy as np
import pytest
import torch

from data_modules.phantom import PhantomDataModule
from data_modules.subjects import SPLIT_SEED_BASE, SPLIT_SIZE, SubjectSettings, make_subject, subject_seed
from fire_lightning.config import data_section, load_config

from .conftest import PHANTOM2D, ROOT, TINY

SPACING = (4.0, 4.0, 4.0)


def _phantom():
    """A small asymmetric 'head': two modalities (B = 2 A, so one transform keeps B' = 2 A') and labels."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in (24, 28, 20)), indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.7) ** 2)
    a = (np.clip(1.2 - r, 0, 1) * (1 + 0.3 * (x > 0.2))).astype(np.float32)
    labels = np.select([r < 0.4, r < 0.7, r < 1.0], [3, 2, 1], 0).astype(np.int64)
    return {"T1": a, "FLAIR": 2 * a}, labels


def test_the_split_seed_ranges_never_meet():
    bases = sorted(SPLIT_SEED_BASE.values())
    assert all(b - a >= SPLIT_SIZE for a, b in zip(bases, bases[1:]))
    assert subject_seed("train", SPLIT_SIZE - 1) < subject_seed("val", 0) < subject_seed("test", 0)
    train = {subject_seed("train", i) for i in range(100)}
    assert not train & {subject_seed(s, i) for s in ("val", "test") for i in range(100)}
    with pytest.raises(ValueError, match="subject index"):
        subject_seed("train", SPLIT_SIZE)
    with pytest.raises(ValueError, match="split must be one of"):
        subject_seed("holdout", 0)


def test_a_subject_is_seeded_and_its_modalities_stay_aligned():
    images, labels = _phantom()
    a1, l1 = make_subject(images, labels, SPACING, seed=subject_seed("train", 3))
    a2, l2 = make_subject(images, labels, SPACING, seed=subject_seed("train", 3))
    b, lb = make_subject(images, labels, SPACING, seed=subject_seed("test", 3))
    assert np.array_equal(a1["T1"], a2["T1"]) and np.array_equal(l1, l2)  # seeded
    assert (l1 != lb).mean() > 0.02 and (l1 != labels).mean() > 0.02  # distinct anatomies
    np.testing.assert_allclose(a1["FLAIR"], 2 * a1["T1"], atol=1e-5)  # one transform for every modality
    assert a1["T1"].shape == images["T1"].shape and a1["T1"].dtype == np.float32 and l1.dtype == labels.dtype
    assert set(np.unique(l1)) <= set(np.unique(labels))  # labels by nearest neighbour
    ratio = (l1 > 0).sum() / (labels > 0).sum()  # a smooth warp and a scale of at most 8 % per axis
    assert 0.7 < ratio < 1.35


def test_no_deformation_and_no_scale_give_the_phantom_back():
    images, labels = _phantom()
    same, same_labels = make_subject(images, labels, SPACING, seed=5,
                                     settings=SubjectSettings(max_mm=0.0, scale=0.0))
    np.testing.assert_allclose(same["T1"], images["T1"], atol=1e-5)
    assert np.array_equal(same_labels, labels)


def test_an_in_plane_subject_keeps_every_axial_slice_on_its_own_slice():
    images, _ = _phantom()
    slice_of = np.broadcast_to(np.arange(1, 21), (24, 28, 20)).astype(np.int64)  # label = the slice, 1-based,
    slice_of = np.pad(slice_of[2:-2, 2:-2], ((2, 2), (2, 2), (0, 0)))  # background 0 around it in-plane
    _, moved = make_subject(images, slice_of, SPACING, seed=7, settings=SubjectSettings(max_mm=12.0))
    _, flat = make_subject(images, slice_of, SPACING, seed=7, settings=SubjectSettings(max_mm=12.0, in_plane=True))
    for z in range(20):  # in-plane: slice z shows template slice z only (0 where the warp leaves the grid)
        assert set(np.unique(flat[..., z])) <= {0, z + 1}
    assert any(set(np.unique(moved[..., z])) - {0, z + 1} for z in range(20))  # the 3D warp mixes slices
    assert (flat[..., 10] != slice_of[..., 10]).mean() > 0.02  # and in-plane it still deforms


# ---------------------------------------------------------------------------------- the data module
SUBJECTS = ["data.phantom.subjects.train=6", "data.phantom.subjects.val=2", "data.phantom.subjects.test=3"]


@pytest.fixture(scope="module")
def dm3d():
    overrides = [*TINY, *SUBJECTS, "data.spacing=8.0", "data.size=[24,28,24]", "data.test_transforms_per_image=2",
                 "data.val_transforms_per_image=1", "data.augment.device=false"]
    cfg = load_config(ROOT / "experiments" / "phantom3d.yaml", overrides)
    dm = PhantomDataModule(data_section(cfg))
    dm.setup()
    return dm


def test_3d_pairs_are_whole_volumes_of_held_out_subjects(dm3d):
    test, train = dm3d.test_dataset(), next(iter(dm3d.train_dataloader()))
    assert train["moving"].shape[2:] == train["fixed"].shape[2:] == (24, 28, 24)
    assert len(test) == 3 * 2
    assert [test[i]["id"] for i in (0, 1, 2)] == ["test-s0-t00", "test-s0-t01", "test-s1-t00"]
    pair = test[0]
    assert pair["moving"].shape == (1, 24, 28, 24) and int((pair["fixed_label"] > 0).sum()) > 0.1 * 24 * 28 * 24
    # no test (or validation) subject's seed is a training one, and their anatomies differ from every training one
    train_ds = dm3d.train_dataloader().dataset
    val_ds = dm3d.val_dataloader().dataset.dataset
    assert not set(train_ds.subjects.seeds) & (set(test.subjects.seeds) | set(val_ds.subjects.seeds))
    for s in range(len(test.subjects)):
        held_out = test.subjects[s][1]
        assert all((held_out != train_ds.subjects[t][1]).mean() > 0.01 for t in range(len(train_ds.subjects)))
    again = type(test)(dm3d.prep, dm3d.cfg, "test", dm3d.cfg.n_test_images, 2)[0]  # seeded: the same pair
    assert torch.equal(again["moving"], pair["moving"]) and torch.equal(again["fixed_label"], pair["fixed_label"])


def test_2d_pairs_are_slices_dealt_to_the_held_out_subjects():
    cfg = load_config(PHANTOM2D, [*TINY, *SUBJECTS, "data.n_test_images=4", "data.test_transforms_per_image=1"])
    dm = PhantomDataModule(data_section(cfg))
    test = dm.test_dataset()
    ids = [test[i]["id"] for i in range(len(test))]
    assert len(ids) == 4 and [i.split("-")[1] for i in ids] == ["s0", "s1", "s2", "s0"]
    assert test[0]["moving"].shape == (1, *cfg.data.size)
    batch = next(iter(dm.train_dataloader()))
    assert batch["moving"].shape[2:] == tuple(cfg.data.size) and batch["id"][0].startswith("train-s")


def test_2d_subjects_held_out_by_the_split_train_on_its_training_slices_and_test_on_its_pairs():
    split = PhantomDataModule(data_section(load_config(PHANTOM2D, [*TINY, "data.n_test_images=3"])))
    cfg = load_config(PHANTOM2D, [*TINY, "data.n_test_images=3", "data.phantom.subjects.train=4",
                                  "data.phantom.subjects.held_out=split"])
    dm = PhantomDataModule(data_section(cfg))
    test, reference = dm.test_dataset(), split.test_dataset()
    assert [test[i]["id"] for i in range(len(test))] == [reference[i]["id"] for i in range(len(reference))]
    assert torch.equal(test[0]["moving"], reference[0]["moving"])  # the split's own test pairs
    train = {z for a, b in dm.prep.ranges["train"] for z in range(a, b)}
    ds = dm.train_dataloader().dataset
    assert ds.slices and set(ds.slices) <= train and ds.subjects.settings.in_plane
    ids = [ds[i]["id"] for i in range(6)]
    assert all(i.startswith("train-s") and int(i.split("-z")[1]) in train for i in ids)
    from fire_lightning.config import ConfigError

    with pytest.raises(ConfigError, match="held_out=split is for 2D"):
        load_config(ROOT / "experiments" / "phantom3d.yaml", [*SUBJECTS, "data.phantom.subjects.held_out=split"])
    with pytest.raises(ConfigError, match="held_out must be"):
        load_config(PHANTOM2D, ["data.phantom.subjects.held_out=test"])


def test_subjects_without_held_out_ones_are_refused():
    from fire_lightning.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.phantom\.subjects: with train > 0, val and test need >= 1"):
        load_config(PHANTOM2D, ["data.phantom.subjects.train=5", "data.phantom.subjects.test=0"])
