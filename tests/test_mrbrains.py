"""MRBrainS13/18 data module and the shared volume preprocessing, on tiny fake copies of the
datasets' exact layouts (tests/fake_datasets.py)."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data_modules import volumes
from data_modules.mrbrains import MRBrainSDataModule
from fire_lightning.cli import main
from fire_lightning.config import data_section, load_config
from fire_lightning.train import train

from . import fake_datasets as fake
from .conftest import ROOT, TINY, assert_pair_batch

pytestmark = pytest.mark.usefixtures("single_thread")

SP = 1.5  # mm: the 40 x 40 x 12 fake volumes (38.3 x 38.3 x 36 mm) become 25 x 25 x 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mrbrains")
    fake.write_mrbrains13(root)  # 5 subjects: 3 MetaImage, 2 NIfTI
    fake.write_mrbrains18(root)  # 7 subjects
    return root


def make_cfg(root, cache, *extra, dims=2):
    size = "[24,24]" if dims == 2 else "[24,24,24]"
    return data_section(load_config(None, TINY + ["data.name=mrbrains", f"data.root={root}", f"data.cache_dir={cache}",
                                                  f"data.spacing={SP}", f"data.spatial_dims={dims}",
                                                  f"data.size={size}", *extra]))


# ------------------------------------------------------------------------- discovery, split
def test_finds_both_releases_and_splits_8_1_3_by_subject(dataset, tmp_path):
    dm = MRBrainSDataModule(make_cfg(dataset, tmp_path))
    d = dm.describe()
    assert len(d["found"]["mrbrains13"]["subjects"]) == 5 and len(d["found"]["mrbrains18"]["subjects"]) == 7
    assert ("mrbrains13-1" in d["found"]["mrbrains13"]["subjects"]
            and "mrbrains18-148" in d["found"]["mrbrains18"]["subjects"])
    assert [len(d[k]) for k in ("train", "val", "test")] == [8, 1, 3] and d["unused"] == []
    assert len(set(d["train"]) | set(d["val"]) | set(d["test"])) == 12
    assert dm.describe() == MRBrainSDataModule(make_cfg(dataset, tmp_path)).describe()  # deterministic
    other = MRBrainSDataModule(make_cfg(dataset, tmp_path, "data.split_seed=5")).describe()
    assert other["test"] != d["test"] or other["val"] != d["val"]
    s18 = next(s for s in dm.subjects if s.id == "mrbrains18-5")
    assert s18.images["T1"].name == "reg_T1.nii.gz"  # the alternative MRBrainS18 name
    ir = MRBrainSDataModule(make_cfg(dataset, tmp_path, "data.modalities=[IR,FLAIR]"))
    s13 = next(s for s in ir.subjects if s.id == "mrbrains13-1")
    assert s13.images["IR"].name == "T1_IR.mhd" and s13.images["FLAIR"].name == "T2_FLAIR.mhd"
    assert next(s for s in ir.subjects if s.id == "mrbrains13-4").images["IR"].name == "T1_IR.nii"


def test_root_may_be_a_release_folder_and_too_few_subjects_say_where(dataset, tmp_path):
    dm = MRBrainSDataModule(make_cfg(dataset / "training", tmp_path, "data.subject_split=[5,1,1]"))
    assert list(dm.found) == ["mrbrains18"] and len(dm.subjects) == 7
    with pytest.raises(ValueError) as e:
        MRBrainSDataModule(make_cfg(dataset, tmp_path, "data.subject_split=[10,2,3]"))
    msg = str(e.value)
    assert "found 12 subjects" in msg and "TrainingData" in msg and "needs 15" in msg and "\n" not in msg


# --------------------------------------------------------------------------- preprocessing
def test_resampled_to_the_spacing_with_labels_mapped(dataset, tmp_path):
    dm = MRBrainSDataModule(make_cfg(dataset, tmp_path))
    subj = dm.subjects[0]
    vol = dm.volume(subj)
    expect = tuple(math.floor(n * s / SP + 1e-6) for n, s in zip(fake.SHAPE, fake.SPACING))
    assert vol.labels.shape == expect == vol.images["T1"].shape == vol.images["FLAIR"].shape
    assert vol.spacing == (SP, SP, SP)
    assert set(np.unique(vol.labels)) == {0, 1, 2, 3}
    assert dm.label_names == {1: "brainstem", 2: "cerebellum", 3: "WM"}
    for img in vol.images.values():
        assert img.dtype == np.float32 and img.min() == 0.0 and 0.95 < img.max() <= 1.0  # linear resampling smooths
    # The mapping exactly, at native spacing (no resampling): WM = source 3 or 4, etc.
    src = np.asanyarray(nib.as_closest_canonical(volumes.read_volume(subj.labels)).dataobj)
    native = volumes.preprocess(subj.images, subj.labels, volumes.Preprocessing(
        (None, None, None), (0.5, 99.5), {"CSF": [5, 6], "GM": [1, 2], "WM": [3, 4]}))
    assert native.labels.shape == src.shape
    np.testing.assert_array_equal(native.labels, np.select([np.isin(src, [5, 6]), np.isin(src, [1, 2]),
                                                            np.isin(src, [3, 4])], [1, 2, 3], 0))


def test_metaimage_and_nifti_of_the_same_content_give_the_same_arrays(tmp_path):
    lab = fake.anatomy(7)
    t1 = fake.intensities(lab, "T1", 0)
    mhd = {"T1": fake.write_metaimage(tmp_path / "m" / "T1.mhd", t1)}
    nii = {"T1": fake.write_nifti(tmp_path / "n" / "T1.nii.gz", t1)}
    ml, nl = fake.write_metaimage(tmp_path / "m" / "L.mhd", lab), fake.write_nifti(tmp_path / "n" / "L.nii", lab)
    a = nib.as_closest_canonical(volumes.read_volume(mhd["T1"]))
    b = nib.as_closest_canonical(volumes.read_volume(nii["T1"]))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)  # same RAS grid
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), t1)  # orientation handled (flip of x, y)
    settings = volumes.Preprocessing(SP, (0.5, 99.5), {"brainstem": [8], "cerebellum": [7], "WM": [3, 4]})
    va, vb = volumes.preprocess(mhd, ml, settings), volumes.preprocess(nii, nl, settings)
    np.testing.assert_array_equal(va.labels, vb.labels)
    np.testing.assert_allclose(va.images["T1"], vb.images["T1"], atol=1e-5)


def test_cache_hit_on_second_run_and_invalidation(dataset, tmp_path, monkeypatch):
    calls = []
    real = volumes.preprocess
    monkeypatch.setattr(volumes, "preprocess", lambda *a, **k: calls.append(1) or real(*a, **k))
    MRBrainSDataModule(make_cfg(dataset, tmp_path)).setup()
    assert len(calls) == 12
    dm = MRBrainSDataModule(make_cfg(dataset, tmp_path))
    dm.setup()
    assert len(calls) == 12  # all hits
    MRBrainSDataModule(make_cfg(dataset, tmp_path, "data.size=[28,28]")).setup()  # cropping is not cached
    assert len(calls) == 12
    MRBrainSDataModule(make_cfg(dataset, tmp_path, "data.spacing=2.0", "data.size=[20,20]")).setup()
    assert len(calls) == 24  # a preprocessing setting changed
    MRBrainSDataModule(make_cfg(dataset, tmp_path, "data.intensity_percentiles=[1.0,99.0]")).setup()
    assert len(calls) == 36
    entries = sorted((tmp_path / "volumes").glob("*.npz"))
    assert len(entries) == 36 and not list((tmp_path / "volumes").glob(".*tmp*"))
    # A corrupt entry is recomputed, not an error.
    before = dm.volume(dm.subjects[0]).labels.copy()
    assert len(calls) == 36
    key = volumes.cache_key(dm.subjects[0].images, dm.subjects[0].labels, dm.preprocessing)
    (tmp_path / "volumes" / f"{key}.npz").write_bytes(b"not a zip file")
    again = MRBrainSDataModule(make_cfg(dataset, tmp_path)).volume(dm.subjects[0])
    assert len(calls) == 37
    np.testing.assert_array_equal(again.labels, before)


def test_a_changed_file_invalidates_its_entry(tmp_path, monkeypatch):
    fake.write_mrbrains18(tmp_path / "d", ids=(1, 2, 3))
    calls = []
    real = volumes.preprocess
    monkeypatch.setattr(volumes, "preprocess", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = make_cfg(tmp_path / "d", tmp_path / "c", "data.subject_split=[1,1,1]")
    MRBrainSDataModule(cfg).setup()
    lab = fake.anatomy(9, extra_labels=True)
    fake.write_nifti(tmp_path / "d" / "training" / "2" / "pre" / "FLAIR.nii.gz", fake.intensities(lab, "FLAIR", 3) * 2)
    MRBrainSDataModule(cfg).setup()
    assert len(calls) == 4


def test_a_changed_metaimage_data_file_invalidates_its_entry(tmp_path, monkeypatch):
    import os

    fake.write_mrbrains13(tmp_path / "d", ids=(1, 2, 3), metaimage=(1, 2, 3))
    calls = []
    real = volumes.preprocess
    monkeypatch.setattr(volumes, "preprocess", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = make_cfg(tmp_path / "d", tmp_path / "c", "data.subject_split=[1,1,1]")
    MRBrainSDataModule(cfg).setup()
    # the header is untouched; only the voxels it points to change (same size)
    raw = next((tmp_path / "d" / "TrainingData" / "2").glob("T2_FLAIR.*raw"))
    data = bytearray(raw.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    MRBrainSDataModule(cfg).setup()
    assert len(calls) == 4


# ------------------------------------------------------------------------------------ pairs
@pytest.mark.parametrize("dims", [2, 3])
def test_batches_have_the_phantom_format(dataset, tmp_path, dims):
    dm = MRBrainSDataModule(make_cfg(dataset, tmp_path, dims=dims))
    dm.setup()
    shape = (24, 24) if dims == 2 else (24, 24, 24)
    assert dm.spacing == (SP,) * dims
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        b = next(iter(loader))
        assert_pair_batch(b, 2, shape)
        for k in ("moving_label", "fixed_label"):
            assert set(b[k].unique().tolist()) <= {0, 1, 2, 3}
    test = dm.test_dataset()
    assert len(test) == 3 * 1 * 2  # 3 test subjects x 1 image (TINY n_test_images; 3D: the volume) x 2 transforms
    assert {i.split("-t")[0].split("-z")[0].removeprefix("test-") for i in (test[j]["id"] for j in range(len(test)))} \
        == set(dm.describe()["test"])


@pytest.mark.parametrize("dims", [2, 3])
def test_training_pairs_transformed_on_the_device_have_the_same_format(dataset, tmp_path, dims):
    """``data.augment.device`` (set in experiments/mrbrains3d_t1_flair.yaml): the loader leaves the
    training pair's transform to the training device, which gives the same kind of batch."""
    dm = MRBrainSDataModule(make_cfg(dataset, tmp_path, "data.augment.device=true", dims=dims))
    dm.setup()
    raw = next(iter(dm.train_dataloader()))
    assert "aug_moving_affine" in raw
    b = dm.on_after_batch_transfer(raw, 0)
    assert_pair_batch(b, 2, (24,) * dims)
    assert not any(k.startswith("aug_") for k in b)
    assert set(b["moving_label"].unique().tolist()) <= {0, 1, 2, 3} and b["moving_label"].max() > 0
    assert not torch.equal(b["moving"], raw["moving"] * 2 - 1)  # transformed, not only rescaled


