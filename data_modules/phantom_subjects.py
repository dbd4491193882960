"""Phantom pairs drawn from synthetic subjects (``data.phantom.subjects.train > 0``).

Instead of one brain cut into slabs (:mod:`data_modules.phantom`), every subject is the whole phantom
warped by its own seeded deformation (:mod:`data_modules.subjects`); the subjects of training,
validation and test come from disjoint seed ranges. An item is a whole volume (3D, fitted to
``data.size``) or an axial slice inside the brain (2D). Pairs are intra-subject: modality A of a
subject → modality B of the same subject, with the pair transforms of :mod:`data_modules.augment`.

* Training: a random training subject (and, in 2D, a random brain slice of it), fresh transforms. With
  ``subjects.held_out=split`` (2D): subjects deformed in-plane only, slices of the split's training ranges
  only; validation and test pairs are then the split's (:mod:`data_modules.phantom`), not subjects.
* Val / test: ``n`` held-out subjects (``subjects.val`` / ``subjects.test``); in 2D each evaluation
  item is a (subject, slice) pair, the ``n_*_images`` slices spread over the brain and dealt to the
  subjects in turn; each item paired ``*_transforms_per_image`` times with a seeded transform.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fire_lightning.schema import DataConfig

from .crop import fit
from .loading import items_in, spread, train_rng
from .pairs import EvalPairDataset, TrainPairDataset
from .subjects import SubjectSettings, make_subject, subject_seed
from .volumes import brain_slices

#: subjects a dataset keeps in memory (per loader worker); beyond it a subject is made again (~0.3 s at 4 mm)
MAX_CACHED_SUBJECTS = 64


class Subjects:
    """The subjects of one split, made on first use and kept (up to :data:`MAX_CACHED_SUBJECTS`).

    Args:
        images, labels: the phantom's arrays ``(X, Y, Z)`` on the model's grid; ``spacing`` their voxel size.
        split, count: the split's first ``count`` subjects (:func:`subjects.subject_seed`).
    """

    def __init__(self, images: dict, labels: np.ndarray, spacing, split: str, count: int,
                 settings: SubjectSettings):
        if count < 1:
            raise ValueError(f"data.phantom.subjects.{split} must be >= 1, got {count}")
        self.images, self.labels, self.spacing = images, labels, tuple(spacing)
        self.seeds = [subject_seed(split, i) for i in range(count)]
        self.settings = settings
        self.cache: OrderedDict[int, tuple] = OrderedDict()

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> tuple[dict, np.ndarray]:
        seed = self.seeds[i]
        if seed not in self.cache:
            self.cache[seed] = make_subject(self.images, self.labels, self.spacing, seed, self.settings)
            if len(self.cache) > MAX_CACHED_SUBJECTS:
                self.cache.popitem(last=False)
        return self.cache[seed]


def subject_settings(cfg: DataConfig) -> SubjectSettings:
    s = cfg.phantom.subjects
    return SubjectSettings(int(s.control_points), float(s.max_mm), float(s.scale), s.held_out == "split")


def whole_volume(prep, cfg: DataConfig) -> tuple[dict, np.ndarray]:
    """The prepared phantom's arrays, in 3D fitted to ``data.size`` on every axis (a whole-volume item)."""
    if int(cfg.spatial_dims) == 2:
        return prep.images, prep.labels
    size = list(cfg.size)
    return {m: fit(v, size) for m, v in prep.images.items()}, fit(prep.labels, size)


class SubjectTrainPairs(TrainPairDataset):
    """``samples_per_epoch`` fresh random pairs of the training subjects."""

    def __init__(self, prep, cfg: DataConfig):
        two_d = int(cfg.spatial_dims) == 2
        super().__init__(cfg, prep.spacing[: int(cfg.spatial_dims)], None)
        images, labels = whole_volume(prep, cfg)
        self.subjects = Subjects(images, labels, prep.spacing, "train", int(cfg.phantom.subjects.train),
                                 subject_settings(cfg))
        self.slices = brain_slices(labels > 0, cfg.min_brain_fraction) if two_d else [None]
        if cfg.phantom.subjects.held_out == "split":  # the split's training slices only (in-plane subjects)
            allowed = set(items_in(prep.ranges["train"], 1))
            self.slices = [z for z in self.slices if z in allowed]

    def __getitem__(self, i: int) -> dict:
        rng = train_rng(self.rank)  # seeded from torch's RNG (seed_everything(workers=True))
        s = int(rng.integers(len(self.subjects)))
        z = self.slices[int(rng.integers(len(self.slices)))]
        images, labels = self.subjects[s]
        rng_b = rng if self.cfg.augment.transform_fixed else None
        ident = f"train-s{s}" + ("" if z is None else f"-z{z}")
        return self.pair(images, labels, z, rng, rng_b, ident, device=self.cfg.augment.device)


class SubjectFixedPairs(EvalPairDataset):
    """Seeded evaluation pairs of the held-out subjects of ``split`` (see the module docstring)."""

    def __init__(self, prep, cfg: DataConfig, split: str, n_images: int, per_image: int):
        super().__init__(cfg, prep.spacing[: int(cfg.spatial_dims)], split, None)
        images, labels = whole_volume(prep, cfg)
        count = int(getattr(cfg.phantom.subjects, split))
        self.subjects = Subjects(images, labels, prep.spacing, split, count, subject_settings(cfg))
        if int(cfg.spatial_dims) == 2:
            zs = spread(brain_slices(labels > 0, cfg.min_brain_fraction), n_images)
            self.items = [(j % count, z) for j, z in enumerate(zs)]
        else:
            self.items = [(s, None) for s in range(count)]
        self.per_image = int(per_image)

    def __len__(self) -> int:
        return len(self.items) * self.per_image

    def __getitem__(self, i: int) -> dict:
        (s, z), k = self.items[i // self.per_image], i % self.per_image
        images, labels = self.subjects[s]
        where = f"s{s}" + ("" if z is None else f"-z{z}")
        return self.pair(images, labels, z, self.rng(s, 0 if z is None else z + 1, k), None,
                         f"{self.split}-{where}-t{k:02d}", known=True)
