"""``fire export-pairs``: a data module's test pairs as NIfTI files and a pairs CSV, as a user would
send them to ``fire register --csv`` (which then scores the warped labels against ``fixed_labels``).

Images are written as a scanner's would be, background 0 and intensities >= 0 (the data module's
``[-1, 1]`` mapped back to ``[0, 1]``), so ``fire register`` normalises them as any user's; the
files are written in a chosen orientation (``RAS`` or ``LPS``: the arrays are flipped and the
affine follows, so every voxel keeps its world position), so the registration goes through the same
resampling and orientation handling as any user's NIfTI, not through the data module's tensors.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ORIENTATIONS = ("RAS", "LPS")


def pair_affine(shape, spacing, orientation: str = "RAS") -> np.ndarray:
    """The 4×4 voxel → world (RAS mm) affine of a 3D array ``shape`` (a 2D image has a third axis of
    size 1) whose axes are the tensor's, at ``spacing`` mm, centred on the origin; in ``LPS`` the first
    two array axes run the other way."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    sp = np.asarray(list(spacing) + [float(spacing[-1])] * (3 - len(spacing)), dtype=float)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -sp * (np.asarray(shape, dtype=float) - 1) / 2
    if orientation == "LPS":
        for k in (0, 1):
            aff[:3, 3] += aff[:3, k] * (shape[k] - 1)
            aff[:3, k] *= -1
    return aff


def _array(t: torch.Tensor, orientation: str) -> np.ndarray:
    """``(1, *S)`` tensor → 3D array in ``orientation`` (2D: a third axis of size 1)."""
    a = t[0].cpu().numpy()
    a = a[..., None] if a.ndim == 2 else a
    return np.ascontiguousarray(a[::-1, ::-1] if orientation == "LPS" else a)


def export_pairs(dataset, out_dir: str | Path, spacing, max_pairs: int | None = None,
                 orientation: str = "RAS") -> Path:
    """Write pairs ``i`` as ``pair_<i>_{moving,fixed,moving_labels,fixed_labels}.nii.gz`` and
    ``pairs.csv`` (``moving,fixed,out,moving_labels,out_labels,fixed_labels``; outputs go to
    ``registered/``) into ``out_dir``; returns the CSV's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if not max_pairs else min(int(max_pairs), len(dataset))
    rows = []
    for i in range(n):
        item = dataset[i]
        shape = _array(item["moving"], "RAS").shape
        aff = pair_affine(shape, spacing, orientation)
        names = {}
        for key, kind in (("moving", np.float32), ("fixed", np.float32), ("moving_label", np.int16),
                          ("fixed_label", np.int16)):
            name = f"pair_{i:03d}_{key.replace('label', 'labels')}.nii.gz"
            data = _array(item[key], orientation)
            if kind is np.float32:  # the data module's [-1, 1] back to a scan's range: background 0
                data = (data + 1) / 2
            img = nib.Nifti1Image(data.astype(kind), aff)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(out / name))
            names[key] = name
        rows.append([names["moving"], names["fixed"], f"registered/pair_{i:03d}_warped.nii.gz", names["moving_label"],
                     f"registered/pair_{i:03d}_warped_labels.nii.gz", names["fixed_label"]])
    (out / "registered").mkdir(exist_ok=True)
    path = out / "pairs.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["moving", "fixed", "out", "moving_labels", "out_labels", "fixed_labels"], *rows])
    return path
