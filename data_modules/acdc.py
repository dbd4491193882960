"""ACDC 2017 (cardiac cine MRI): :class:`ACDCDataModule` (``data.name: acdc``, FIRE §4.2), built on
the reading and checking of the unpacked patients (:mod:`data_modules.acdc_patients`):

* patients: ``find_patients(data.root, data.acdc.subsets)``, split by patient with
  :func:`split_patients` (``data.subject_split``, paper 60/10/30; ``data.split_seed``); every
  patient used is checked with :func:`check_patient` (ground truth required for val/test);
* preprocessing (:func:`data_modules.volumes.load_series`, cached): the cine with its own
  array axes (not reordered to RAS: the slices of a double-oblique stack stay last), in-plane
  ``data.spacing`` mm; 2D keeps the native slices, 3D resamples the slice axis to
  ``data.acdc.slice_spacing`` mm; one [0, 1] intensity normalisation for the whole cine
  (``data.intensity_percentiles``); the ED/ES ground truths (nearest neighbour, same grid) mapped
  by ``data.structures`` (default LV cavity, myocardium → 1, 2); centre crop/pad to ``data.size``
  (2D: in-plane; 3D: all three axes);
* pairs, 2D+t (items = patient × slice): training = a random training patient and slice, two
  different random phases t1 ≠ t2 (moving t1, fixed t2), labels 0 (unsupervised; optional
  synthetic transforms with ``data.acdc.augment``); 3D (items = patient × phase): two different
  phases of one patient's volume. Val/test: ED→ES and ES→ED of every slice with a scored
  structure in both ED and ES (2D; ``n_*_images`` > 0: that many slices per patient spread over the
  heart) or of the volume (3D), with the ground truth; deterministic, no random transforms.
  Batches are those of :mod:`data_modules.phantom`; ``data.modalities`` is unused (cine MRI only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from fire_lightning.schema import DataConfig

from .acdc_patients import (  # noqa: F401  (re-exported: the patients' API)
    DEFAULT_STRUCTURES,
    LABEL_NAMES,
    SUBSETS,
    ACDCPatient,
    check_patient,
    find_patients,
    parse_info_cfg,
    split_patients,
)
from .crop import fit
from .loading import Memoised, make_loader, pair_dict, spread, train_rng, trainer_rank
from .pairs import PairDataset, TrainPairDataset

log = logging.getLogger(__name__)


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


class CineTrainPairs(TrainPairDataset):
    """``samples_per_epoch`` fresh random pairs: a random patient (and slice, 2D), two different
    random phases; labels 0 (the phases are not annotated)."""

    def __init__(self, items: list[CineItem], cfg: DataConfig, spacing):
        super().__init__(cfg, spacing)
        self.items = items

    def __getitem__(self, i: int) -> dict:
        from .augment import apply_params, sample_params

        rng = train_rng(self.rank)
        item = self.items[int(rng.integers(len(self.items)))]
        z = int(rng.integers(item.cine.shape[2])) if self.n == 2 else None
        t1, t2 = (int(t) for t in rng.choice(item.cine.shape[3], size=2, replace=False))
        mov, fix = self.cut(item.cine[..., t1], z).float(), self.cut(item.cine[..., t2], z).float()
        lab_m = torch.zeros(mov.shape, dtype=torch.long)
        lab_f = lab_m.clone()
        if self.cfg.acdc.augment:
            aug = self.cfg.augment
            mov, lab_m = apply_params(mov, lab_m, self.spacing, sample_params(rng, self.n, self.extent, aug))
            if aug.transform_fixed:
                fix, lab_f = apply_params(fix, lab_f, self.spacing, sample_params(rng, self.n, self.extent, aug))
        ident = f"train-{item.id}" + (f"-z{z:02d}" if z is not None else "") + f"-t{t1 + 1:02d}>t{t2 + 1:02d}"
        return pair_dict(mov, fix, lab_m, lab_f, ident)


class EDESPairs(PairDataset):
    """Evaluation pairs ED→ES and ES→ED of every patient's selected slices (2D) or volume (3D),
    with the ground truth; deterministic (no random transforms: the motion is real)."""

    def __init__(self, items: list[CineItem], cfg: DataConfig, spacing, split: str, n_images: int):
        super().__init__(cfg, spacing)
        self.items, self.split = items, split
        self.pairs = [(it, z, d) for it in items
                      for z in (spread(it.slices, int(n_images)) if self.n == 2 else [None])
                      for d in ("ED>ES", "ES>ED")]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        item, z, direction = self.pairs[i]
        a, b = (item.ed, item.es) if direction == "ED>ES" else (item.es, item.ed)
        ident = f"{self.split}-{item.id}" + (f"-z{z:02d}" if z is not None else "") + f"-{direction}"
        return pair_dict(self.cut(item.cine[..., a], z), self.cut(item.cine[..., b], z),
                         self.cut(item.labels[a], z), self.cut(item.labels[b], z), ident)


class ACDCDataModule(L.LightningDataModule):
    """Train/val/test loaders of ACDC cine pairs for the ``data`` config (module docstring)."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        from .volumes import Preprocessing

        if cfg.root is None:
            raise ValueError("data.root is not set: give the ACDC folder holding training/ "
                             "(e.g. data.root=/path/to/ACDC)")
        subsets = [str(s) for s in cfg.acdc.subsets]
        if not subsets or any(s not in SUBSETS for s in subsets):
            raise ValueError(f"data.acdc.subsets must be a non-empty list of {SUBSETS}, got {subsets}")
        n = int(cfg.spatial_dims)
        if n not in (2, 3) or len(cfg.size) != n:
            raise ValueError(f"data.size must have {n} entries for data.spatial_dims={n}, got {list(cfg.size)}")
        if cfg.spacing <= 0 or (n == 3 and cfg.acdc.slice_spacing <= 0):
            raise ValueError(f"data.spacing and data.acdc.slice_spacing must be positive for ACDC, got {cfg.spacing}, "
                             f"{cfg.acdc.slice_spacing}")
        self.cfg = cfg
        structures = {str(k): [int(v) for v in vals] for k, vals in (cfg.structures or DEFAULT_STRUCTURES).items()}
        self.structures = structures
        self.label_names = {i: name for i, name in enumerate(structures, start=1)}
        s = float(cfg.spacing)
        # reorient=False: the slices stay along the last array axis (RAS reordering could put an
        # in-plane axis there for double-oblique short-axis stacks).
        self.preprocessing = Preprocessing((s, s, float(cfg.acdc.slice_spacing) if n == 3 else None),
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
        return (s, s) if int(self.cfg.spatial_dims) == 2 else (s, s, float(self.cfg.acdc.slice_spacing))

    def describe(self) -> dict:
        """The patient split and what was found (written as ``data_split.json`` by ``train``)."""
        return {**{k: list(v) for k, v in self.split.items()},
                "found": {p.id: {"subset": p.subset, "folder": str(p.folder), "ED": p.ed, "ES": p.es,
                                 "frames": p.n_frames, "group": p.group} for p in self.patients},
                "structures": self.structures, "spacing_mm": list(self.spacing), "size": list(self.cfg.size)}

    def series(self, patient: ACDCPatient):
        """The preprocessed (uncropped) cine and ED/ES ground truth of one patient, through the cache."""
        from .series import load_series

        return load_series(patient.cine, self._gt_files(patient), self.preprocessing, self.cfg.cache_dir)

    @staticmethod
    def _gt_files(patient: ACDCPatient) -> dict:
        """0-based frame → ground-truth file, for the ED/ES frames that have one."""
        return {t - 1: patient.gt(t) for t in sorted({patient.ed, patient.es}) if patient.gt(t).is_file()}

    def item(self, patient: ACDCPatient, labels_required: bool = True) -> CineItem:
        """A checked, preprocessed and cropped patient."""
        from .series import series_cache_path

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

        return make_loader(self.cfg, CineTrainPairs(self._prepared()["train"], self.cfg, self.spacing)
                           .on_rank(trainer_rank(self)))

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
        lines = [f"ACDC: {len(self.patients)} patients in {self.cfg.root} ({', '.join(self.cfg.acdc.subsets)})"]
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
