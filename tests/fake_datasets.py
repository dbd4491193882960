"""Tiny fake copies of real datasets in their exact on-disk layouts (DATA.md), for tests.

MRBrainS13: ``TrainingData/<id>/{T1,T1_1mm,T1_IR,T2_FLAIR,LabelsForTraining}`` as MetaImage
(.mhd + .raw, identity LPS direction as ITK writes scanner images) or NIfTI; MRBrainS18:
``training/<id>/pre/{T1,IR,FLAIR}.nii.gz`` + ``segm.nii.gz``. 0.958 × 0.958 × 3.0 mm voxels,
40 × 40 × 12 by default. The anatomy is a jittered ellipsoidal "head": extracerebral CSF,
cortical GM, WM with a lesion, basal ganglia, ventricles, cerebellum and brain stem (MRBrainS
label numbers), with a different contrast per modality.

ACDC 2017: ``<subset>/patientNNN/`` with ``Info.cfg``, ``patientNNN_4d.nii.gz`` and the ED/ES
``patientNNN_frameXX[_gt].nii.gz``; 24 × 20 × 6 voxels of 1.5625 × 1.5625 × 10 mm, a beating toy
heart (:func:`acdc_heart`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SPACING = (0.958, 0.958, 3.0)
SHAPE = (40, 40, 12)

# Intensity per source label (0..10) and modality: the T1/FLAIR/IR relation is non-monotonic.
CONTRAST = {
    "T1": [0, 0.50, 0.60, 0.85, 0.55, 0.20, 0.15, 0.62, 0.75, 0.30, 0.40],
    "IR": [0, 0.35, 0.45, 0.90, 0.40, 0.05, 0.02, 0.50, 0.80, 0.20, 0.30],
    "FLAIR": [0, 0.70, 0.62, 0.45, 0.95, 0.12, 0.05, 0.55, 0.50, 0.85, 0.60],
}


def anatomy(seed: int, shape=SHAPE, extra_labels: bool = False) -> np.ndarray:
    """Source label map (RAS array axes: right, anterior, superior) of one jittered subject."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    c = np.array(shape, dtype=float) / 2 - 0.5 + rng.uniform(-1, 1, 3) * [1.5, 1.5, 0.3]
    r = np.array(shape, dtype=float) * [0.42, 0.46, 0.55] * rng.uniform(0.92, 1.05, 3)
    x, y, z = (ii - c[0]) / r[0], (jj - c[1]) / r[1], (kk - c[2]) / r[2]
    rad = np.sqrt(x**2 + y**2 + z**2)
    lab = np.zeros(shape, dtype=np.int16)
    lab[rad < 1.0] = 5  # extracerebral CSF
    lab[rad < 0.85] = 1  # cortical GM
    lab[rad < 0.68] = 3  # WM
    lab[((x - 0.25) ** 2 + (y - 0.1) ** 2 + (z - 0.1) ** 2) < 0.03] = 4  # a WM lesion
    for sx in (-0.3, 0.3):
        lab[((x - sx) ** 2 + (y + 0.05) ** 2 + z**2) < 0.02] = 2  # basal ganglia
    lab[(x**2 / 0.04 + (y - 0.05) ** 2 / 0.09 + z**2 / 0.1) < 1] = 6  # ventricles
    lab[(x**2 / 0.25 + (y + 0.55) ** 2 / 0.06 + (z + 0.45) ** 2 / 0.08) < 1] = 7  # cerebellum
    stem = (x**2 / 0.02 + (y + 0.15) ** 2 / 0.03 < 1) & (z < -0.05) & (rad < 0.95)
    lab[stem] = 8  # brain stem
    if extra_labels:
        lab[((x + 0.3) ** 2 + (y - 0.3) ** 2 + (z - 0.3) ** 2) < 0.01] = 9  # infarction
        lab[((x - 0.1) ** 2 + (y - 0.45) ** 2 + (z + 0.2) ** 2) < 0.008] = 10  # other
    return lab


def intensities(lab: np.ndarray, modality: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.asarray(CONTRAST[modality], dtype=np.float32)[lab]
    img = img + rng.normal(0, 0.02, lab.shape).astype(np.float32) * (lab > 0)
    return (np.clip(img, 0, None) * 1000).astype(np.float32)


def ras_affine(spacing=SPACING, shape=SHAPE) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -np.array(spacing) * (np.array(shape) - 1) / 2
    return aff


def write_nifti(path: Path, arr: np.ndarray, spacing=SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, ras_affine(spacing, arr.shape[:3])), str(path))
    return path


