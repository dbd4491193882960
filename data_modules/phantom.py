"""LightningDataModule of the embedded brain phantom, 2D and 3D.

The phantom volume (:mod:`data_modules.phantom_volume`) is resampled (in-plane ``spacing``;
1 mm between axial slices in 2D, isotropic ``spacing`` in 3D), centre-padded/cropped to
``size`` and cut along the superior axis into disjoint train / val / test ranges:

    the brain's axial extent is divided into ``blocks`` equal blocks; each block is split
    into [train | gap | val | gap | test] by the ``data.phantom.split`` fractions, with ``gap_mm`` of
    anatomy dropped between neighbouring ranges,

so test anatomy is never seen in training, and every split samples the whole brain. An item
is one axial slice (2D) or a slab of ``size[2]`` slices (3D) lying inside one range.

* Training pairs: a random item; moving = modality A, fixed = modality B of the same anatomy,
  each with its own random affine + elastic transform (:mod:`data_modules.augment`), drawn
  fresh every time.
* Val / test pairs: ``n_*_images`` items spread over the range, each paired
  ``*_transforms_per_image`` times with a seeded transform of the moving image; the fixed
  image is untransformed. The seeds depend only on ``test_seed`` and the pair's index, so the
  pairs are identical across runs and across methods.

Batches are dicts: ``moving``, ``fixed`` ``(B, 1, *S)`` float in [-1, 1];
``moving_label``, ``fixed_label`` ``(B, 1, *S)`` int64 (0 bg, 1 CSF, 2 GM, 3 WM); ``id`` (str).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fire_lightning.config import held_out_by_subject
from fire_lightning.schema import DataConfig

from .crop import fit_tensor
from .loading import DeviceAugmentation, Memoised, items_in, make_loader, spread, train_rng, trainer_rank
from .pairs import EvalPairDataset, TrainPairDataset
from .phantom_subjects import SubjectFixedPairs, SubjectTrainPairs
from .phantom_volume import LABEL_NAMES, MODALITIES, build_phantom

log = logging.getLogger(__name__)


@dataclass
class PreparedPhantom:
    """Resampled arrays: ``images[m]`` (X, Y, Z) float32 in [0, 1]; ``labels`` (X, Y, Z) int64;
    ``spacing`` per array axis in mm; ``ranges``: split → list of (z_start, z_stop)."""

    images: dict
    labels: np.ndarray
    spacing: tuple
    ranges: dict


def split_ranges(z_lo: int, z_hi: int, blocks: int, fractions: dict, gap: int) -> dict:
    """Disjoint [start, stop) ranges per split inside [z_lo, z_hi) (see module docstring).

    ``gap`` slices separate every two neighbouring ranges, across block boundaries too.
    """
    ranges = {"train": [], "val": [], "test": []}
    order = ("train", "val", "test")
    total = sum(fractions[k] for k in order)
    # Every block ends with a gap except the last, so the next block's train range never
    # touches this block's test range.
    span = (z_hi - z_lo) + gap
    edges = [z_lo + round(i * span / blocks) for i in range(blocks + 1)]
    for b0, b1 in zip(edges[:-1], edges[1:]):
        b1 -= gap  # the trailing gap
        usable = (b1 - b0) - gap * (len(order) - 1)
        if usable < len(order):
            raise ValueError(f"block [{b0}, {b1}) is too thin for the splits with gap {gap}; use fewer blocks")
        start = b0
        for i, k in enumerate(order):
            length = max(1, int(round(usable * fractions[k] / total))) if i < len(order) - 1 else b1 - start
            ranges[k].append((int(start), int(start + length)))
            start += length + gap
    return ranges


def prepare_phantom(cfg: DataConfig) -> PreparedPhantom:
    """Resample, fit and split the phantom for the ``data`` config ``cfg``."""
    ph = cfg.phantom
    vol = build_phantom(ph.seed, ph.noise_std, ph.bias_strength)
    n = cfg.spatial_dims
    s = float(cfg.spacing)
    spacing = (s, s, 1.0) if n == 2 else (s, s, s)
    shape_1mm = vol.labels.shape
    new_shape = [max(1, int(round(d / sp))) for d, sp in zip(shape_1mm, spacing)]

    def resample(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        lead = t.shape[:-3]
        t = t.reshape(-1, 1, *shape_1mm)
        t = F.interpolate(t, size=new_shape, mode="area")
        return t.reshape(*lead, *new_shape)

    images = {m: resample(vol.images[m]) for m in cfg.modalities}
    tissue = resample(vol.tissue)
    mask = resample(vol.mask.astype(np.float32)) > 0.5
    labels = torch.where(mask, tissue.argmax(0) + 1, torch.zeros_like(mask, dtype=torch.long))

    in_plane = list(cfg.size[:2])
    images = {m: fit_tensor(v, in_plane) for m, v in images.items()}
    labels = fit_tensor(labels, in_plane)

    area = (labels > 0).flatten(0, 1).sum(0).numpy()
    brain = np.nonzero(area >= cfg.min_brain_fraction * area.max())[0]
    z_lo, z_hi = int(brain[0]), int(brain[-1]) + 1
    split = ph.split
    gap = int(round(split.gap_mm / spacing[2]))
    fr = split.fractions
    ranges = split_ranges(z_lo, z_hi, split.blocks, {"train": fr.train, "val": fr.val, "test": fr.test}, gap)
    return PreparedPhantom({m: v.numpy() for m, v in images.items()}, labels.numpy(), spacing, ranges)


def item_thickness(cfg: DataConfig) -> int | None:
    """Slices of one item along the superior axis: None for one slice (2D), the slab's ``size[2]`` (3D)."""
    return None if int(cfg.spatial_dims) == 2 else int(cfg.size[2])


