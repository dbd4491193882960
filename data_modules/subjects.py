"""Synthetic subjects: many distinct anatomies from the one embedded template.

The phantom is one brain (the MNI152 template and the modalities synthesised from its tissue maps),
so a 3D benchmark on it could only cut one volume into slabs. A *subject* here is that whole
phantom warped by a large, smooth, seeded random deformation (a B-spline on a coarse control grid)
and a random scale per axis: every modality and the labels of one subject go through the same
transform (images linearly, labels by nearest neighbour), so a subject's T1 and FLAIR-like image
stay aligned, as one patient's scans are after the scanner's own registration.

**Held out in what sense.** All subjects share the template's anatomy up to a smooth deformation;
a test subject is not a different brain, it is a different warp of the same brain. What is held
out is the *seed*: the subjects of the three splits come from disjoint seed ranges
(:data:`SPLIT_SEED_BASE`), so no test (or validation) subject, and no transform of one, is ever
drawn in training. :func:`subject_seed` is the only way seeds are made, and a test checks the
ranges cannot meet.

Pairs made from subjects are intra-subject, as in MRBrainS (one subject's modality A → the same
subject's modality B), each with its own random affine + elastic pair transform on top
(:mod:`data_modules.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .augment import AugmentParams, apply_params

#: first seed of each split's subjects; a split holds at most SPLIT_SIZE subjects
SPLIT_SEED_BASE = {"train": 0, "val": 1_000_000, "test": 2_000_000}
SPLIT_SIZE = 1_000_000


@dataclass(frozen=True)
class SubjectSettings:
    """How different the subjects are: the B-spline's ``control_points`` per axis and its largest
    displacement ``max_mm``; each axis scaled by ``1 + U(-scale, scale)``; ``in_plane``: only along the
    first two axes, so that each axial slice of a subject is the same slice of the template, deformed in its
    plane (what 2D training on subjects needs to keep the one brain's test slices out of training)."""

    control_points: int = 5
    max_mm: float = 8.0
    scale: float = 0.08
    in_plane: bool = False  # no displacement or scale along the last (superior) axis: slice z stays slice z


def subject_seed(split: str, index: int) -> int:
    """The seed of subject ``index`` of ``split`` (train / val / test): disjoint ranges per split."""
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEED_BASE)}, got {split!r}")
    if not 0 <= index < SPLIT_SIZE:
        raise ValueError(f"subject index must be in [0, {SPLIT_SIZE}), got {index}")
    return SPLIT_SEED_BASE[split] + int(index)


def subject_params(seed: int, settings: SubjectSettings = SubjectSettings()) -> AugmentParams:
    """The deformation of subject ``seed``: per-axis scales and B-spline control-point displacements
    ``(k, k, k, 3)`` in mm, the border control points fixed (the head stays inside the field of view)."""
    rng = np.random.default_rng([seed, 0x5B7])  # the subject stream, apart from any pair transform's
    k = int(settings.control_points)
    cp = rng.uniform(-1, 1, size=(k, k, k, 3)) * settings.max_mm
    for ax in range(3):  # fixed borders
        idx = [slice(None)] * 4
        idx[ax] = [0, k - 1]
        cp[tuple(idx)] = 0
    scales = tuple(1.0 + rng.uniform(-settings.scale, settings.scale) for _ in range(3))
    if settings.in_plane:
        cp[..., 2] = 0
        scales = (*scales[:2], 1.0)
    return AugmentParams(scales, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), cp, (settings.max_mm,) * 3)


def make_subject(images: dict, labels: np.ndarray, spacing, seed: int,
                 settings: SubjectSettings = SubjectSettings()) -> tuple[dict, np.ndarray]:
    """Subject ``seed`` of the phantom arrays.

    Args:
        images: modality → ``(X, Y, Z)`` float array, background 0.
        labels: ``(X, Y, Z)`` integer labels.
        spacing: voxel size in mm per axis (3 values).

    Returns:
        ``(images, labels)``: the same keys, shapes and dtypes, every array warped by one transform.
    """
    params = subject_params(seed, settings)
    lab = torch.from_numpy(np.ascontiguousarray(labels)).unsqueeze(0)
    out_images, out_labels = {}, None
    for name, arr in images.items():
        img, warped = apply_params(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).unsqueeze(0),
                                   lab if out_labels is None else None, spacing, params)
        out_images[name] = img[0].numpy().astype(arr.dtype, copy=False)
        if out_labels is None:
            out_labels = warped[0].numpy().astype(labels.dtype, copy=False)
    return out_images, out_labels