def test_2d_test_pairs_spread_over_the_brain_and_identical_across_instances(dataset, tmp_path):
    cfgs = [make_cfg(dataset, tmp_path / f"c{i}", "data.n_test_images=3") for i in range(2)]
    a, b = (MRBrainSDataModule(c).test_dataset() for c in cfgs)
    assert len(a) == 3 * 3 * 2
    zs = {p[0].id: [] for p in a.images}
    for item, z in a.images:
        zs[item.id].append(z)
    assert all(len(set(v)) == 3 for v in zs.values())
    for i in (0, 1, 7, len(a) - 1):
        pa, pb = a[i], b[i]
        assert pa["id"] == pb["id"]
        for k in ("moving", "fixed", "moving_label", "fixed_label"):
            assert torch.equal(pa[k], pb[k])
    assert not torch.equal(a[0]["moving"], a[1]["moving"])  # two different transforms
    assert torch.equal(a[0]["fixed"], a[1]["fixed"])  # fixed image untransformed


def test_fast_dev_run_training_writes_the_split(dataset, tmp_path, tiny_overrides, capsys):
    cfg = load_config(ROOT / "experiments" / "mrbrains2d_t1_flair.yaml",
                      tiny_overrides + [f"data.root={dataset}", f"data.cache_dir={tmp_path / 'cache'}",
                                        f"data.spacing={SP}", "data.size=[32,32]", "trainer.fast_dev_run=true",
                                        "trainer.num_threads=0"])
    result = train(cfg)
    split = json.loads((result["run_dir"] / "data_split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [8, 1, 3]
    assert (result["run_dir"] / "checkpoints" / "last.ckpt").is_file()

    # the benchmark runs on the run's held-out subjects ...
    run = str(result["run_dir"])
    assert main(["benchmark", run, "--no-ants", "--max-pairs", "2", "--threads", "1"]) == 0
    assert (result["run_dir"] / "benchmark" / "results.json").is_file()
    # ... and refuses data whose test subjects the run trained on, however that came about
    split["train"] = split["train"][:-1] + split["test"][:1]
    (result["run_dir"] / "data_split.json").write_text(json.dumps(split))
    capsys.readouterr()
    assert main(["benchmark", run, "--no-ants", "--out", str(tmp_path / "leak")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and split["test"][0] in err[0] and "training/validation" in err[0]
    assert not (tmp_path / "leak").exists()


@pytest.mark.parametrize("name", ["mrbrains2d_t1_flair", "mrbrains3d_t1_flair", "mrbrains2d_ir_flair"])
def test_experiment_configs_are_the_paper_settings(name):
    cfg = load_config(ROOT / "experiments" / f"{name}.yaml", ["data.root=/data"])
    assert cfg.data.name == "mrbrains" and cfg.data.spacing == 1.28 and cfg.model.synthesis.width == 64
    assert list(cfg.data.subject_split) == [8, 1, 3] and cfg.data.test_transforms_per_image == 20
    assert cfg.data.modalities[1] == "FLAIR" and cfg.data.modalities[0] == ("IR" if "_ir_" in name else "T1")
    assert cfg.trainer.max_steps == 144_000 and cfg.optim.lr_affine == 1e-5


# ---------------------------------------------------------------------------------- bad input
def _damage(case: str, subj: Path) -> Path:
    """Damage subject folder ``subj`` (MRBrainS18 layout unless noted); returns the file to name."""
    flair, segm = subj / "pre" / "FLAIR.nii.gz", subj / "segm.nii.gz"
    lab = fake.anatomy(3, extra_labels=True)
    if case == "missing modality":
        flair.unlink()
        return subj
    if case == "no labels":
        segm.unlink()
        return subj
    if case == "labels all background":
        return fake.write_nifti(segm, np.zeros(fake.SHAPE, np.uint8))
    if case == "shape mismatch":
        return fake.write_nifti(flair, fake.intensities(fake.anatomy(3, (40, 36, 12)), "FLAIR", 0))
    if case == "spacing mismatch":
        return fake.write_nifti(flair, fake.intensities(lab, "FLAIR", 0), spacing=(1.0, 1.0, 3.0))
    if case == "nan voxels":
        arr = fake.intensities(lab, "FLAIR", 0)
        arr[10, 10, 5] = np.nan
        return fake.write_nifti(flair, arr)
    if case == "constant image":
        return fake.write_nifti(flair, np.full(fake.SHAPE, 7.0, np.float32))
    if case == "4D image":
        return fake.write_nifti(flair, np.stack([fake.intensities(lab, "FLAIR", 0)] * 2, -1))
    if case == "orientation mismatch":  # same shape and voxel size, another direction
        arr = fake.intensities(lab, "FLAIR", 0)
        img = nib.Nifti1Image(arr, fake.ras_affine() @ np.diag([-1.0, 1.0, 1.0, 1.0]))
        nib.save(img, flair)
        return flair
    if case == "truncated nifti":
        data = flair.read_bytes()
        flair.write_bytes(gzip.compress(gzip.decompress(data)[:5000]))
        return flair
    raise AssertionError(case)


BAD_CASES = ["missing modality", "no labels", "labels all background", "shape mismatch", "spacing mismatch",
             "nan voxels", "constant image", "4D image", "truncated nifti", "orientation mismatch"]
EXPECT = {"missing modality": "FLAIR", "no labels": "label map", "labels all background": "background",
          "shape mismatch": "shape", "spacing mismatch": "voxel size", "nan voxels": "NaN",
          "constant image": "constant", "4D image": "4D", "truncated nifti": "cannot be read",
          "orientation mismatch": "affine"}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_naming_the_file(tmp_path, case):
    fake.write_mrbrains18(tmp_path / "d", ids=(1, 2, 3))
    named = _damage(case, tmp_path / "d" / "training" / "2")
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        dm = MRBrainSDataModule(make_cfg(tmp_path / "d", tmp_path / "c", "data.subject_split=[1,1,1]",
                                         "data.modalities=[T1,FLAIR]"))
        dm.setup()
    msg = str(e.value)
    assert "\n" not in msg and str(named) in msg and EXPECT[case] in msg, msg
    assert not list((tmp_path / "c").rglob("*.tmp*"))  # nothing half-written


def test_truncated_metaimage_is_one_line_naming_the_file(tmp_path):
    fake.write_mrbrains13(tmp_path / "d", ids=(1, 2, 3), metaimage=(1, 2, 3))
    raw = tmp_path / "d" / "TrainingData" / "2" / "T2_FLAIR.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(ValueError) as e:
        MRBrainSDataModule(make_cfg(tmp_path / "d", tmp_path / "c", "data.subject_split=[1,1,1]")).setup()
    msg = str(e.value)
    assert "\n" not in msg and "T2_FLAIR.mhd" in msg and "MetaImage" in msg


def test_4d_metaimage_is_one_line_naming_the_file(tmp_path):
    import SimpleITK as sitk

    fake.write_mrbrains13(tmp_path / "d", ids=(1, 2, 3), metaimage=(1, 2, 3))
    mhd = tmp_path / "d" / "TrainingData" / "2" / "T2_FLAIR.mhd"
    sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(mhd))] * 2), str(mhd))  # a 4D series
    with pytest.raises(ValueError) as e:
        MRBrainSDataModule(make_cfg(tmp_path / "d", tmp_path / "c", "data.subject_split=[1,1,1]")).setup()
    msg = str(e.value)
    assert "\n" not in msg and "T2_FLAIR.mhd" in msg and "4D" in msg, msg