def write_metaimage(path: Path, arr: np.ndarray, spacing=SPACING) -> Path:
    """``arr`` is in RAS array order; the file gets ITK's identity (LPS) direction, so its
    voxel array is ``arr`` flipped along x and y, as a scanner-space MetaImage would be."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    lps = arr[::-1, ::-1, :]
    img = sitk.GetImageFromArray(np.ascontiguousarray(lps.transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    ras_corner = ras_affine(spacing, arr.shape) @ np.array([arr.shape[0] - 1, arr.shape[1] - 1, 0, 1.0])
    img.SetOrigin((-ras_corner[0], -ras_corner[1], ras_corner[2]))  # RAS → LPS of voxel (0,0,0) of lps
    sitk.WriteImage(img, str(path))
    return path


def write_mrbrains13(root: Path, ids=(1, 2, 3, 4, 5), metaimage=(1, 2, 3), shape=SHAPE) -> Path:
    """``root/TrainingData/<id>/``; subjects in ``metaimage`` as .mhd/.raw, the others NIfTI
    (even ids .nii, odd .nii.gz)."""
    base = Path(root) / "TrainingData"
    for sid in ids:
        lab = anatomy(100 + sid, shape)
        folder = base / str(sid)
        files = {"T1": intensities(lab, "T1", sid), "T1_1mm": intensities(lab, "T1", sid + 50),
                 "T1_IR": intensities(lab, "IR", sid + 1), "T2_FLAIR": intensities(lab, "FLAIR", sid + 2),
                 "LabelsForTraining": lab.astype(np.uint8)}
        for name, arr in files.items():
            if sid in metaimage:
                write_metaimage(folder / f"{name}.mhd", arr)
            else:
                write_nifti(folder / (f"{name}.nii" if sid % 2 == 0 else f"{name}.nii.gz"), arr)
    return base


def write_mrbrains18(root: Path, ids=(1, 4, 5, 7, 14, 70, 148),
                     shape=SHAPE, reg_t1=(5,)) -> Path:
    """``root/training/<id>/pre/{T1|reg_T1,IR,FLAIR}.nii.gz`` + ``segm.nii.gz`` (labels 1..10)."""
    base = Path(root) / "training"
    for sid in ids:
        lab = anatomy(200 + sid, shape, extra_labels=True)
        folder = base / str(sid)
        write_nifti(folder / "pre" / ("reg_T1.nii.gz" if sid in reg_t1 else "T1.nii.gz"), intensities(lab, "T1", sid))
        write_nifti(folder / "pre" / "IR.nii.gz", intensities(lab, "IR", sid + 1))
        write_nifti(folder / "pre" / "FLAIR.nii.gz", intensities(lab, "FLAIR", sid + 2))
        write_nifti(folder / "segm.nii.gz", lab.astype(np.uint8))
    return base


# ------------------------------------------------------------------------------------ ACDC
ACDC_SPACING = (1.5625, 1.5625, 10.0)  # a typical ACDC voxel
ACDC_SHAPE = (24, 20, 6)


def acdc_affine() -> np.ndarray:
    return np.diag([*ACDC_SPACING, 1.0])


def acdc_heart(t: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A beating toy heart: LV cavity disc, myocardium ring, RV crescent; the cavity shrinks towards ES."""
    ii, jj = np.meshgrid(np.arange(ACDC_SHAPE[0]), np.arange(ACDC_SHAPE[1]), indexing="ij")
    r = np.hypot(ii - 12, jj - 10)
    r_cav = 4.5 - 1.5 * np.sin(np.pi * (t - 1) / max(frames - 1, 1))
    lab2d = np.zeros(ACDC_SHAPE[:2], np.uint8)
    lab2d[(np.hypot(ii - 12, jj - 3) < 5) & (r > r_cav + 2)] = 1
    lab2d[(r >= r_cav) & (r < r_cav + 2)] = 2
    lab2d[r < r_cav] = 3
    lab = np.repeat(lab2d[:, :, None], ACDC_SHAPE[2], axis=2)
    img = np.array([20.0, 180.0, 90.0, 230.0], np.float32)[lab] + np.linspace(0, 5, ACDC_SHAPE[2])[None, None, :]
    return img.astype(np.float32), lab


def write_acdc_patient(folder: Path, number: int, ed: int = 1, es: int = 4, frames: int = 6, gt: bool = True,
                       group: str | None = "DCM") -> Path:
    """``folder/patientNNN/``: Info.cfg, the (X, Y, Z, T) cine, the ED/ES frames and (``gt``)
    their ground truth, as ACDC ships them (DATA.md)."""
    pid = f"patient{number:03d}"
    d = folder / pid
    d.mkdir(parents=True)
    lines = [f"ED: {ed}", f"ES: {es}"] + ([f"Group: {group}"] if group else []) + [
        "Height: 180.0", f"NbFrame: {frames}", "Weight: 80.0"]
    (d / "Info.cfg").write_text("\n".join(lines) + "\n")
    cine = np.stack([acdc_heart(t, frames)[0] for t in range(1, frames + 1)], axis=-1)
    img4 = nib.Nifti1Image(cine, acdc_affine())
    img4.header.set_zooms((*ACDC_SPACING, 1.0))
    nib.save(img4, d / f"{pid}_4d.nii.gz")
    for t in {ed, es}:
        image, lab = acdc_heart(t, frames)
        nib.save(nib.Nifti1Image(image, acdc_affine()), d / f"{pid}_frame{t:02d}.nii.gz")
        if gt:
            nib.save(nib.Nifti1Image(lab, acdc_affine()), d / f"{pid}_frame{t:02d}_gt.nii.gz")
    return d
