"""ACDC data module (2D+t and 3D): preprocessing through the cache, phase pairs, ED↔ES test pairs,
training, ``fire data check``; on a tiny fake ACDC (tests/fake_datasets.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data_modules import series
from data_modules.acdc import ACDCDataModule
from fire_lightning.cli import main
from fire_lightning.config import data_section, load_config
from fire_lightning.train import train

from . import fake_datasets as fake
from .conftest import ROOT, TINY, assert_pair_batch

pytestmark = pytest.mark.usefixtures("single_thread")

SP = 1.5  # mm in-plane: the 24 x 20 fake slices (37.5 x 31.25 mm) become 25 x 20


@pytest.fixture(scope="module")
def acdc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("acdc") / "ACDC"
    for n in range(1, 7):
        fake.write_acdc_patient(root / "training", n, ed=1, es=4 if n != 3 else 5)
    fake.write_acdc_patient(root / "training", 7, ed=2, es=5, frames=7)  # ED/ES not 01/..; distinct phases
    fake.write_acdc_patient(root / "testing", 101, group=None)
    return root


def make_cfg(root, cache, *extra, dims=2):
    size = "[24,24]" if dims == 2 else "[24,24,8]"
    return data_section(load_config(None, TINY + ["data.name=acdc", f"data.root={root}", f"data.cache_dir={cache}",
                                                  f"data.spacing={SP}", f"data.spatial_dims={dims}",
                                                  f"data.size={size}", "data.subject_split=[3,1,2]",
                                                  "data.acdc.slice_spacing=20.0", *extra]))


def _patient(dm, pid):
    return next(p for p in dm.patients if p.id == pid)


@pytest.mark.parametrize("dims", [2, 3])
def test_batches_have_the_common_format(acdc, tmp_path, dims):
    dm = ACDCDataModule(make_cfg(acdc, tmp_path, dims=dims))
    d = dm.describe()
    assert [len(d[k]) for k in ("train", "val", "test")] == [3, 1, 2] and len(d["unused"]) == 1
    assert d["found"]["patient007"]["ED"] == 2 and "patient101" not in d["found"]  # acdc_subsets: [training]
    dm.setup()
    shape = (24, 24) if dims == 2 else (24, 24, 8)
    assert dm.spacing == ((SP, SP) if dims == 2 else (SP, SP, 20.0))
    assert dm.label_names == {1: "LV", 2: "myocardium"}
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert_pair_batch(next(iter(loader)), 2, shape)
    test = dm.test_dataset()
    assert len(test) == 2 * 2  # 2 test patients x 1 image (TINY n_test_images; 3D: the volume) x ED>ES, ES>ED
    ids = [test[i]["id"] for i in range(len(test))]
    pattern = r"test-patient\d{3}-z\d{2}-(ED>ES|ES>ED)" if dims == 2 else r"test-patient\d{3}-(ED>ES|ES>ED)"
    assert all(re.fullmatch(pattern, i) for i in ids), ids
    assert {i.split("-")[1] for i in ids} == set(d["test"])


@pytest.mark.parametrize("dims", [2, 3])
def test_training_pairs_are_two_different_phases_of_one_slice_or_volume(acdc, tmp_path, dims):
    dm = ACDCDataModule(make_cfg(acdc, tmp_path, dims=dims))
    dm.setup()
    items = {it.id: it for it in dm._prepared()["train"]}
    ds = dm.train_dataloader().dataset
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        p = ds[0]
        m = re.fullmatch(r"train-(patient\d{3})" + (r"-z(\d{2})" if dims == 2 else "()") + r"-t(\d{2})>t(\d{2})",
                         p["id"])
        assert m, p["id"]
        pid, z, t1, t2 = m.group(1), m.group(2), int(m.group(3)) - 1, int(m.group(4)) - 1
        assert pid in items and t1 != t2
        cine = torch.from_numpy(items[pid].cine.astype(np.float32))
        if dims == 2:
            cine = cine[:, :, int(z)]
        assert torch.equal(p["moving"][0], cine[..., t1] * 2 - 1) and torch.equal(p["fixed"][0], cine[..., t2] * 2 - 1)
        assert not p["moving_label"].any() and not p["fixed_label"].any()  # unannotated phases
        seen.add((pid, t1, t2))
    assert len(seen) > 3  # random patients and phases


def test_test_pairs_are_ed_es_with_mapped_ground_truth_and_identical_across_instances(acdc, tmp_path):
    # Native in-plane spacing and the native in-plane size: no resampling, no crop.
    extra = [f"data.spacing={fake.ACDC_SPACING[0]}", "data.size=[24,20]", "data.n_test_images=0"]
    a = ACDCDataModule(make_cfg(acdc, tmp_path / "c1", *extra)).test_dataset()
    b = ACDCDataModule(make_cfg(acdc, tmp_path / "c2", *extra)).test_dataset()
    assert len(a) == len(b) == 2 * 6 * 2  # every slice has the heart: 2 patients x 6 slices x 2 directions
    for i in range(len(a)):
        pa, pb = a[i], b[i]
        assert pa["id"] == pb["id"]
        for k in ("moving", "fixed", "moving_label", "fixed_label"):
            assert torch.equal(pa[k], pb[k])
    for i in (0, 1, 5, len(a) - 1):
        p = a[i]
        pid, z, direction = re.fullmatch(r"test-(patient\d{3})-z(\d{2})-(ED>ES|ES>ED)", p["id"]).groups()
        folder = acdc / "training" / pid
        info = dict(line.split(": ") for line in (folder / "Info.cfg").read_text().splitlines())
        ed, es = int(info["ED"]), int(info["ES"])
        src_m, src_f = (ed, es) if direction == "ED>ES" else (es, ed)
        for key, t in (("moving_label", src_m), ("fixed_label", src_f)):
            gt = np.asanyarray(nib.load(folder / f"{pid}_frame{t:02d}_gt.nii.gz").dataobj)[:, :, int(z)]
            expect = np.select([gt == 3, gt == 2], [1, 2], 0)  # LV → 1, myocardium → 2, RV dropped
            np.testing.assert_array_equal(p[key][0].numpy(), expect)
        assert p["moving_label"].max() == 2 and not torch.equal(p["moving_label"], p["fixed_label"])


def test_a_patient_with_other_ed_es_frames_is_read_correctly(acdc, tmp_path):
    dm = ACDCDataModule(make_cfg(acdc, tmp_path, f"data.spacing={fake.ACDC_SPACING[0]}", "data.size=[24,20]"))
    item = dm.item(_patient(dm, "patient007"))
    assert (item.ed, item.es) == (1, 4) and item.cine.shape == (24, 20, 6, 7) and set(item.labels) == {1, 4}
    assert not np.array_equal(item.labels[1], item.labels[4])  # the fake heart moved between ED and ES
    for t in (2, 5):  # 1-based ED, ES
        img, lab = fake.acdc_heart(t, 7)
        np.testing.assert_array_equal(item.labels[t - 1], np.select([lab == 3, lab == 2], [1, 2], 0))
        corr = [np.corrcoef(item.cine[..., k].astype(np.float32).ravel(), img.ravel())[0, 1] for k in range(7)]
        assert corr[t - 1] > 0.999 and corr[(5 if t == 2 else 2) - 1] < 0.99  # the right phase of the cine


def test_in_plane_resampling_and_3d_slice_spacing(acdc, tmp_path):
    dm2 = ACDCDataModule(make_cfg(acdc, tmp_path))
    ser = dm2.series(dm2.patients[0])
    extent = np.array(fake.ACDC_SHAPE) * fake.ACDC_SPACING
    assert ser.images.shape == (int(extent[0] / SP + 1e-6), int(extent[1] / SP + 1e-6), 6, 6) == (25, 20, 6, 6)
    assert ser.spacing == (SP, SP, 10.0) and set(ser.labels) == {0, 3}
    assert ser.images.min() == 0.0 and ser.images.max() == 1.0 and ser.images.dtype == np.float32
    dm3 = ACDCDataModule(make_cfg(acdc, tmp_path, dims=3))
    ser3 = dm3.series(dm3.patients[0])
    assert ser3.images.shape == (25, 20, 3, 6) and ser3.spacing == (SP, SP, 20.0)  # 60 mm / 20 mm


def test_cache_hit_on_a_second_instance_and_invalidation(acdc, tmp_path, monkeypatch):
    calls = []
    real = series.preprocess_series
    monkeypatch.setattr(series, "preprocess_series", lambda *a, **k: calls.append(1) or real(*a, **k))
    ACDCDataModule(make_cfg(acdc, tmp_path)).setup()
    assert len(calls) == 6
    ACDCDataModule(make_cfg(acdc, tmp_path)).setup()
    assert len(calls) == 6  # all hits
    ACDCDataModule(make_cfg(acdc, tmp_path, "data.size=[28,28]")).setup()  # cropping is not cached
    assert len(calls) == 6
    ACDCDataModule(make_cfg(acdc, tmp_path, "data.intensity_percentiles=[1.0,99.0]")).setup()
    assert len(calls) == 12
    ACDCDataModule(make_cfg(acdc, tmp_path, dims=3)).setup()  # another slice spacing
    assert len(calls) == 18
    assert len(list((tmp_path / "series").glob("*.npz"))) == 18 and not list(tmp_path.rglob("*.tmp*"))


@pytest.mark.parametrize("name, dims", [("acdc2d", 2), ("acdc3d", 3)])
def test_fast_dev_run_training_and_the_model_spacing(acdc, tmp_path, tiny_overrides, name, dims):
    size = "[24,24]" if dims == 2 else "[24,24,8]"
    cfg = load_config(ROOT / "experiments" / f"{name}.yaml",
                      tiny_overrides + [f"data.root={acdc}", f"data.cache_dir={tmp_path / 'cache'}",
                                        f"data.size={size}", "data.subject_split=[3,1,2]", "data.batch_size=2",
                                        "trainer.fast_dev_run=true"])
    result = train(cfg)
    split = json.loads((result["run_dir"] / "data_split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [3, 1, 2]
    assert (result["run_dir"] / "checkpoints" / "last.ckpt").is_file()
    expect = (1.5, 1.5) if dims == 2 else (1.5, 1.5, 10.0)
    assert result["model"].spacing == expect
    from fire_lightning.module import load_module

    assert load_module(result["checkpoint"]).spacing == expect  # saved in the checkpoint


@pytest.mark.parametrize("name", ["acdc2d", "acdc3d"])
def test_experiment_configs_are_the_paper_settings(name):
    cfg = load_config(ROOT / "experiments" / f"{name}.yaml", ["data.root=/data"])
    assert cfg.data.name == "acdc" and cfg.data.spacing == 1.5 and cfg.model.synthesis.width == 64
    assert list(cfg.data.subject_split) == [60, 10, 30] and cfg.trainer.max_steps == 144_000
    assert all(s % 4 == 0 for s in cfg.data.size) and len(cfg.data.size) == cfg.data.spatial_dims
    assert cfg.data.acdc.slice_spacing == 10.0 and not cfg.data.acdc.augment


def test_fire_data_check_reports_patients_or_one_error(acdc, tmp_path, capsys):
    rc = main(["data", "check", str(acdc), "--dataset", "acdc", "data.subject_split=[3,1,2]",
               f"data.cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "ACDC: 7 patients" in out and "patient007 (training, DCM): 7 frames, ED 02, ES 05, shape (24, 20, 6)" in out
    assert "1.56x1.56x10 mm, labels [0, 1, 2, 3]" in out and out.count("test: ") == 1
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(acdc / "training", bad / "training")
    gt = bad / "training" / "patient004" / "patient004_frame04_gt.nii.gz"
    lab = fake.acdc_heart(4, 6)[1]
    lab[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(lab, fake.acdc_affine()), gt)
    rc = main(["data", "check", str(bad), "--dataset", "acdc", "data.subject_split=[3,1,2]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(gt) in err[0] and "labels" in err[0], err


def test_fire_data_check_acdc_brings_acdc_defaults_and_names_the_override_for_a_partial_download(acdc, tmp_path,
                                                                                                capsys):
    rc = main(["data", "check", str(acdc), "--dataset", "acdc", f"data.cache_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "60/10/30" in err[0], err  # ACDC's split, not MRBrainS' 8/1/3
    override = re.search(r"data\.subject_split=\[\d+,\d+,\d+\]", err[0])
    assert override, err
    rc = main(["data", "check", str(acdc), "--dataset", "acdc", override.group(0), f"data.cache_dir={tmp_path}"])
    assert rc == 0, capsys.readouterr()


def test_acdc_augment_transforms_the_training_pairs(acdc, tmp_path):
    dm = ACDCDataModule(make_cfg(acdc, tmp_path, "data.acdc.augment=true"))
    dm.setup()
    items = {it.id: it for it in dm._prepared()["train"]}
    torch.manual_seed(1)
    p = dm.train_dataloader().dataset[0]
    pid, z, t1 = re.fullmatch(r"train-(patient\d{3})-z(\d{2})-t(\d{2})>t\d{2}", p["id"]).groups()
    plain = torch.from_numpy(items[pid].cine[:, :, int(z), int(t1) - 1].astype(np.float32)) * 2 - 1
    assert p["moving"].shape == (1, 24, 24) and not torch.allclose(p["moving"][0], plain, atol=1e-3)


def test_an_oblique_cine_keeps_its_slices_on_the_last_axis(tmp_path):
    """Short-axis stacks are double-oblique: RAS reordering would put an in-plane axis last."""
    root = tmp_path / "ACDC"
    for n in range(1, 5):
        fake.write_acdc_patient(root / "training", n)
    # patient001: the 10 mm slice axis points along world x (RAS reordering would move it first)
    perm = np.array([[0.0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]) @ fake.acdc_affine()
    d = root / "training" / "patient001"
    for f in d.glob("*.nii.gz"):
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), perm), f)
    dm = ACDCDataModule(make_cfg(root, tmp_path / "c", "data.subject_split=[1,1,2]"))
    ser = dm.series(_patient(dm, "patient001"))
    assert ser.images.shape[2] == fake.ACDC_SHAPE[2]  # the native slices, still last
    assert ser.images.shape[:2] == (25, 20)  # in-plane 24 x 20 at 1.5625 mm → 1.5 mm


def test_a_cached_patient_is_not_read_and_checked_again(acdc, tmp_path, monkeypatch):
    import data_modules.acdc as acdc_module

    calls = []
    real = acdc_module.check_patient
    monkeypatch.setattr(acdc_module, "check_patient", lambda p, **kw: calls.append(p.id) or real(p, **kw))
    ACDCDataModule(make_cfg(acdc, tmp_path)).setup()
    assert len(calls) == 6  # 3 + 1 + 2 patients, all new
    calls.clear()
    ACDCDataModule(make_cfg(acdc, tmp_path)).setup()
    assert calls == []  # every series came from the cache, which was written after its check passed
