"""LightningDataModule of the embedded brain phantom (DATA.md), 2D and 3D.

The phantom volume (:mod:`data_modules.phantom_volume`) is resampled (in-plane ``spacing``;
1 mm between axial slices in 2D, isotropic ``spacing`` in 3D), centre-padded/cropped to
``size`` and cut along the superior axis into disjoint train / val / test ranges:

    the brain's axial extent is divided into ``blocks`` equal blocks; each block is split
    into [train | gap | val | gap | test] by the ``split`` fractions, with ``gap_mm`` of
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
from torch.utils.data import DataLoader, Dataset

from .loading import DeviceAugmentation, Memoised, make_loader, plain_config, spread, transformed_pair, RankedDraws, train_rng, trainer_rank
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


def _fit(arr: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop or zero-pad the leading ``len(size)`` axes of ``arr`` to ``size``."""
    for ax, target in enumerate(size):
        cur = arr.shape[ax]
        if cur > target:
            start = (cur - target) // 2
            arr = arr.narrow(ax, start, target)
        elif cur < target:
            before = (target - cur) // 2
            pad_shape = list(arr.shape)
            pad_shape[ax] = before
            a = torch.zeros(pad_shape, dtype=arr.dtype)
            pad_shape[ax] = target - cur - before
            b = torch.zeros(pad_shape, dtype=arr.dtype)
            arr = torch.cat([a, arr, b], dim=ax)
    return arr


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


def prepare_phantom(cfg) -> PreparedPhantom:
    """Resample, fit and split the phantom for the ``data`` config ``cfg``."""
    vol = build_phantom(cfg.phantom_seed, cfg.noise_std, cfg.bias_strength)
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
    images = {m: _fit(v, in_plane) for m, v in images.items()}
    labels = _fit(labels, in_plane)

    area = (labels > 0).flatten(0, 1).sum(0).numpy()
    brain = np.nonzero(area >= cfg.min_brain_fraction * area.max())[0]
    z_lo, z_hi = int(brain[0]), int(brain[-1]) + 1
    gap = int(round(cfg.split.gap_mm / spacing[2]))
    fr = cfg.split.fractions
    ranges = split_ranges(z_lo, z_hi, cfg.split.blocks, {"train": fr.train, "val": fr.val, "test": fr.test}, gap)
    return PreparedPhantom({m: v.numpy() for m, v in images.items()}, labels.numpy(), spacing, ranges)


def items_in(ranges, thickness: int) -> list[int]:
    """All item start indices ``z`` with ``[z, z + thickness)`` inside one range."""
    return [z for a, b in ranges for z in range(a, b - thickness + 1)]


class _PhantomPairs(Dataset):
    """Base: cuts items from the prepared arrays and makes (moving, fixed) pairs."""

    def __init__(self, prep: PreparedPhantom, cfg):
        self.prep = prep
        self.cfg = plain_config(cfg)
        self.n = cfg.spatial_dims
        self.thickness = 1 if self.n == 2 else int(cfg.size[2])
        self.mod_a, self.mod_b = cfg.modalities[0], cfg.modalities[1]
        self.spacing = prep.spacing[: self.n]
        self.extent = [s * e for s, e in zip(self.spacing, cfg.size)]

    def _cut(self, arr: np.ndarray, z: int) -> torch.Tensor:
        block = arr[:, :, z : z + self.thickness]
        if self.n == 2:
            block = block[:, :, 0]
        return torch.from_numpy(np.ascontiguousarray(block)).unsqueeze(0)

    def _pair(self, z: int, rng_a, rng_b, ident: str, known: bool = False, device: bool = False) -> dict:
        return transformed_pair(self._cut(self.prep.images[self.mod_a], z), self._cut(self.prep.images[self.mod_b], z),
                                self._cut(self.prep.labels, z), self.spacing, self.extent, self.cfg.augment,
                                rng_a, rng_b, ident, known, device)


class TrainPairs(RankedDraws, _PhantomPairs):
    """``samples_per_epoch`` fresh random pairs from the training ranges."""

    def __init__(self, prep, cfg):
        super().__init__(prep, cfg)
        self.items = items_in(prep.ranges["train"], self.thickness)
        if not self.items:
            raise ValueError("the training range holds no item; lower data.size[2] or change data.split")

    def __len__(self) -> int:
        return int(self.cfg.samples_per_epoch)

    def __getitem__(self, i: int) -> dict:
        # Seeded from torch's RNG: seed_everything(workers=True) makes this reproducible.
        rng = train_rng(self.rank)
        z = self.items[int(rng.integers(len(self.items)))]
        rng_b = rng if self.cfg.augment.transform_fixed else None
        return self._pair(z, rng, rng_b, f"train-z{z}", device=self.cfg.augment.device)


class FixedPairs(_PhantomPairs):
    """Seeded evaluation pairs: ``n_images`` items × ``per_image`` transforms of the moving image."""

    def __init__(self, prep, cfg, split: str, n_images: int, per_image: int):
        super().__init__(prep, cfg)
        self.split = split
        # 3D slabs must not overlap, or two "images" would be mostly the same anatomy.
        starts, last = [], None
        for z in items_in(prep.ranges[split], self.thickness):
            if last is None or z >= last + self.thickness:
                starts.append(z)
                last = z
        self.zs = spread(starts, n_images)
        if not self.zs:
            raise ValueError(f"the {split} range holds no item; change data.split or data.size")
        self.per_image = per_image
        self.salt = {"train": 0, "val": 1, "test": 2}[split]

    def __len__(self) -> int:
        return len(self.zs) * self.per_image

    def __getitem__(self, i: int) -> dict:
        z, k = self.zs[i // self.per_image], i % self.per_image
        rng = np.random.default_rng([int(self.cfg.test_seed), self.salt, z, k])
        return self._pair(z, rng, None, f"{self.split}-z{z}-t{k:02d}", known=True)


class PhantomDataModule(DeviceAugmentation, L.LightningDataModule):
    """Train/val/test loaders of phantom pairs for the ``data`` config (see module docstring)."""

    label_names = LABEL_NAMES

    def __init__(self, cfg):
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
            log.info("phantom ranges (slice indices): %s", self.prep.ranges)
        return self.prep

    def setup(self, stage: str | None = None) -> None:
        self._prepared()

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.cfg, TrainPairs(self._prepared(), self.cfg).on_rank(trainer_rank(self)))

    def val_dataloader(self) -> DataLoader:
        c = self.cfg
        return make_loader(self.cfg, Memoised(FixedPairs(self._prepared(), c, "val", c.n_val_images, c.val_transforms_per_image)))

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.cfg, self.test_dataset())

    def test_dataset(self) -> FixedPairs:
        """The held-out test pairs (seeded, identical in every run)."""
        c = self.cfg
        return FixedPairs(self._prepared(), c, "test", c.n_test_images, c.test_transforms_per_image)
