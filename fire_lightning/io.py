"""NIfTI input/output with checks that give one-line errors, and all-or-nothing atomic writes.

Every error raised here is a :class:`FileNotFoundError` or :class:`ValueError` whose message is
one line starting with the file's path (the ``fire`` CLI prints it as is); a failed write is an
:class:`OSError` naming the file.

Example::

    from fire_lightning.io import load_nifti, spatial_data, image_like, save_atomic, nifti_writer

    img = load_nifti("t1.nii.gz", what="T1 image")           # checked, data in memory
    arr = spatial_data(img)                                   # (X, Y, Z) float32; Z = 1 for 2D
    out = image_like(img, arr * 2, dtype="float32")           # same grid, header and s/q-form codes
    save_atomic({"t1x2.nii.gz": nifti_writer(out)})           # both files or neither

Conventions: a 2D image is a NIfTI whose third axis has size 1 (or that has only two axes); a
trailing 4th axis of size 1 is allowed and ignored; anything with more than one volume is refused.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Mapping

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def describe_error(e: BaseException) -> str:
    """``"<Type>: <first line of the message>"`` (at most 200 characters), for one-line errors."""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}"


def full_suffix(path: str | Path) -> str:
    """The file-type suffix, two-part for compressed NIfTI: ``a/b.nii.gz`` → ``.nii.gz``."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(path).suffix.lower()


def is_nifti_path(path: str | Path) -> bool:
    return full_suffix(path) in NIFTI_SUFFIXES


def _volume_count(shape: tuple) -> int:
    return int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1


def load_nifti(path: str | Path, what: str = "image", labels: bool = False, allow_4d: bool = False) -> nib.Nifti1Image:
    """Read a NIfTI file into memory, with checks.

    Checks (each failure is one line naming ``path`` and ``what``): the file exists; its name
    ends in ``.nii`` / ``.nii.gz``; nibabel can read header and data; it has 2 or 3 spatial axes
    (a 4th axis of size 1 is allowed); the voxel-to-world affine is invertible; the values are
    finite; with ``labels=True``, the values are integers.

    Args:
        path: the file.
        what: how messages call it (``"moving image"``, ``"fixed labels"``, ...).
        labels: also require integer values.
        allow_4d: accept a series of volumes (X, Y, Z, T), e.g. a cine.

    Returns:
        a NIfTI-1 or NIfTI-2 image of the file's shape with its data in memory (the on-disk
        dtype unless the header scales the values) and the file's header (q/s-form codes kept).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    if not is_nifti_path(path):
        raise ValueError(f"{path}: {what} is not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(f"read as {type(img).__name__}")
        data = np.asanyarray(img.dataobj)  # reads (and decompresses) everything now
    except Exception as e:  # nibabel raises many types for damaged files
        raise ValueError(f"{path}: {what} cannot be read as NIfTI ({describe_error(e)})") from None
    img = img.__class__(data, img.affine, img.header)
    check_image(img, f"{path}: {what}", labels=labels, allow_4d=allow_4d)
    return img


def check_image(img: nib.Nifti1Image, name: str, labels: bool = False, allow_4d: bool = False) -> None:
    """The checks of :func:`load_nifti` that concern the content (``name`` starts every message)."""
    shape = img.shape
    if len(shape) < 2:
        raise ValueError(f"{name} has {len(shape)} axis; need 2 or 3 spatial axes")
    if _volume_count(shape) > 1 and not (allow_4d and len(shape) == 4):
        raise ValueError(f"{name} is 4D (shape {shape}); give a single 2D or 3D volume")
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{name} has a singular or non-finite voxel-to-world affine (check pixdim / q-form / s-form)")
    data = np.asanyarray(img.dataobj)
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise ValueError(f"{name} has {bad} NaN or Inf values")
    elif data.dtype.kind not in "iub":
        raise ValueError(f"{name} has unsupported data type {data.dtype}")
    if labels and data.dtype.kind == "f" and not np.all(data == np.round(data)):
        raise ValueError(f"{name} has non-integer values; a label map needs integer labels")


def spatial_shape(img: nib.Nifti1Image) -> tuple[int, int, int]:
    """``(X, Y, Z)``: the shape with exactly three spatial axes (``Z = 1`` for a 2D image)."""
    return tuple(int(s) for s in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))


def spatial_data(img: nib.Nifti1Image, dtype=np.float32) -> np.ndarray:
    """The image's array with exactly three spatial axes ``(X, Y, Z)``; ``Z = 1`` for a 2D image.

    A 2-axis array gets a singleton third axis, a trailing singleton 4th axis is dropped.
    """
    return np.asanyarray(img.dataobj).reshape(spatial_shape(img)).astype(dtype, copy=False)


def is_2d(img: nib.Nifti1Image) -> bool:
    """A 2D image: the third axis is absent or has size 1."""
    return len(img.shape) < 3 or img.shape[2] == 1


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis (mm): the column norms of ``affine[:3, :3]``."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def image_like(reference: nib.Nifti1Image, data: np.ndarray, dtype=None, description: str = "") -> nib.Nifti1Image:
    """A new image on ``reference``'s grid: its shape, affine and header (q/s-form and codes).

    ``data`` is reshaped to the reference's shape (so an ``(X, Y, Z)`` array fits an ``(X, Y)``
    or ``(X, Y, Z, 1)`` reference). Intensity scaling, display range and intent are reset, as
    they described the reference's values, not these.
    """
    dtype = np.dtype(dtype or data.dtype)
    arr = np.asarray(data).astype(dtype, copy=False).reshape(reference.shape)
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    header["cal_min"] = header["cal_max"] = 0
    header.set_intent("none")
    header["descrip"] = description[:79].encode("ascii", "replace")
    return reference.__class__(arr, None, header)  # affine None: the header's q/s-forms as they are


def nifti_writer(img: nib.Nifti1Image) -> Callable[[Path], None]:
    """A writer for :func:`save_atomic` that saves ``img`` with nibabel."""
    return lambda path: nib.save(img, str(path))


def _temp_path(path: Path) -> Path:
    # Same folder (os.replace is atomic only within a file system), hidden, same suffix (the
    # writers pick the format from it).
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


def save_atomic(writers: Mapping[str | Path, Callable[[Path], None]]) -> list[Path]:
    """Write several files, all or none.

    Each ``writer(tmp_path)`` writes its file to a temporary name in the target's folder
    (folders are created); when all have succeeded, the temporaries are renamed onto the
    targets with :func:`os.replace`. If anything fails, the temporaries and the targets already
    replaced by this call are removed, and an :class:`OSError` naming the file is raised.

    Returns:
        the written paths.
    """
    targets = [Path(p) for p in writers]
    if len({p.resolve() for p in targets}) != len(targets):
        raise ValueError(f"{', '.join(map(str, targets))}: two outputs name the same file")
    temps: dict[Path, Path] = {}
    done: list[Path] = []
    current = None
    try:
        for target, write in zip(targets, writers.values()):
            current = target
            target.parent.mkdir(parents=True, exist_ok=True)
            temps[target] = _temp_path(target)
            write(temps[target])
        for target, tmp in temps.items():
            current = target
            os.replace(tmp, target)
            done.append(target)
    except Exception as e:
        for path in [*temps.values(), *done]:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        raise OSError(f"{current}: cannot write ({describe_error(e)})") from None
    return done
