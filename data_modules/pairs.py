"""The pair datasets' shared base: cutting items out of prepared arrays, making (moving, fixed)
pair dicts from them, and the seeds of the evaluation pairs.

Each dataset (:mod:`.phantom`, :mod:`.mrbrains`, :mod:`.acdc`) prepares its arrays and says which
item and which transforms make pair ``i``; cutting, pairing and seeding are the same for all.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from fire_lightning.schema import DataConfig

from .loading import RankedDraws, transformed_pair

#: mixed into the evaluation pairs' seeds, so that the validation and test pairs of one item differ
SALTS = {"train": 0, "val": 1, "test": 2}


class PairDataset(Dataset):
    """Pairs of the ``data`` config ``cfg`` on a grid of ``spacing`` mm per axis.

    Args:
        cfg: the typed ``data`` section.
        spacing: voxel size per model axis (mm).
        thickness: slices an item spans along the last array axis: None for one slice (2D) or the
            whole volume (3D, ``z`` None); an int for a slab starting at ``z`` (the phantom in 3D).
    """

    def __init__(self, cfg: DataConfig, spacing, thickness: int | None = None):
        self.cfg = cfg
        self.n = int(cfg.spatial_dims)
        self.mod_a, self.mod_b = cfg.modalities[0], cfg.modalities[1]
        self.spacing = tuple(spacing)
        self.extent = [s * e for s, e in zip(self.spacing, cfg.size)]
        self.thickness = thickness

    def cut(self, arr: np.ndarray, z) -> torch.Tensor:
        """Item ``z`` of an ``(X, Y, Z, ...)`` array as ``(1, *S)``: slice ``z`` (2D), the slab
        ``[z, z + thickness)`` (3D slabs) or the whole array (``z`` None)."""
        if z is None:
            block = arr
        elif self.thickness is None:
            block = arr[:, :, z]
        else:
            block = arr[:, :, z : z + self.thickness]
        return torch.from_numpy(np.ascontiguousarray(block)).unsqueeze(0)

    def pair(self, images: dict, labels: np.ndarray, z, rng_a, rng_b, ident: str, known: bool = False,
             device: bool = False) -> dict:
        """The pair of modalities A (moving) and B (fixed) of item ``z`` (:func:`loading.transformed_pair`)."""
        return transformed_pair(self.cut(images[self.mod_a], z), self.cut(images[self.mod_b], z),
                                self.cut(labels, z), self.spacing, self.extent, self.cfg.augment,
                                rng_a, rng_b, ident, known, device)


class TrainPairDataset(RankedDraws, PairDataset):
    """``data.samples_per_epoch`` fresh random training pairs (drawn by the subclass's ``__getitem__``)."""

    def __len__(self) -> int:
        return int(self.cfg.samples_per_epoch)


class EvalPairDataset(PairDataset):
    """Seeded evaluation pairs of one ``split``: the same pairs in every run and for every method."""

    def __init__(self, cfg: DataConfig, spacing, split: str, thickness: int | None = None):
        super().__init__(cfg, spacing, thickness)
        self.split = split
        self.salt = SALTS[split]

    def rng(self, *parts: int) -> np.random.Generator:
        """The generator of one pair, seeded by ``data.test_seed``, the split and ``parts``."""
        return np.random.default_rng([int(self.cfg.test_seed), self.salt, *parts])
