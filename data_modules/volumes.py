"""Reading, preprocessing and caching of real 3D scans, shared by the dataset modules.

Dataset-agnostic: a subject is a dict ``modality name → image file`` plus one label file;
:func:`load_subject` turns it into a :class:`Volume` of arrays on one grid, through an on-disk
cache. The steps (:func:`preprocess`):

1. read each file (NIfTI with nibabel, MetaImage ``.mhd``/``.mha`` with SimpleITK, converted
   to a NIfTI image with the RAS affine), with the checks of :func:`fire_lightning.io.check_image`
   plus: 3D, not constant; all files of the subject share shape and voxel size;
2. reorient to RAS (``nibabel.as_closest_canonical``): array axes = (right, anterior, superior),
   so axial slices run along the last axis;
3. resample to ``spacing`` mm with TorchIO (``tio.Resample``; images linear, labels nearest);
   an axis whose target spacing is ``None`` or ``0`` keeps its native spacing;
4. intensities to [0, 1]: clipped at the ``percentiles`` of the image's foreground (voxels
   above the image minimum), measured on the original voxels;
5. labels: ``structures`` (name → list of source label values) become 1..K in the mapping's
   order, everything else 0; ``mask`` keeps "any source label > 0" (the brain, for picking
   slices).

Image series (4D cines) go through the same steps in :mod:`data_modules.series`.

Cache: one ``.npz`` per subject under ``<cache_dir>/volumes/``, named by a SHA-256 of the source
files' resolved paths, sizes and modification times and of every setting above, so changing a
file or a setting makes a new entry. Written atomically (temporary file + ``os.replace``); an
entry that cannot be read is recomputed (with a warning), never an error. The cache folder is
``data.cache_dir``, else ``$FIRE_CACHE_DIR``, else ``~/.cache/fire-lightning``.

Every input error is a one-line :class:`FileNotFoundError` / :class:`ValueError` that starts with
the file's path and says what was expected: bad input is part of the data contract.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from fire_lightning.io import check_image, describe_error, is_nifti_path, load_nifti, voxel_sizes

log = logging.getLogger(__name__)

CACHE_VERSION = 1
METAIMAGE_SUFFIXES = (".mhd", ".mha")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Preprocessing:
    """Settings of :func:`preprocess` (all of them enter the cache key).

    ``spacing``: target mm, one number (isotropic) or three (``None``/0 = keep native);
    ``percentiles``: intensity clipping of the foreground; ``structures``: name → source label
    values, in output-label order (``None``: labels kept as they are); ``reorient``: to RAS
    (``as_closest_canonical``, which may reorder the array axes), or keep the array's axes as
    they are (cine stacks: the slice axis must stay the last one, even for double-oblique
    short-axis slices)."""

    spacing: float | tuple = 1.0
    percentiles: tuple = (0.5, 99.5)
    structures: dict | None = None
    reorient: bool = True

    def key(self) -> dict:
        sp = (self.spacing if isinstance(self.spacing, (int, float))
              else [None if not s else float(s) for s in self.spacing])
        st = (None if self.structures is None
              else [[str(k), [int(v) for v in vals]] for k, vals in self.structures.items()])
        return {"spacing": sp, "percentiles": [float(p) for p in self.percentiles], "structures": st,
                "reorient": bool(self.reorient)}


@dataclass
class Volume:
    """A preprocessed subject: ``images[m]`` (X, Y, Z) float32 in [0, 1]; ``labels`` (X, Y, Z)
    int16 in 0..K; ``mask`` (X, Y, Z) bool (any source label); ``spacing`` mm per axis."""

    images: dict
    labels: np.ndarray
    mask: np.ndarray
    spacing: tuple
    source_labels: list = field(default_factory=list)  # label values present in the source file


# ----------------------------------------------------------------------------------- reading
def find_file(folder: Path, patterns, what: str) -> Path:
    """The first file in ``folder`` that matches one of ``patterns`` (relative paths or globs,
    tried in order); a one-line :class:`FileNotFoundError` naming the folder and the patterns."""
    folder = Path(folder)
    for pat in patterns:
        hits = sorted(Path(p) for p in glob.glob(str(folder / pat)))
        hits = [h for h in hits if h.is_file() and h.suffix.lower() not in (".raw", ".zraw")]
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{folder}: no {what} file (expected one of {', '.join(patterns)})")


def metaimage_to_nifti(image) -> nib.Nifti1Image:
    """A SimpleITK image as a NIfTI image with the same voxels and the RAS voxel-to-world affine.

    ITK's direction and origin are in LPS: world_RAS = diag(-1, -1, 1) · (D · diag(spacing) · ijk + origin).
    SimpleITK arrays are indexed (z, y, x); the NIfTI array is (x, y, z).
    """
    import SimpleITK as sitk

    dim = image.GetDimension()
    if dim > 3:
        raise ValueError(f"is {dim}D (size {image.GetSize()}); expected a 3D volume")
    arr = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise ValueError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar image")
    arr = arr.transpose(tuple(range(dim))[::-1])
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    lin = np.eye(3)
    lin[:dim, :dim] = direction @ np.diag(spacing)
    org = np.zeros(3)
    org[:dim] = origin
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ lin
    affine[:3, 3] = _LPS_TO_RAS @ org
    return nib.Nifti1Image(arr, affine)


def read_volume(path: str | Path, what: str = "image", labels: bool = False) -> nib.Nifti1Image:
    """Read a 3D NIfTI or MetaImage file, checked; one-line errors naming ``path``."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(METAIMAGE_SUFFIXES):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {what} not found")
        import SimpleITK as sitk

        try:
            img = metaimage_to_nifti(sitk.ReadImage(str(path)))
        except Exception as e:  # SimpleITK raises RuntimeError with a multi-line message
            raise ValueError(f"{path}: {what} cannot be read as MetaImage ({describe_error(e)})") from None
        check_image(img, f"{path}: {what}", labels=labels)
    elif is_nifti_path(path):
        img = load_nifti(path, what=what, labels=labels)
    else:
        raise ValueError(f"{path}: {what} has an unknown file type (expected .nii, .nii.gz, .mhd or .mha)")
    if len(img.shape) < 3 or img.shape[2] == 1:
        raise ValueError(f"{path}: {what} is 2D (shape {img.shape}); expected a 3D volume")
    if len(img.shape) > 3:  # a trailing singleton 4th axis (check_image refused more volumes)
        img = img.__class__(np.asanyarray(img.dataobj).reshape(img.shape[:3]), img.affine, img.header)
    return img


