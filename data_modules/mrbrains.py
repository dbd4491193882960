"""LightningDataModule of MRBrainS13 + MRBrainS18 (FIRE §4.1), 2D and 3D.

Layouts read as unpacked (file names are config values, ``data.mrbrains.files``; defaults below):

* MRBrainS13 ``TrainingData/<id>/``: ``T1``, ``T1_IR`` (→ modality ``IR``), ``T2_FLAIR``
  (→ ``FLAIR``), ``LabelsForTraining``, each as MetaImage ``.mhd``/``.raw`` or NIfTI
  ``.nii[.gz]``. Subject id ``mrbrains13-<id>``.
* MRBrainS18 ``training/<id>/``: ``pre/T1.nii.gz`` (or ``pre/reg_T1.nii.gz``), ``pre/IR.nii.gz``,
  ``pre/FLAIR.nii.gz``, ``segm.nii.gz``. Subject id ``mrbrains18-<id>``.

``data.root`` is a folder holding either or both release folders (``data.mrbrains.releases``: release →
folder name), or one release folder itself. Every sub-folder of a release folder is a subject;
one that lacks a file is an error, never skipped.

Subjects are split by subject, ``data.subject_split`` = [train, val, test] counts (paper 8/1/3),
shuffled with ``data.split_seed``. Each subject is preprocessed by
:func:`data_modules.volumes.load_subject` (RAS, ``data.spacing`` mm isotropic, [0, 1]
intensities, ``data.structures`` → labels 1..K; cached), then centre-cropped/padded to
``data.size`` (2D: in-plane only; 3D: all axes).

Pairs: moving = ``modalities[0]``, fixed = ``modalities[1]`` of the same subject (and slice).
2D items are axial slices (last axis) whose brain area is at least ``min_brain_fraction`` of the
subject's largest; 3D items are whole volumes. Training: a random subject and slice, with random
affine + elastic transforms (:mod:`data_modules.augment`) on the moving image and, with
``augment.transform_fixed``, on the fixed one. Val/test: ``n_*_images`` slices per subject
spread over its brain (2D; every subject once in 3D) × ``*_transforms_per_image`` seeded
transforms of the moving image, seeds from (``test_seed``, split, subject id, slice, k): the
same pairs in every run and for every method. Batches are those of :mod:`data_modules.phantom`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from fire_lightning.schema import DataConfig

from .crop import fit
from .loading import DeviceAugmentation, Memoised, make_loader, split_suggestion, spread, train_rng, trainer_rank
from .pairs import EvalPairDataset, TrainPairDataset
from .volumes import Preprocessing, brain_slices, find_file, load_subject

log = logging.getLogger(__name__)

RELEASES = ("mrbrains13", "mrbrains18")
MODALITIES = ("T1", "IR", "FLAIR")
DEFAULT_STRUCTURES = {"brainstem": [8], "cerebellum": [7], "WM": [3, 4]}  # FIRE §4.1: BS, Ce, WHM
# Alternative (set in YAML): {CSF: [5, 6], GM: [1, 2], WM: [3, 4]}.


@dataclass
class SubjectFiles:
    id: str
    release: str
    folder: Path
    images: dict  # modality → Path
    labels: Path


def release_folders(root: str | Path, releases: dict, files: dict) -> dict:
    """release → folder of subject folders under ``root`` (see module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data.root is not a folder (expected one holding "
                                f"{' and/or '.join(f'{d}/' for d in releases.values())})")
    found = {r: root / d for r, d in releases.items() if (root / d).is_dir()}
    if found:
        return found
    for r, d in releases.items():  # root is a release folder itself
        if root.name == d:
            return {r: root}
    for r in releases:  # ... renamed: recognise it by its subjects' label files
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                find_file(sub, files[r]["labels"], "labels")
                return {r: root}
            except (FileNotFoundError, KeyError):
                continue
    raise FileNotFoundError(f"{root}: no MRBrainS data (expected {' and/or '.join(f'{d}/' for d in releases.values())} "
                            "with one folder per subject, or one of those folders itself)")


def discover(root, releases: dict, files: dict, modalities) -> tuple[list[SubjectFiles], dict]:
    """All subjects under ``root`` with their files; ``found``: release → {folder, subjects}."""
    subjects, found = [], {}
    for release, folder in release_folders(root, releases, files).items():
        if release not in files:
            raise ValueError(f"data.mrbrains.files has no file names for release '{release}' (has {sorted(files)})")
        pats = files[release]
        ids = []
        for sub in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
            sid = f"{release}-{sub.name}"
            imgs = {}
            for m in modalities:
                if m not in pats:
                    raise ValueError(f"data.mrbrains.files.{release} has no entry for modality '{m}' "
                                     f"(has {sorted(pats)})")
                imgs[m] = find_file(sub, pats[m], f"{m} image")
            labels = find_file(sub, pats["labels"], "label map")
            subjects.append(SubjectFiles(sid, release, sub, imgs, labels))
            ids.append(sid)
        found[release] = {"folder": str(folder), "subjects": ids}
    return subjects, found


def split_subjects(ids: list[str], counts, seed: int, where: str = "") -> dict:
    """Subject-level split: ``counts`` = [train, val, test], shuffled with ``seed``; extras unused."""
    counts = [int(c) for c in counts]
    if len(counts) != 3 or min(counts) < 1:
        raise ValueError(f"data.subject_split must be 3 counts [train, val, test], each >= 1, got {counts}")
    need = sum(counts)
    if len(ids) < need:
        raise ValueError(f"found {len(ids)} subjects{where}; data.subject_split {counts} needs {need}; "
                         f"{split_suggestion(counts, len(ids))}")
    ids = sorted(ids)  # the split depends on the ids and the seed, not on the order they were found in
    order = [ids[i] for i in np.random.default_rng(int(seed)).permutation(len(ids))]
    a, b = counts[0], counts[0] + counts[1]
    return {"train": sorted(order[:a]), "val": sorted(order[a:b]), "test": sorted(order[b:need]),
            "unused": sorted(order[need:])}


@dataclass
class Item:
    """A preprocessed, cropped subject: ``images[m]``, ``labels`` (X, Y, Z); ``slices``: 2D items."""

    id: str
    images: dict
    labels: np.ndarray
    slices: list


class TrainPairs(TrainPairDataset):
    """``samples_per_epoch`` fresh random pairs: random subject, random brain slice (2D)."""

    def __init__(self, items: list[Item], cfg: DataConfig, spacing):
        super().__init__(cfg, spacing)
        self.items = items

    def __getitem__(self, i: int) -> dict:
        rng = train_rng(self.rank)
        item = self.items[int(rng.integers(len(self.items)))]
        z = item.slices[int(rng.integers(len(item.slices)))] if self.n == 2 else None
        rng_b = rng if self.cfg.augment.transform_fixed else None
        return self.pair(item.images, item.labels, z, rng, rng_b,
                         f"train-{item.id}" + (f"-z{z}" if z is not None else ""),
                         device=self.cfg.augment.device)


class FixedPairs(EvalPairDataset):
    """Seeded evaluation pairs: per subject ``n_images`` slices (2D; the volume in 3D) ×
    ``per_image`` transforms of the moving image; the fixed image untransformed."""

    def __init__(self, items: list[Item], cfg: DataConfig, spacing, split: str, n_images: int, per_image: int):
        super().__init__(cfg, spacing, split)
        self.items, self.per_image = items, int(per_image)
        self.images = [(it, z) for it in items for z in (spread(it.slices, n_images) if self.n == 2 else [None])]

    def __len__(self) -> int:
        return len(self.images) * self.per_image

    def __getitem__(self, i: int) -> dict:
        (item, z), k = self.images[i // self.per_image], i % self.per_image
        subject_seed = zlib.crc32(item.id.encode())  # stable across processes (unlike hash())
        rng = self.rng(subject_seed, k, *([] if z is None else [z]))
        ident = f"{self.split}-{item.id}" + (f"-z{z}" if z is not None else "") + f"-t{k:02d}"
        return self.pair(item.images, item.labels, z, rng, None, ident, known=True)


class MRBrainSDataModule(DeviceAugmentation, L.LightningDataModule):
    """Train/val/test loaders of MRBrainS13+18 pairs for the ``data`` config (module docstring)."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        if cfg.root is None:
            raise ValueError("data.root is not set: give the folder holding TrainingData/ and/or training/ "
                             "(e.g. data.root=/path/to/mrbrains)")
        unknown = [m for m in cfg.modalities if m not in MODALITIES]
        if len(cfg.modalities) != 2 or unknown or cfg.modalities[0] == cfg.modalities[1]:
            raise ValueError(f"data.modalities must be two different of {MODALITIES}, got {list(cfg.modalities)}")
        if cfg.spacing <= 0:
            raise ValueError(f"data.spacing must be positive for MRBrainS, got {cfg.spacing}")
        self.cfg = cfg
        structures = {str(k): [int(v) for v in vals] for k, vals in (cfg.structures or DEFAULT_STRUCTURES).items()}
        self.structures = structures
        self.label_names = {i: name for i, name in enumerate(structures, start=1)}
        self.preprocessing = Preprocessing(float(cfg.spacing), tuple(cfg.intensity_percentiles), structures)
        self.subjects, self.found = discover(cfg.root, dict(cfg.mrbrains.releases), dict(cfg.mrbrains.files),
                                             list(cfg.modalities))
        where = " (" + ", ".join(f"{r}: {len(f['subjects'])} in {f['folder']}" for r, f in self.found.items()) + ")"
        self.split = split_subjects([s.id for s in self.subjects], cfg.subject_split, cfg.split_seed, where)
        if self.split["unused"]:
            log.warning("%d subjects are not in data.subject_split and are unused: %s",
                        len(self.split["unused"]), self.split["unused"])
        self._items: dict | None = None

    @property
    def spacing(self) -> tuple:
        return (float(self.cfg.spacing),) * int(self.cfg.spatial_dims)

    def describe(self) -> dict:
        """The subject split and what was found (written as ``data_split.json`` by ``train``)."""
        return {**{k: list(v) for k, v in self.split.items()}, "found": self.found,
                "modalities": {"moving": self.cfg.modalities[0], "fixed": self.cfg.modalities[1]},
                "structures": self.structures, "spacing_mm": float(self.cfg.spacing), "size": list(self.cfg.size)}

    def volume(self, subject: SubjectFiles):
        """The preprocessed (uncropped) volume of one subject, through the cache."""
        return load_subject(subject.images, subject.labels, self.preprocessing, self.cfg.cache_dir)

    def _item(self, subject: SubjectFiles) -> Item:
        vol = self.volume(subject)
        missing = [name for name, values in self.structures.items() if not set(values) & set(vol.source_labels)]
        if missing:  # scoring an absent structure would report it as perfectly matched background
            raise ValueError(f"{subject.labels}: label map has no voxel of {', '.join(missing)} (labels present "
                             f"{vol.source_labels}); check data.structures and data.mrbrains.files "
                             "(e.g. LabelsForTraining, "
                             "not the 3-class LabelsForTesting)")
        n, size = int(self.cfg.spatial_dims), list(self.cfg.size)
        crop = size[:2] if n == 2 else size
        images = {m: fit(vol.images[m], crop) for m in self.cfg.modalities}
        labels, mask = fit(vol.labels, crop), fit(vol.mask, crop)
        slices = brain_slices(mask, float(self.cfg.min_brain_fraction)) if n == 2 else [None]
        if not slices:
            raise ValueError(f"{subject.labels}: no brain inside the {crop} crop; check data.size and the label map")
        return Item(subject.id, images, labels, slices)

    def _prepared(self) -> dict:
        if self._items is None:
            by_id = {s.id: s for s in self.subjects}
            self._items = {k: [self._item(by_id[i]) for i in self.split[k]] for k in ("train", "val", "test")}
            log.info("MRBrainS split: %s", {k: v for k, v in self.split.items() if v})
        return self._items

    def setup(self, stage: str | None = None) -> None:
        self._prepared()

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.cfg, TrainPairs(self._prepared()["train"], self.cfg, self.spacing)
                           .on_rank(trainer_rank(self)))

    def val_dataloader(self) -> DataLoader:
        c = self.cfg
        return make_loader(self.cfg, Memoised(FixedPairs(self._prepared()["val"], c, self.spacing, "val",
                                                       c.n_val_images, c.val_transforms_per_image)))

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.cfg, self.test_dataset())

    def test_dataset(self) -> FixedPairs:
        """The held-out test pairs (seeded, identical in every run)."""
        c = self.cfg
        return FixedPairs(self._prepared()["test"], c, self.spacing, "test", c.n_test_images,
                          c.test_transforms_per_image)

    def check(self) -> list[str]:
        """A report of every subject's files (read and checked, not resampled) and the split."""
        from fire_lightning.io import voxel_sizes

        from .volumes import read_volume

        lines = []
        for release, f in self.found.items():
            lines.append(f"{release}: {len(f['subjects'])} subjects in {f['folder']}")
        for s in self.subjects:
            lines.append(f"{s.id} ({s.folder})")
            for role, path in [*s.images.items(), ("labels", s.labels)]:
                img = read_volume(path, what="label map" if role == "labels" else f"{role} image",
                                  labels=role == "labels")
                sp = "x".join(f"{v:.3g}" for v in voxel_sizes(img.affine))
                extra = ""
                if role == "labels":
                    extra = f" labels {sorted(int(v) for v in np.unique(np.asanyarray(img.dataobj)))}"
                lines.append(f"  {role:7s} {path.name}: shape {tuple(img.shape)}, {sp} mm{extra}")
        for k in ("train", "val", "test", "unused"):
            if self.split[k] or k != "unused":
                lines.append(f"{k}: {', '.join(self.split[k]) or '-'}")
        lines.append(f"scored structures: {self.label_names}")
        return lines