def test_the_split_does_not_depend_on_the_order_subjects_are_found_in():
    from data_modules.mrbrains import split_subjects

    ids = [f"s{i}" for i in range(12)]
    assert split_subjects(ids, [8, 1, 3], 5) == split_subjects(ids[::-1], [8, 1, 3], 5)


def test_fire_data_check_reports_subjects_and_split_or_one_error(dataset, tmp_path, capsys):
    rc = main(["data", "check", str(dataset), "--dataset", "mrbrains", f"data.cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "mrbrains13: 5 subjects" in out and "mrbrains18: 7 subjects" in out
    assert "T2_FLAIR.mhd: shape (40, 40, 12), 0.958x0.958x3 mm" in out and "labels [0, 1, 2, 3, 4, 5, 6, 7, 8]" in out
    assert out.count("test: ") == 1 and "train: mrbrains" in out
    bad = tmp_path / "bad"
    shutil.copytree(dataset / "training", bad / "training")
    (bad / "training" / "7" / "segm.nii.gz").unlink()
    rc = main(["data", "check", str(bad), "--dataset", "mrbrains"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad / "training" / "7") in err[0] and "segm.nii.gz" in err[0]


def test_a_structure_absent_from_a_label_map_is_an_error_naming_it(tmp_path):
    fake.write_mrbrains18(tmp_path / "d", ids=(1, 2, 3))
    cfg = make_cfg(tmp_path / "d", tmp_path / "c", "data.subject_split=[1,1,1]",
                   "data.structures={WM: [3], lesion: [42]}")
    with pytest.raises(ValueError) as e:
        MRBrainSDataModule(cfg).setup()
    msg = str(e.value)
    assert "\n" not in msg and "segm.nii.gz" in msg and "lesion" in msg and "WM" not in msg.split("labels present")[0]
