"""Phantom pairs for the shift benchmark (``fire benchmark RUN --shift``): one factor at a time pushed
from mild to beyond what the model was trained on.

Each pair is drawn as a test pair is (the moving image of a test-range slice transformed by a
random affine + elastic transform from ``data.augment``, the fixed image untransformed, the
transform known), and then one factor is set to the level:

* ``elastic_mm``: the elastic control points' largest displacement (``elastic_max_mm``);
* ``elastic_spacing_mm``: the control grid's spacing (its displacement capped at
  :data:`ELASTIC_RATIO` × the spacing, which keeps a cubic B-spline transform one-to-one);
* ``rotation_deg``: the rotation's size, its sign drawn;
* ``scale_change``: the change of the scaled axis (``change_range``), ± drawn;
* ``translation``: the shift per axis as a fraction of the extent, signs drawn;
* ``resolution_mm``: the moving image seen at a coarser voxel size (averaged over blocks of that
  size, then interpolated back onto the model's grid, which stays fixed);
* ``contrast``: the moving image's modality (``T1``, ``IR``) or a power (gamma) of T1's intensities;
* ``slice``: where in the head the slice lies, inferior to superior within the test ranges, and
  just beyond the brain extent that training slices are drawn from (the ``edge`` levels).

Anatomy: test-range slices only (never trained on). Seeds: ``[test_seed, SALT, factor, level,
pair]``, a salt no other split uses, so the pairs differ from the test pairs too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fire_lightning.schema import DataConfig

from .loading import spread, transformed_pair
from .pairs import PairDataset
from .phantom import PreparedPhantom, items_in, prepare_phantom

#: the seeds' salt (train, val and test pairs use 0, 1, 2)
SALT = 3
#: elastic displacement / control spacing where a level sets the spacing (the training protocol's ratio)
ELASTIC_RATIO = 0.37
#: slices per level and transforms per slice
SLICES, TRANSFORMS = 6, 2


@dataclass(frozen=True)
class Factor:
    """One factor of the shift benchmark: its ``levels`` (numbers or names) and the training value that
    bounds the range seen in training (a level is inside it when :meth:`inside`)."""

    name: str
    levels: tuple
    label: str

    def inside(self, level, cfg) -> bool:
        """Whether ``level`` lies within what training pairs of the ``data`` config ``cfg`` cover."""
        a = cfg.augment
        if self.name == "elastic_mm":
            return level <= a.elastic_max_mm
        if self.name == "elastic_spacing_mm":
            return level >= control_spacing_mm(cfg, a.elastic_control_points) - 1e-6
        if self.name == "rotation_deg":
            return level <= a.rotate_deg
        if self.name == "scale_change":
            return level <= a.change_range[1]
        if self.name == "translation":
            return level <= a.translate
        if self.name == "resolution_mm":
            return level <= cfg.spacing
        if self.name == "contrast":
            return level == cfg.modalities[0]
        return not str(level).startswith("edge")  # slice


FACTORS = (
    Factor("elastic_mm", (0.0, 5.0, 10.0, 15.0), "elastic displacement (mm)"),
    Factor("elastic_spacing_mm", (48.0, 31.0, 22.0, 17.0), "elastic control spacing (mm)"),
    Factor("rotation_deg", (0.0, 10.0, 20.0, 30.0), "rotation (°)"),
    Factor("scale_change", (0.0, 0.2, 0.35, 0.5, 0.65), "scale change of one axis"),
    Factor("translation", (0.0, 0.05, 0.1, 0.15), "translation (fraction of the extent)"),
    Factor("resolution_mm", (3.0, 4.5, 6.0, 9.0), "moving image's resolution (mm)"),
    Factor("contrast", ("T1", "T1^0.6", "T1^1.6", "IR"), "moving image's contrast"),
    Factor("slice", ("edge-inferior", "inferior", "middle", "superior", "edge-superior"), "slice level"),
)


def control_spacing_mm(cfg, control_points: int) -> float:
    """The elastic control grid's spacing (mm) along the longest in-plane axis: TorchIO spreads
    ``control_points - 3`` intervals over the image."""
    return max(s * float(cfg.spacing) for s in cfg.size[:2]) / (int(control_points) - 3)


def control_points_for(cfg, spacing_mm: float) -> int:
    """The number of control points whose grid spacing is closest to ``spacing_mm``."""
    extent = max(s * float(cfg.spacing) for s in cfg.size[:2])
    return max(5, int(round(extent / spacing_mm)) + 3)


def _adjust(factor: str, level, cfg):
    """``(params, rng) -> params`` that sets ``factor`` of a drawn transform to ``level``; None when the
    factor is not part of the transform."""
    n = cfg.spatial_dims
    if factor == "rotation_deg":
        def rotation(p, rng):
            return dataclasses.replace(p, degrees=(0.0, 0.0, (1.0 if rng.random() < 0.5 else -1.0) * level))
        return rotation
    if factor == "scale_change":
        def scale(p, rng):
            scales = [1.0] * 3
            axis = int(rng.integers(n))
            scales[axis] = 1.0 + level if rng.random() < 0.5 else 1.0 - level
            return dataclasses.replace(p, scales=tuple(scales))
        return scale
    if factor == "translation":
        extent = [s * float(cfg.spacing) for s in cfg.size]

        def translation(p, rng):
            t = [(1.0 if rng.random() < 0.5 else -1.0) * level * e for e in extent] + [0.0] * (3 - n)
            return dataclasses.replace(p, translation_mm=tuple(t))
        return translation
    return None


def _augment_for(factor: str, level, augment):
    """The ``data.augment`` settings a level draws from (the elastic factors change the draw itself)."""
    if factor == "elastic_mm":
        return dataclasses.replace(augment, elastic_max_mm=float(level))
    return augment


class ShiftPairs(PairDataset):
    """The shift benchmark's pairs: for every factor and level, ``SLICES`` × ``TRANSFORMS`` pairs with
    known transforms; ``levels`` lists ``(factor, level)`` per pair, in order. Items are pair dicts as the
    test pairs' (``id``: ``shift/<factor>/<level>/z<z>-t<k>``)."""

    def __init__(self, cfg: DataConfig, factors=FACTORS):
        modalities = list(dict.fromkeys([*cfg.modalities, "IR"]))
        self.prep: PreparedPhantom = prepare_phantom(dataclasses.replace(cfg, modalities=modalities))
        super().__init__(cfg, self.prep.spacing[: cfg.spatial_dims])
        test = items_in(self.prep.ranges["test"], 1)
        self.items: list[tuple] = []
        for fi, f in enumerate(factors):
            for li, level in enumerate(f.levels):
                zs = self._slices(level) if f.name == "slice" else spread(test, SLICES)
                for z in zs:
                    for k in range(TRANSFORMS):
                        self.items.append((f.name, level, fi, li, int(z), k))
        if cfg.spatial_dims != 2:
            raise ValueError("the shift benchmark's pairs are 2D phantom slices (data.spatial_dims=2)")

    def _slices(self, level: str) -> list[int]:
        """The slices of a ``slice`` level: a fifth of the test slices, inferior to superior, or the
        ``SLICES`` slices just beyond the brain extent that the splits divide (``edge-*``)."""
        ranges = self.prep.ranges
        lo = min(a for r in ranges.values() for a, _ in r)
        hi = max(b for r in ranges.values() for _, b in r)
        if level == "edge-inferior":
            return list(range(max(0, lo - SLICES), lo))
        if level == "edge-superior":
            return list(range(hi, min(self.prep.labels.shape[2], hi + SLICES)))
        test = items_in(ranges["test"], 1)
        third = {"inferior": 0, "middle": 1, "superior": 2}[level]
        part = np.array_split(np.array(test), 3)[third].tolist()
        return spread(part, SLICES)

    @property
    def levels(self) -> list[tuple[str, object]]:
        return [(f, level) for f, level, *_ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        factor, level, fi, li, z, k = self.items[i]
        cfg, prep = self.cfg, self.prep
        rng = np.random.default_rng([int(cfg.test_seed), SALT, fi, li, z, k])
        augment = _augment_for(factor, level, cfg.augment)
        if factor == "elastic_spacing_mm":
            points = control_points_for(cfg, level)
            augment = dataclasses.replace(augment, elastic_control_points=points, elastic_max_mm=min(
                float(cfg.augment.elastic_max_mm), ELASTIC_RATIO * control_spacing_mm(cfg, points)))
        source = "IR" if (factor == "contrast" and level == "IR") else cfg.modalities[0]
        pair = transformed_pair(self.cut(prep.images[source], z), self.cut(prep.images[cfg.modalities[1]], z),
                                self.cut(prep.labels, z),
                                self.spacing, self.extent, augment, rng, None,
                                f"shift/{factor}/{level}/z{z}-t{k}", known=True, adjust=_adjust(factor, level, cfg))
        if factor == "resolution_mm" and level > cfg.spacing:
            pair["moving"] = coarser(pair["moving"], level / float(cfg.spacing))
        if factor == "contrast" and str(level).startswith("T1^"):
            gamma = float(str(level)[3:])
            pair["moving"] = ((pair["moving"] + 1) / 2).clamp(0, 1).pow(gamma) * 2 - 1
        return pair


def coarser(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``image (1, *S)`` as seen with voxels ``factor`` times larger: averaged onto the coarser grid,
    then linearly interpolated back onto ``S``."""
    size = image.shape[1:]
    small = [max(1, int(round(s / factor))) for s in size]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    low = F.interpolate(image[None], size=small, mode="area")
    return F.interpolate(low, size=size, mode=mode, align_corners=False)[0]
