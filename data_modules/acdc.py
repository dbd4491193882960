"""ACDC 2017 (cardiac cine MRI) as unpacked: patients, ``Info.cfg``, the 4D cine and the ED/ES frames.

Layout (DATA.md)::

    <root>/training/patientNNN/Info.cfg               ED: 1, ES: 12, Group: DCM, Height, Weight, NbFrame
    <root>/training/patientNNN/patientNNN_4d.nii.gz   (X, Y, Z, T) cine
    <root>/training/patientNNN/patientNNN_frameXX.nii.gz      XX = ED and ES, 1-based, two digits
    <root>/training/patientNNN/patientNNN_frameXX_gt.nii.gz   labels 1 RV, 2 myocardium, 3 LV cavity
    <root>/testing/patientNNN/...                      the same; Group and the _gt files may be absent

``root`` may also be the ``training`` or ``testing`` folder itself. Frame numbers come from
``Info.cfg`` (patients whose ED/ES are not 01/12 exist). Every problem is a one-line
``ValueError`` / ``FileNotFoundError`` naming the file and what was expected.

:class:`ACDCDataModule` (``data.name: acdc``, FIRE §4.2) builds on the reading and checking:

* patients: ``find_patients(data.root, data.acdc_subsets)``, split by patient with
  :func:`split_patients` (``data.subject_split``, paper 60/10/30; ``data.split_seed``); every
  patient used is checked with :func:`check_patient` (ground truth required for val/test);
* preprocessing (:func:`data_modules.volumes.load_series`, cached): the cine with its own
  array axes (not reordered to RAS: the slices of a double-oblique stack stay last), in-plane
  ``data.spacing`` mm; 2D keeps the native slices, 3D resamples the slice axis to
  ``data.slice_spacing`` mm; one [0, 1] intensity normalisation for the whole cine
  (``data.intensity_percentiles``); the ED/ES ground truths (nearest neighbour, same grid) mapped
  by ``data.structures`` (default LV cavity, myocardium → 1, 2); centre crop/pad to ``data.size``
  (2D: in-plane; 3D: all three axes);
* pairs, 2D+t (items = patient × slice): training = a random training patient and slice, two
  different random phases t1 ≠ t2 (moving t1, fixed t2), labels 0 (unsupervised; optional
  synthetic transforms with ``data.acdc_augment``); 3D (items = patient × phase): two different
  phases of one patient's volume. Val/test: ED→ES and ES→ED of every slice with a scored
  structure in both ED and ES (2D; ``n_*_images`` > 0: that many slices per patient spread over the
  heart) or of the volume (3D), with the ground truth; deterministic, no random transforms.
  Batches are those of :mod:`data_modules.phantom`; ``data.modalities`` is unused (cine MRI only).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .loading import Memoised, make_loader, plain_config, split_suggestion, spread, RankedDraws, train_rng, trainer_rank

from fire_lightning.io import load_nifti, spatial_shape

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
        raise FileNotFoundError(f"{root}: no ACDC {' or '.join(subsets)} folder (expected {root}/training/patient001/...)")
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


# ---------------------------------------------------------------------------- data module
@dataclass
class CineItem:
    """A preprocessed, cropped patient: ``cine`` (X, Y, Z, T) float16 in [0, 1]; ``labels``
    0-based frame → (X, Y, Z) int16 (ED and ES); ``ed`` / ``es`` 0-based; ``slices``: the slices
    with a scored structure in both ED and ES (2D evaluation)."""

    id: str
    cine: np.ndarray
    labels: dict
    ed: int
    es: int
    slices: list


class _CinePairs(Dataset):
    def __init__(self, items: list[CineItem], cfg, spacing):
        self.items, self.cfg = items, plain_config(cfg)
        self.n = int(cfg.spatial_dims)
        self.spacing = tuple(spacing)
        self.extent = [s * e for s, e in zip(self.spacing, cfg.size)]

    def _cut(self, arr: np.ndarray, z) -> torch.Tensor:
        block = arr if z is None else arr[:, :, z]
        return torch.from_numpy(np.ascontiguousarray(block)).unsqueeze(0)

    @staticmethod
    def _out(mov, fix, lab_m, lab_f, ident: str) -> dict:
        return {"moving": mov.float().clamp(0, 1) * 2 - 1, "fixed": fix.float().clamp(0, 1) * 2 - 1,
                "moving_label": lab_m.long(), "fixed_label": lab_f.long(), "id": ident}


class CineTrainPairs(RankedDraws, _CinePairs):
    """``samples_per_epoch`` fresh random pairs: a random patient (and slice, 2D), two different
    random phases; labels 0 (the phases are not annotated)."""

    def __len__(self) -> int:
        return int(self.cfg.samples_per_epoch)

    def __getitem__(self, i: int) -> dict:
        from .augment import apply_params, sample_params

        rng = train_rng(self.rank)
        item = self.items[int(rng.integers(len(self.items)))]
        z = int(rng.integers(item.cine.shape[2])) if self.n == 2 else None
        t1, t2 = (int(t) for t in rng.choice(item.cine.shape[3], size=2, replace=False))
        mov, fix = self._cut(item.cine[..., t1], z).float(), self._cut(item.cine[..., t2], z).float()
        lab_m = torch.zeros(mov.shape, dtype=torch.long)
        lab_f = lab_m.clone()
        if self.cfg.acdc_augment:
            aug = self.cfg.augment
            mov, lab_m = apply_params(mov, lab_m, self.spacing, sample_params(rng, self.n, self.extent, aug))
            if aug.transform_fixed:
                fix, lab_f = apply_params(fix, lab_f, self.spacing, sample_params(rng, self.n, self.extent, aug))
        ident = f"train-{item.id}" + (f"-z{z:02d}" if z is not None else "") + f"-t{t1 + 1:02d}>t{t2 + 1:02d}"
        return self._out(mov, fix, lab_m, lab_f, ident)


class EDESPairs(_CinePairs):
    """Evaluation pairs ED→ES and ES→ED of every patient's selected slices (2D) or volume (3D),
    with the ground truth; deterministic (no random transforms: the motion is real)."""

    def __init__(self, items, cfg, spacing, split: str, n_images: int):

        super().__init__(items, cfg, spacing)
        self.split = split
        self.pairs = [(it, z, d) for it in items
                      for z in (spread(it.slices, int(n_images)) if self.n == 2 else [None])
                      for d in ("ED>ES", "ES>ED")]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        item, z, direction = self.pairs[i]
        a, b = (item.ed, item.es) if direction == "ED>ES" else (item.es, item.ed)
        ident = f"{self.split}-{item.id}" + (f"-z{z:02d}" if z is not None else "") + f"-{direction}"
        return self._out(self._cut(item.cine[..., a], z), self._cut(item.cine[..., b], z),
                         self._cut(item.labels[a], z), self._cut(item.labels[b], z), ident)


class ACDCDataModule(L.LightningDataModule):
    """Train/val/test loaders of ACDC cine pairs for the ``data`` config (module docstring)."""

    def __init__(self, cfg):
        super().__init__()
        from .volumes import Preprocessing

        if cfg.root is None:
            raise ValueError("data.root is not set: give the ACDC folder holding training/ (e.g. data.root=/path/to/ACDC)")
        subsets = [str(s) for s in cfg.acdc_subsets]
        if not subsets or any(s not in SUBSETS for s in subsets):
            raise ValueError(f"data.acdc_subsets must be a non-empty list of {SUBSETS}, got {subsets}")
        n = int(cfg.spatial_dims)
        if n not in (2, 3) or len(cfg.size) != n:
            raise ValueError(f"data.size must have {n} entries for data.spatial_dims={n}, got {list(cfg.size)}")
        if cfg.spacing <= 0 or (n == 3 and cfg.slice_spacing <= 0):
            raise ValueError(f"data.spacing and data.slice_spacing must be positive for ACDC, got {cfg.spacing}, "
                             f"{cfg.slice_spacing}")
        self.cfg = cfg
        structures = {str(k): [int(v) for v in vals] for k, vals in (cfg.structures or DEFAULT_STRUCTURES).items()}
        self.structures = structures
        self.label_names = {i: name for i, name in enumerate(structures, start=1)}
        s = float(cfg.spacing)
        # reorient=False: the slices stay along the last array axis (RAS reordering could put an
        # in-plane axis there for double-oblique short-axis stacks).
        self.preprocessing = Preprocessing((s, s, float(cfg.slice_spacing) if n == 3 else None),
                                           tuple(float(p) for p in cfg.intensity_percentiles), structures,
                                           reorient=False)
        self.patients = find_patients(cfg.root, tuple(subsets))
        split = split_patients(self.patients, tuple(cfg.subject_split), int(cfg.split_seed))
        used = set(split["train"]) | set(split["val"]) | set(split["test"])
        self.split = {**split, "unused": sorted(p.id for p in self.patients if p.id not in used)}
        if self.split["unused"]:
            log.warning("%d patients are not in data.subject_split and are unused: %s",
                        len(self.split["unused"]), self.split["unused"])
        self._items: dict | None = None

    @property
    def spacing(self) -> tuple:
        s = float(self.cfg.spacing)
        return (s, s) if int(self.cfg.spatial_dims) == 2 else (s, s, float(self.cfg.slice_spacing))

    def describe(self) -> dict:
        """The patient split and what was found (written as ``data_split.json`` by ``train``)."""
        return {**{k: list(v) for k, v in self.split.items()},
                "found": {p.id: {"subset": p.subset, "folder": str(p.folder), "ED": p.ed, "ES": p.es,
                                 "frames": p.n_frames, "group": p.group} for p in self.patients},
                "structures": self.structures, "spacing_mm": list(self.spacing), "size": list(self.cfg.size)}

    def series(self, patient: ACDCPatient):
        """The preprocessed (uncropped) cine and ED/ES ground truth of one patient, through the cache."""
        from .volumes import load_series

        return load_series(patient.cine, self._gt_files(patient), self.preprocessing, self.cfg.cache_dir)

    @staticmethod
    def _gt_files(patient: ACDCPatient) -> dict:
        """0-based frame → ground-truth file, for the ED/ES frames that have one."""
        return {t - 1: patient.gt(t) for t in sorted({patient.ed, patient.es}) if patient.gt(t).is_file()}

    def item(self, patient: ACDCPatient, labels_required: bool = True) -> CineItem:
        """A checked, preprocessed and cropped patient."""
        from .volumes import fit, series_cache_path

        gt = self._gt_files(patient)
        cached = patient.cine.is_file() and series_cache_path(patient.cine, gt, self.preprocessing,
                                                              self.cfg.cache_dir).is_file()
        if not cached or (labels_required and len(gt) < len({patient.ed, patient.es})):
            # the full check reads every file; a cache entry (keyed by these files' size and mtime)
            # was written only after it passed, so a hit skips it
            check_patient(patient, labels_required=labels_required)
        ser = self.series(patient)
        n, size = int(self.cfg.spatial_dims), list(self.cfg.size)
        crop = size[:2] if n == 2 else size
        cine = fit(ser.images, crop).astype(np.float16)
        labels = {t: fit(lab, crop) for t, lab in ser.labels.items()}
        ed, es = patient.ed - 1, patient.es - 1
        slices = []
        if ed in labels and es in labels:
            # slices with a scored structure in both phases: ED↔ES Dice is defined there (at the
            # apex / base a structure may exist in one phase only)
            both = [(lab > 0).reshape(-1, lab.shape[-1]).any(0) for lab in (labels[ed], labels[es])]
            slices = [int(z) for z in np.nonzero(both[0] & both[1])[0]]
            if not slices and labels_required:
                raise ValueError(f"{patient.gt(patient.ed)}: none of the structures {self.structures} inside the "
                                 f"{crop} crop in both ED and ES; check data.size and data.structures")
        return CineItem(patient.id, cine, labels, ed, es, slices)

    def _prepared(self) -> dict:
        if self._items is None:
            by_id = {p.id: p for p in self.patients}
            self._items = {k: [self.item(by_id[i], labels_required=k != "train") for i in self.split[k]]
                           for k in ("train", "val", "test")}
            log.info("ACDC split: %s", {k: v for k, v in self.split.items() if v})
        return self._items

    def setup(self, stage: str | None = None) -> None:
        self._prepared()

    def train_dataloader(self) -> DataLoader:

        return make_loader(self.cfg, CineTrainPairs(self._prepared()["train"], self.cfg, self.spacing).on_rank(trainer_rank(self)))

    def val_dataloader(self) -> DataLoader:

        return make_loader(self.cfg, Memoised(EDESPairs(self._prepared()["val"], self.cfg, self.spacing, "val",
                                                        self.cfg.n_val_images)))

    def test_dataloader(self) -> DataLoader:

        return make_loader(self.cfg, self.test_dataset())

    def test_dataset(self) -> EDESPairs:
        """The held-out ED↔ES test pairs (deterministic, identical in every run)."""
        return EDESPairs(self._prepared()["test"], self.cfg, self.spacing, "test", self.cfg.n_test_images)

    def check(self) -> list[str]:
        """A report of every patient's files (read and checked, not resampled) and the split."""
        needs_labels = set(self.split["val"]) | set(self.split["test"])
        lines = [f"ACDC: {len(self.patients)} patients in {self.cfg.root} ({', '.join(self.cfg.acdc_subsets)})"]
        for p in self.patients:
            info = check_patient(p, labels_required=p.id in needs_labels)
            sp = "x".join(f"{v:.3g}" for v in info["spacing"])
            lines.append(f"{p.id} ({p.subset}, {p.group or '-'}): {info['frames']} frames, ED {p.ed:02d}, "
                         f"ES {p.es:02d}, shape {info['shape']}, {sp} mm, labels {info['labels'] or 'none'}")
        for k in ("train", "val", "test", "unused"):
            if self.split[k] or k != "unused":
                lines.append(f"{k}: {', '.join(self.split[k]) or '-'}")
        lines.append(f"scored structures: {self.label_names}")
        return lines
