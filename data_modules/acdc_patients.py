"""ACDC 2017 (cardiac cine MRI) as unpacked: patients, ``Info.cfg``, the 4D cine and the ED/ES frames.

Layout::

    <root>/training/patientNNN/Info.cfg               ED: 1, ES: 12, Group: DCM, Height, Weight, NbFrame
    <root>/training/patientNNN/patientNNN_4d.nii.gz   (X, Y, Z, T) cine
    <root>/training/patientNNN/patientNNN_frameXX.nii.gz      XX = ED and ES, 1-based, two digits
    <root>/training/patientNNN/patientNNN_frameXX_gt.nii.gz   labels 1 RV, 2 myocardium, 3 LV cavity
    <root>/testing/patientNNN/...                      the same; Group and the _gt files may be absent

``root`` may also be the ``training`` or ``testing`` folder itself. Frame numbers come from
``Info.cfg`` (patients whose ED/ES are not 01/12 exist). Every problem is a one-line
``ValueError`` / ``FileNotFoundError`` naming the file and what was expected. The data module
built on them is :mod:`data_modules.acdc`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fire_lightning.io import load_nifti, spatial_shape

from .loading import split_suggestion

log = logging.getLogger(__name__)

LABEL_NAMES = {1: "RV", 2: "myocardium", 3: "LV"}
DEFAULT_STRUCTURES = {"LV": [3], "myocardium": [2]}  # FIRE §4.2: Dice on LV cavity and myocardium
SUBSETS = ("training", "testing")
_REQUIRED_KEYS = ("ED", "ES", "NbFrame")
_PATIENT = re.compile(r"^patient(\d{3})$")


@dataclass(frozen=True)
class ACDCPatient:
    """One patient folder. ``ed`` / ``es`` are 1-based frame numbers into the cine's time axis."""

    id: str
    folder: Path
    subset: str
    ed: int
    es: int
    n_frames: int
    group: str | None = None
    height: float | None = None
    weight: float | None = None

    @property
    def cine(self) -> Path:
        return self.folder / f"{self.id}_4d.nii.gz"

    def frame(self, t: int) -> Path:
        return self.folder / f"{self.id}_frame{t:02d}.nii.gz"

    def gt(self, t: int) -> Path:
        return self.folder / f"{self.id}_frame{t:02d}_gt.nii.gz"

    @property
    def has_labels(self) -> bool:
        return self.gt(self.ed).is_file() and self.gt(self.es).is_file()


def parse_info_cfg(path: str | Path) -> dict:
    """``Info.cfg`` → ``{"ED": int, "ES": int, "NbFrame": int, "Group": str | None, "Height": float | None,
    "Weight": float | None}``; ED and ES must lie in ``1..NbFrame``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Info.cfg not found (expected lines 'ED: 1', 'ES: 12', 'NbFrame: 30')")
    values: dict = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"{path}: line {number} is not 'Key: value': {line.strip()!r}")
        values[key.strip()] = value.strip()
    missing = [k for k in _REQUIRED_KEYS if k not in values]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)} (found {', '.join(values) or 'nothing'})")
    out: dict = {"Group": values.get("Group")}
    for key in _REQUIRED_KEYS:
        try:
            out[key] = int(float(values[key]))
        except ValueError:
            raise ValueError(f"{path}: {key} must be a whole number, got {values[key]!r}") from None
    for key in ("Height", "Weight"):
        try:
            out[key] = float(values[key]) if key in values else None
        except ValueError:
            raise ValueError(f"{path}: {key} must be a number, got {values[key]!r}") from None
    for key in ("ED", "ES"):
        if not 1 <= out[key] <= out["NbFrame"]:
            raise ValueError(f"{path}: {key} = {out[key]} is outside the cine's frames 1..{out['NbFrame']}")
    return out


def _subset_folders(root: Path, subsets) -> list[tuple[str, Path]]:
    if root.name in SUBSETS and any(_PATIENT.match(p.name) for p in root.iterdir() if p.is_dir()):
        return [(root.name, root)] if root.name in subsets else []
    return [(s, root / s) for s in subsets if (root / s).is_dir()]


def find_patients(root: str | Path, subsets=SUBSETS) -> list[ACDCPatient]:
    """Every ``patientNNN`` folder under ``root`` (see the module docstring), sorted by id.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no ACDC ``training`` / ``testing`` folder.
        ValueError: an ``Info.cfg`` is missing or malformed (the file is named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ACDC root folder not found")
    folders = _subset_folders(root, subsets)
    if not folders:
        raise FileNotFoundError(f"{root}: no ACDC {' or '.join(subsets)} folder "
                                f"(expected {root}/training/patient001/...)")
    patients = []
    for subset, folder in folders:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT.match(p.name)):
            info = parse_info_cfg(sub / "Info.cfg")
            patients.append(ACDCPatient(id=sub.name, folder=sub, subset=subset, ed=info["ED"], es=info["ES"],
                                        n_frames=info["NbFrame"], group=info["Group"], height=info["Height"],
                                        weight=info["Weight"]))
    if not patients:
        raise FileNotFoundError(f"{root}: no patientNNN folders in {', '.join(str(f) for _, f in folders)}")
    return sorted(patients, key=lambda p: p.id)