class TrainPairs(TrainPairDataset):
    """``samples_per_epoch`` fresh random pairs from the training ranges."""

    def __init__(self, prep: PreparedPhantom, cfg: DataConfig):
        super().__init__(cfg, prep.spacing[: int(cfg.spatial_dims)], item_thickness(cfg))
        self.prep = prep
        self.items = items_in(prep.ranges["train"], self.thickness or 1)
        if not self.items:
            raise ValueError("the training range holds no item; lower data.size[2] or change data.phantom.split")

    def __getitem__(self, i: int) -> dict:
        # Seeded from torch's RNG: seed_everything(workers=True) makes this reproducible.
        rng = train_rng(self.rank)
        z = self.items[int(rng.integers(len(self.items)))]
        rng_b = rng if self.cfg.augment.transform_fixed else None
        return self.pair(self.prep.images, self.prep.labels, z, rng, rng_b, f"train-z{z}",
                         device=self.cfg.augment.device)


class FixedPairs(EvalPairDataset):
    """Seeded evaluation pairs: ``n_images`` items × ``per_image`` transforms of the moving image."""

    def __init__(self, prep: PreparedPhantom, cfg: DataConfig, split: str, n_images: int, per_image: int):
        super().__init__(cfg, prep.spacing[: int(cfg.spatial_dims)], split, item_thickness(cfg))
        self.prep = prep
        # 3D slabs must not overlap, or two "images" would be mostly the same anatomy.
        thickness = self.thickness or 1
        starts, last = [], None
        for z in items_in(prep.ranges[split], thickness):
            if last is None or z >= last + thickness:
                starts.append(z)
                last = z
        self.zs = spread(starts, n_images)
        if not self.zs:
            raise ValueError(f"the {split} range holds no item; change data.phantom.split or data.size")
        self.per_image = per_image

    def __len__(self) -> int:
        return len(self.zs) * self.per_image

    def __getitem__(self, i: int) -> dict:
        z, k = self.zs[i // self.per_image], i % self.per_image
        return self.pair(self.prep.images, self.prep.labels, z, self.rng(z, k), None, f"{self.split}-z{z}-t{k:02d}",
                         known=True)


class PhantomDataModule(DeviceAugmentation, L.LightningDataModule):
    """Train/val/test loaders of phantom pairs for the ``data`` config (see module docstring)."""

    label_names = LABEL_NAMES

    def __init__(self, cfg: DataConfig):
        super().__init__()
        unknown = [m for m in cfg.modalities if m not in MODALITIES]
        if len(cfg.modalities) != 2 or unknown:
            raise ValueError(f"data.modalities must be two of {MODALITIES}, got {list(cfg.modalities)}")
        self.cfg = cfg
        self.prep: PreparedPhantom | None = None

    @property
    def spacing(self) -> tuple:
        return tuple(self._prepared().spacing[: self.cfg.spatial_dims])

    def _prepared(self) -> PreparedPhantom:
        if self.prep is None:
            self.prep = prepare_phantom(self.cfg)
            sub = self.cfg.phantom.subjects
            if self.held_out_subjects:
                log.info("phantom subjects: %d train, %d val, %d test (disjoint seed ranges)", sub.train, sub.val,
                         sub.test)
            else:
                if self.from_subjects:
                    log.info("phantom subjects: %d train (deformed in-plane, the split's training slices only)",
                             sub.train)
                log.info("phantom ranges (slice indices): %s", self.prep.ranges)
        return self.prep

    def setup(self, stage: str | None = None) -> None:
        self._prepared()

    @property
    def from_subjects(self) -> bool:
        """Training pairs from synthetic subjects (data.phantom.subjects.train > 0) instead of the one brain's
        split."""
        return int(self.cfg.phantom.subjects.train) > 0

    @property
    def held_out_subjects(self) -> bool:
        """Validation and test pairs from held-out subjects (not the split's: ``subjects.held_out``)."""
        return held_out_by_subject(self.cfg)

    def train_dataloader(self) -> DataLoader:
        pairs = (SubjectTrainPairs if self.from_subjects else TrainPairs)(self._prepared(), self.cfg)
        return make_loader(self.cfg, pairs.on_rank(trainer_rank(self)))

    def val_dataloader(self) -> DataLoader:
        c = self.cfg
        pairs = SubjectFixedPairs if self.held_out_subjects else FixedPairs
        return make_loader(self.cfg, Memoised(pairs(self._prepared(), c, "val", c.n_val_images,
                                                    c.val_transforms_per_image)))

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.cfg, self.test_dataset())

    def test_dataset(self) -> FixedPairs | SubjectFixedPairs:
        """The held-out test pairs (seeded, identical in every run)."""
        c = self.cfg
        pairs = SubjectFixedPairs if self.held_out_subjects else FixedPairs
        return pairs(self._prepared(), c, "test", c.n_test_images, c.test_transforms_per_image)
