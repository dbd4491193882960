"""Image series (e.g. a 4D cardiac cine): reading, preprocessing and caching, as
:mod:`data_modules.volumes` does for one subject's volumes.

:func:`load_series`: one 4D image (X, Y, Z, T) plus the label maps of some of its frames, with the
steps of :func:`volumes.preprocess`; the intensity percentiles are measured over all frames together
(one normalisation for the series), and every frame and label map is resampled onto one grid.
Cached under ``<cache_dir>/series/`` like the volumes (``<cache_dir>/volumes/``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from fire_lightning.io import describe_error, load_nifti, voxel_sizes

from .volumes import (
    CACHE_VERSION,
    Preprocessing,
    atomic_savez,
    cache_root,
    map_labels,
    read_volume,
    source_stamps,
    target_spacing,
)

log = logging.getLogger(__name__)


@dataclass
class Series:
    """A preprocessed image series (e.g. a cardiac cine): ``images`` (X, Y, Z, T) float32 in
    [0, 1] with one intensity normalisation for all frames; ``labels`` frame index (0-based) →
    (X, Y, Z) int16 in 0..K for the frames that have a label map; ``spacing`` mm per axis."""

    images: np.ndarray
    labels: dict
    spacing: tuple
    source_labels: list = field(default_factory=list)  # label values present in the source files


def preprocess_series(image: Path, labels: dict, settings: Preprocessing) -> Series:
    """Read, check, reorient, resample and normalise a 4D series and the label maps of some of
    its frames (``labels``: 0-based frame index → file on the series' grid); the steps of
    :func:`preprocess`, with the intensity percentiles measured over all frames together and
    every frame resampled onto the same grid (no cache)."""
    import torchio as tio

    src = load_nifti(image, "image series", allow_4d=True)
    if len(src.shape) != 4 or src.shape[3] < 2:
        raise ValueError(f"{image}: image series has shape {tuple(src.shape)}; expected 4D (X, Y, Z, T) with T >= 2")
    shape3, ref_sp = tuple(src.shape[:3]), voxel_sizes(src.affine)
    n_frames = src.shape[3]
    raw_labels = {}
    for t, path in sorted(labels.items()):
        if not 0 <= int(t) < n_frames:
            raise ValueError(f"{path}: label map of frame {int(t) + 1}, but {image} has {n_frames} frames")
        lab = read_volume(path, what="label map", labels=True)
        if tuple(lab.shape) != shape3 or not np.allclose(voxel_sizes(lab.affine), ref_sp, rtol=1e-3, atol=1e-4):
            raise ValueError(f"{path}: label map has shape {tuple(lab.shape)} and voxel size "
                             f"{np.round(voxel_sizes(lab.affine), 4).tolist()} mm but {image} has {shape3} and "
                             f"{np.round(ref_sp, 4).tolist()} mm; expected one grid")
        raw_labels[int(t)] = lab

    def canonical(arr, affine):
        if not settings.reorient:
            return arr, affine
        img = nib.as_closest_canonical(nib.Nifti1Image(arr, affine))
        return np.asanyarray(img.dataobj), img.affine

    arr, aff = canonical(np.asanyarray(src.dataobj).astype(np.float32), src.affine)
    lo_v, hi_v = float(arr.min()), float(arr.max())
    if hi_v == lo_v:
        raise ValueError(f"{image}: image series is constant (every voxel {lo_v:g}); expected an MR image")
    lo, hi = np.percentile(arr[arr > lo_v], list(settings.percentiles))
    if not hi > lo:
        raise ValueError(f"{image}: image series has no intensity range between its {settings.percentiles} "
                         "foreground percentiles; expected an MR image")
    target = target_spacing(voxel_sizes(aff), settings.spacing)
    subject = {"img": tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 0, 1, 2))),
                                      affine=aff)}
    frames = sorted(raw_labels)
    present: set = set()
    if frames:
        lab_arrs = []
        for t in frames:
            la, la_aff = canonical(np.asanyarray(raw_labels[t].dataobj).astype(np.int16), raw_labels[t].affine)
            if not np.allclose(la_aff, aff, atol=1e-3):
                raise ValueError(f"{labels[t]}: label map's voxel-to-world affine differs from {image}'s; "
                                 "expected one grid")
            present |= set(int(v) for v in np.unique(la))
            lab_arrs.append(la)
        subject["labels"] = tio.LabelMap(tensor=torch.from_numpy(np.stack(lab_arrs)), affine=aff)
    out = tio.Resample(target, image_interpolation="linear", label_interpolation="nearest")(tio.Subject(**subject))
    images = out["img"].data.numpy().transpose(1, 2, 3, 0)
    images = np.clip((images - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    mapped = {}
    if frames:
        rs = out["labels"].data.numpy()
        mapped = {t: map_labels(rs[i], settings.structures) for i, t in enumerate(frames)}
    return Series(images, mapped, tuple(target), sorted(present))


def series_cache_key(image: Path, labels: dict, settings: Preprocessing) -> str:
    """SHA-256 over the series' and label maps' sources, their frames and every setting."""
    sources = source_stamps([("series", image), *((f"labels:{int(t)}", p) for t, p in sorted(labels.items()))])
    blob = json.dumps({"version": CACHE_VERSION, "kind": "series", "sources": sources, "settings": settings.key()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def series_cache_path(image: Path, labels: dict, settings: Preprocessing, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`load_series` keeps (or will keep) this series; ``.is_file()``: it is cached."""
    return cache_root(cache_dir) / "series" / f"{series_cache_key(image, labels, settings)}.npz"


def load_series(image: Path, labels: dict, settings: Preprocessing, cache_dir: str | Path | None = None) -> Series:
    """:func:`preprocess_series` through the on-disk cache (``<cache_dir>/series/<key>.npz``)."""
    for path, what in [(image, "image series"), *((p, f"label map of frame {int(t) + 1}") for t, p in labels.items())]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: {what} not found")
    path = series_cache_path(image, labels, settings, cache_dir)
    frames = sorted(int(t) for t in labels)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                images, lab, spacing = z["images"], z["labels"], tuple(float(s) for s in z["spacing"])
                got, present = [int(t) for t in z["frames"]], [int(v) for v in z["source_labels"]]
            if got != frames or images.ndim != 4 or lab.shape != (len(frames), *images.shape[:3]):
                raise ValueError("arrays of unexpected shapes")
            log.debug("cache hit %s for %s", path.name, image)
            return Series(images, {t: lab[i] for i, t in enumerate(frames)}, spacing, present)
        except Exception as e:
            log.warning("cache entry %s is unreadable (%s); recomputing", path, describe_error(e))
    log.info("preprocessing %s (cache miss, writing %s)", image, path)
    ser = preprocess_series(image, labels, settings)
    lab = np.stack([ser.labels[t] for t in frames]) if frames else np.zeros((0, *ser.images.shape[:3]), np.int16)
    atomic_savez(path, images=ser.images, labels=lab, frames=np.asarray(frames, dtype=np.int64),
                  spacing=np.asarray(ser.spacing, dtype=np.float64),
                  source_labels=np.asarray(ser.source_labels, dtype=np.int64))
    return ser