def check_patient(patient: ACDCPatient, labels_required: bool = True) -> dict:
    """Read a patient's files and check them against each other.

    Checks: the cine is 4D with ``NbFrame`` frames (a 3D cine is refused); the ED and ES frame
    files exist, are 3D, and share the cine's grid (shape and voxel-to-world affine); the ground
    truth (required when ``labels_required``) shares its frame's grid and holds integer labels
    within ``0..3``; the images are finite (``load_nifti``) and not constant.

    Returns:
        ``{"shape": (X, Y, Z), "spacing": (sx, sy, sz), "frames": T, "labels": sorted label values}``.
    """
    cine = load_nifti(patient.cine, "4D cine", allow_4d=True)
    if cine.ndim != 4:
        raise ValueError(f"{patient.cine}: the cine must be 4D (X, Y, Z, T), got shape {tuple(cine.shape)}")
    if cine.shape[3] != patient.n_frames:
        raise ValueError(f"{patient.cine}: {cine.shape[3]} frames, but {patient.folder / 'Info.cfg'} says "
                         f"NbFrame: {patient.n_frames}")
    grid = (tuple(cine.shape[:3]), cine.affine)
    labels: set = set()
    for t in sorted({patient.ed, patient.es}):
        frame = load_nifti(patient.frame(t), f"frame {t:02d}")
        _same_grid(frame, patient.frame(t), grid, patient.cine)
        _not_constant(frame, patient.frame(t))
        gt_path = patient.gt(t)
        if not gt_path.is_file():
            if labels_required:
                raise FileNotFoundError(f"{gt_path}: ground truth of frame {t:02d} not found (labels are needed "
                                        "for the test pairs)")
            continue
        gt = load_nifti(gt_path, f"ground truth of frame {t:02d}", labels=True)
        _same_grid(gt, gt_path, grid, patient.cine)
        values = set(np.unique(np.asarray(gt.dataobj)).astype(int).tolist())
        if not values <= {0, 1, 2, 3}:
            raise ValueError(f"{gt_path}: labels {sorted(values)}; ACDC labels are 0 background, 1 RV, "
                             "2 myocardium, 3 LV cavity")
        labels |= values
    spacing = tuple(float(s) for s in cine.header.get_zooms()[:3])
    return {"shape": grid[0], "spacing": spacing, "frames": patient.n_frames, "labels": sorted(labels)}


def _same_grid(img: nib.Nifti1Image, path: Path, grid, reference: Path) -> None:
    shape, affine = grid
    if spatial_shape(img) != shape or not np.allclose(img.affine, affine, atol=1e-3):
        raise ValueError(f"{path}: shape {tuple(img.shape)} / voxel-to-world affine differ from the cine "
                         f"{reference.name} ({shape}); a patient's files must share one grid")


def _not_constant(img: nib.Nifti1Image, path: Path) -> None:
    data = np.asarray(img.dataobj)
    if data.size and data.min() == data.max():
        raise ValueError(f"{path}: the image is constant ({float(data.min())}); expected an MR image")


def split_patients(patients: list[ACDCPatient], counts=(60, 10, 30), seed: int = 0) -> dict:
    """A seeded patient-level split ``{"train", "val", "test"}`` of ids (FIRE: 60/10/30).

    Only patients with labels can be validation or test patients; the split depends on the ids
    and the seed only.
    """
    n_train, n_val, n_test = (int(c) for c in counts)
    labelled = sorted(p.id for p in patients if p.has_labels)
    hint = split_suggestion((n_train, n_val, n_test), len(patients), len(labelled))
    if len(patients) < n_train + n_val + n_test or len(labelled) < n_test:
        raise ValueError(f"the split {n_train}/{n_val}/{n_test} needs {n_train + n_val + n_test} patients "
                         f"({n_test} with ground truth); found {len(patients)} ({len(labelled)} with ground truth); "
                         f"{hint}")
    if len(labelled) < n_test + n_val:
        raise ValueError(f"the split {n_train}/{n_val}/{n_test} needs {n_val + n_test} patients with ground truth "
                         f"for validation and test; found {len(labelled)}; {hint}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(labelled).tolist()
    test, val = sorted(order[:n_test]), sorted(order[n_test : n_test + n_val])
    rest = [p.id for p in sorted(patients, key=lambda p: p.id) if p.id not in set(test) | set(val)]
    rest = rng.permutation(rest).tolist()
    return {"train": sorted(rest[:n_train]), "val": val, "test": test}