# ----------------------------------------------------------------------------- preprocessing
def map_labels(arr: np.ndarray, structures: dict | None) -> np.ndarray:
    """Source labels → 1..K in ``structures``' order (0 elsewhere); ``None`` keeps ``arr``."""
    arr = np.asarray(arr)
    if structures is None:
        return arr.astype(np.int16)
    out = np.zeros(arr.shape, dtype=np.int16)
    for k, values in enumerate(structures.values(), start=1):
        out[np.isin(arr, [int(v) for v in values])] = k
    return out


def target_spacing(native, spacing) -> tuple:
    if isinstance(spacing, (int, float)):
        return (float(spacing),) * 3
    return tuple(float(n) if not s else float(s) for n, s in zip(native, spacing))


def preprocess(images: dict, labels: Path, settings: Preprocessing) -> Volume:
    """Read, check, reorient, resample and normalise one subject (no cache; see module docstring)."""
    import torchio as tio

    raw = {m: read_volume(p, what=f"{m} image") for m, p in images.items()}
    lab = read_volume(labels, what="label map", labels=True)
    # One grid for all files of a subject (the datasets ship them co-registered).
    ref_name, ref = str(labels), lab
    ref_sp = voxel_sizes(ref.affine)
    for m, img in raw.items():
        if img.shape != ref.shape:
            raise ValueError(f"{images[m]}: {m} image has shape {img.shape} but {ref_name} has {ref.shape}; "
                             "expected the subject's files on one grid")
        sp = voxel_sizes(img.affine)
        if not np.allclose(sp, ref_sp, rtol=1e-3, atol=1e-4):
            raise ValueError(f"{images[m]}: {m} image has voxel size {np.round(sp, 4).tolist()} mm but {ref_name} "
                             f"has {np.round(ref_sp, 4).tolist()} mm; expected the subject's files on one grid")
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise ValueError(f"{images[m]}: {m} image's voxel-to-world affine (orientation/origin) differs from "
                             f"{ref_name}'s; expected the subject's files on one grid")

    def canonical(img, dtype):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj).astype(dtype), img.affine)
        if settings.reorient:
            img = nib.as_closest_canonical(img)
        return np.asanyarray(img.dataobj), img.affine

    lab_arr, lab_aff = canonical(lab, np.int16)
    if not lab_arr.any():
        raise ValueError(f"{labels}: label map is all background (0); expected the subject's manual labels")
    target = target_spacing(voxel_sizes(lab_aff), settings.spacing)
    subject = {"labels": tio.LabelMap(tensor=torch.from_numpy(lab_arr.copy())[None], affine=lab_aff)}
    ranges = {}
    for m, img in raw.items():
        arr, aff = canonical(img, np.float32)
        lo_v, hi_v = float(arr.min()), float(arr.max())
        if hi_v == lo_v:
            raise ValueError(f"{images[m]}: {m} image is constant (every voxel {lo_v:g}); expected an MR image")
        fg = arr[arr > lo_v]
        lo, hi = np.percentile(fg, list(settings.percentiles))
        if not hi > lo:
            raise ValueError(f"{images[m]}: {m} image has no intensity range between its {settings.percentiles} "
                             "foreground percentiles; expected an MR image")
        ranges[m] = (float(lo), float(hi))
        subject[f"img_{m}"] = tio.ScalarImage(tensor=torch.from_numpy(arr.copy())[None], affine=aff)
    out = tio.Resample(target, image_interpolation="linear", label_interpolation="nearest")(tio.Subject(**subject))
    labels_rs = out["labels"].data[0].numpy()
    vol_images = {}
    for m in raw:
        lo, hi = ranges[m]
        a = out[f"img_{m}"].data[0].numpy()
        vol_images[m] = np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    present = sorted(int(v) for v in np.unique(lab_arr))
    return Volume(vol_images, map_labels(labels_rs, settings.structures), labels_rs > 0, tuple(target), present)


