"""ACDC layout reading: patients, Info.cfg, the cine and the ED/ES frames, the split, bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_modules.acdc import LABEL_NAMES, check_patient, find_patients, parse_info_cfg, split_patients

from .fake_datasets import ACDC_SHAPE as SHAPE
from .fake_datasets import ACDC_SPACING as SPACING
from .fake_datasets import acdc_affine as _affine
from .fake_datasets import acdc_heart as _heart
from .fake_datasets import write_acdc_patient as write_patient


@pytest.fixture
def acdc_root(tmp_path) -> Path:
    root = tmp_path / "ACDC"
    for n in range(1, 7):
        write_patient(root / "training", n, ed=1, es=4 if n != 3 else 5)
    write_patient(root / "training", 7, ed=2, es=6, frames=7)  # frame numbers other than 01/..
    for n in (101, 102):
        write_patient(root / "testing", n, gt=n == 101, group=None)  # testing: no Group; one without labels
    return root


def test_patients_are_found_in_both_subsets_with_their_frames(acdc_root):
    patients = find_patients(acdc_root)
    assert [p.id for p in patients] == [f"patient{n:03d}" for n in (1, 2, 3, 4, 5, 6, 7, 101, 102)]
    p7 = next(p for p in patients if p.id == "patient007")
    assert (p7.subset, p7.ed, p7.es, p7.n_frames, p7.group) == ("training", 2, 6, 7, "DCM")
    assert p7.frame(p7.es).name == "patient007_frame06.nii.gz" and p7.gt(2).name == "patient007_frame02_gt.nii.gz"
    p101, p102 = patients[-2:]
    assert p101.subset == "testing" and p101.group is None and p101.has_labels and not p102.has_labels
    # the subset folder itself as the root
    assert [p.id for p in find_patients(acdc_root / "testing")] == ["patient101", "patient102"]
    assert [p.subset for p in find_patients(acdc_root, subsets=("training",))] == ["training"] * 7


def test_check_patient_reports_grid_spacing_frames_and_labels(acdc_root):
    p = find_patients(acdc_root)[6]
    info = check_patient(p)
    assert info["shape"] == SHAPE and info["frames"] == 7
    assert info["spacing"] == pytest.approx(SPACING)
    assert info["labels"] == [0, 1, 2, 3] and set(LABEL_NAMES) == {1, 2, 3}
    assert check_patient(find_patients(acdc_root)[-1], labels_required=False)["labels"] == []


def test_the_split_is_by_patient_disjoint_seeded_and_tests_only_labelled_patients(acdc_root):
    patients = find_patients(acdc_root)
    a = split_patients(patients, counts=(5, 1, 3), seed=3)
    assert a == split_patients(list(reversed(patients)), counts=(5, 1, 3), seed=3)  # order does not matter
    ids = a["train"] + a["val"] + a["test"]
    assert len(ids) == len(set(ids)) == 9
    assert "patient102" not in a["test"] + a["val"]  # no ground truth
    others = [split_patients(patients, counts=(5, 1, 3), seed=s)["test"] for s in range(6)]
    assert len({tuple(t) for t in others}) > 1  # the seed matters
    with pytest.raises(ValueError, match="needs 10 patients"):
        split_patients(patients, counts=(6, 1, 3))


def test_info_cfg_parsing(tmp_path):
    f = tmp_path / "Info.cfg"
    f.write_text("ED: 1\nES: 12\nGroup: MINF\nHeight: 160.0\nNbFrame: 30\nWeight: 70.5\n")
    assert parse_info_cfg(f) == {"ED": 1, "ES": 12, "NbFrame": 30, "Group": "MINF", "Height": 160.0, "Weight": 70.5}


def _one_line(excinfo, name: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and name in msg, msg
    return msg


@pytest.mark.parametrize("text, expected", [
    ("ED: 1\nNbFrame: 30\n", "missing ES"),
    ("ED: one\nES: 12\nNbFrame: 30\n", "whole number"),
    ("ED: 1\nES: 31\nNbFrame: 30\n", "outside the cine's frames 1..30"),
    ("ED 1\nES: 12\nNbFrame: 30\n", "line 1"),
])
def test_a_malformed_info_cfg_is_one_line_naming_it(tmp_path, text, expected):
    f = tmp_path / "Info.cfg"
    f.write_text(text)
    with pytest.raises(ValueError, match=expected) as e:
        parse_info_cfg(f)
    _one_line(e, str(f))


def _break(root: Path, kind: str) -> str:
    """Damage patient001 in one way; return the name the error must contain."""
    d = root / "training" / "patient001"
    if kind == "missing Info.cfg":
        (d / "Info.cfg").unlink()
        return "Info.cfg"
    if kind == "missing frame":
        (d / "patient001_frame04.nii.gz").unlink()
        return "patient001_frame04.nii.gz"
    if kind == "missing labels":
        (d / "patient001_frame01_gt.nii.gz").unlink()
        return "patient001_frame01_gt.nii.gz"
    if kind == "truncated cine":
        data = (d / "patient001_4d.nii.gz").read_bytes()
        (d / "patient001_4d.nii.gz").write_bytes(data[: len(data) // 2])
        return "patient001_4d.nii.gz"
    if kind == "3D cine":
        nib.save(nib.Nifti1Image(_heart(1, 6)[0], _affine()), d / "patient001_4d.nii.gz")
        return "patient001_4d.nii.gz"
    if kind == "frame count differs from Info.cfg":
        (d / "Info.cfg").write_text("ED: 1\nES: 4\nNbFrame: 8\n")
        return "patient001_4d.nii.gz"
    if kind == "frame on another grid":
        nib.save(nib.Nifti1Image(np.ones((12, 10, 6), np.float32), _affine()), d / "patient001_frame04.nii.gz")
        return "patient001_frame04.nii.gz"
    if kind == "NaN in a frame":
        img = _heart(4, 6)[0]
        img[3, 3, 2] = np.nan
        nib.save(nib.Nifti1Image(img, _affine()), d / "patient001_frame04.nii.gz")
        return "patient001_frame04.nii.gz"
    if kind == "constant frame":
        nib.save(nib.Nifti1Image(np.full(SHAPE, 7.0, np.float32), _affine()), d / "patient001_frame04.nii.gz")
        return "patient001_frame04.nii.gz"
    if kind == "foreign label":
        lab = _heart(1, 6)[1]
        lab[0, 0, 0] = 9
        nib.save(nib.Nifti1Image(lab, _affine()), d / "patient001_frame01_gt.nii.gz")
        return "patient001_frame01_gt.nii.gz"
    raise AssertionError(kind)


BAD = ["missing Info.cfg", "missing frame", "missing labels", "truncated cine", "3D cine",
       "frame count differs from Info.cfg", "frame on another grid", "NaN in a frame", "constant frame",
       "foreign label"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_naming_the_file(acdc_root, kind):
    name = _break(acdc_root, kind)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        for p in find_patients(acdc_root):
            check_patient(p)
    _one_line(e, name)


def test_no_acdc_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ACDC training or testing folder"):
        find_patients(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        find_patients(tmp_path / "nope")