# ------------------------------------------------------------------------------------- cache
def cache_root(configured: str | None = None) -> Path:
    """``configured``, else ``$FIRE_CACHE_DIR``, else ``~/.cache/fire-lightning``."""
    return Path(configured or os.environ.get("FIRE_CACHE_DIR")
                or Path.home() / ".cache" / "fire-lightning").expanduser()


def _metaimage_data_files(header: Path) -> list[Path]:
    """The data file(s) a ``.mhd`` header names in ``ElementDataFile`` (``LOCAL``: none; a list
    or a pattern: the ``.raw``-like files next to it)."""
    for line in header.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            value = value.strip()
            if value == "LOCAL":
                return []
            named = header.parent / value
            if named.is_file():
                return [named]
            break
    return sorted(f for f in header.parent.glob(header.stem + ".*") if f.suffix.lower() not in (".mhd",))


def source_stamps(files) -> list:
    """(role, path) pairs → [role, resolved path, size, mtime, (MetaImage .raw data)...] for a cache key."""
    sources = []
    for role, p in files:
        p = Path(p).resolve()
        st = p.stat()
        entry = [role, str(p), st.st_size, st.st_mtime_ns]
        if p.suffix.lower() == ".mhd":  # the voxels live in the file the header names
            for data in _metaimage_data_files(p):
                ds = data.stat()
                entry += [data.name, ds.st_size, ds.st_mtime_ns]
        sources.append(entry)
    return sources


def cache_key(images: dict, labels: Path, settings: Preprocessing) -> str:
    """SHA-256 over the sources (resolved path, size, mtime) and every preprocessing setting."""
    sources = source_stamps([*sorted((f"image:{m}", p) for m, p in images.items()), ("labels", labels)])
    blob = json.dumps({"version": CACHE_VERSION, "sources": sources, "settings": settings.key()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def atomic_savez(path: Path, **arrays) -> None:
    """``np.savez`` to a temporary file + ``os.replace``; a failed write is only a warning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as e:  # a cache that cannot be written only costs time
        log.warning("cannot write cache entry %s (%s)", path, describe_error(e))
        tmp.unlink(missing_ok=True)


def _save(path: Path, vol: Volume) -> None:
    arrays = {f"img_{m}": a for m, a in vol.images.items()}
    atomic_savez(path, labels=vol.labels, mask=vol.mask, spacing=np.asarray(vol.spacing, dtype=np.float64),
                  source_labels=np.asarray(vol.source_labels, dtype=np.int64), **arrays)


def _load(path: Path, modalities) -> Volume:
    with np.load(path, allow_pickle=False) as z:
        images = {m: z[f"img_{m}"] for m in modalities}
        vol = Volume(images, z["labels"], z["mask"], tuple(float(s) for s in z["spacing"]),
                     [int(v) for v in z["source_labels"]])
    shapes = {a.shape for a in (*vol.images.values(), vol.labels, vol.mask)}
    if len(shapes) != 1:
        raise ValueError("arrays of different shapes")
    return vol


def load_subject(images: dict, labels: Path, settings: Preprocessing, cache_dir: str | Path | None = None) -> Volume:
    """:func:`preprocess` through the on-disk cache (see module docstring)."""
    for m, p in images.items():  # one-line errors before stat() in the key
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: {m} image not found")
    if not Path(labels).is_file():
        raise FileNotFoundError(f"{labels}: label map not found")
    path = cache_root(cache_dir) / "volumes" / f"{cache_key(images, labels, settings)}.npz"
    if path.is_file():
        try:
            vol = _load(path, list(images))
            log.debug("cache hit %s for %s", path.name, labels)
            return vol
        except Exception as e:
            log.warning("cache entry %s is unreadable (%s); recomputing", path, describe_error(e))
    log.info("preprocessing %s (cache miss, writing %s)", Path(labels).parent, path)
    vol = preprocess(images, labels, settings)
    _save(path, vol)
    return vol


def brain_slices(mask: np.ndarray, min_fraction: float) -> list[int]:
    """Axial slice indices (last axis) whose brain area is at least ``min_fraction`` of the largest."""
    area = mask.reshape(-1, mask.shape[-1]).sum(0)
    if area.max() == 0:
        return []
    return [int(z) for z in np.nonzero(area >= max(1, min_fraction * area.max()))[0]]
