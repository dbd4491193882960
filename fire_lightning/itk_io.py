"""``fire register``'s outputs for ITK tools (SimpleITK, ANTs, Slicer), in ITK's LPS convention
(``x_LPS = diag(-1, -1, 1) x_RAS``), and the checks of the output file names.

* field: a 3-component vector image on the fixed grid holding ``d(x) = y - x`` in mm, for
  ``sitk.DisplacementFieldTransform``;
* affine: ``sitk.AffineTransform(3)`` with ``y = A x + t`` (centre 0).

Both map fixed points to moving points, as ``sitk.Resample(moving, fixed, transform)`` and
``antsApplyTransforms`` expect. SimpleITK is imported where an ITK output is made: a plain
registration does not need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .io import full_suffix, is_nifti_path, voxel_sizes

if TYPE_CHECKING:
    import SimpleITK as sitk

#: single-file formats (a two-file format could not be renamed into place atomically)
FIELD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
AFFINE_SUFFIXES = (".mat", ".txt", ".tfm", ".h5")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_geometry(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """``(origin, spacing, direction)`` in ITK's LPS convention of a NIfTI ``(4, 4)`` affine
    (``direction`` row-major 3×3; column ``j`` is array axis ``j``)."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
    sizes = voxel_sizes(affine)
    return tuple(lps[:3, 3]), tuple(sizes), tuple((lps[:3, :3] / sizes).flatten())


def itk_displacement_field(disp_ras: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """ITK displacement field image.

    Args:
        disp_ras: ``(X, Y, Z, 3)`` world displacements ``y - x`` (RAS mm) at the voxels of a grid.
        affine: that grid's ``(4, 4)`` voxel → world affine.

    Returns:
        a 3D ``sitkVectorFloat64`` image (LPS vectors and geometry), ready for
        ``sitk.DisplacementFieldTransform``.
    """
    import SimpleITK as sitk

    lps = disp_ras * np.array([-1.0, -1.0, 1.0])
    # SimpleITK arrays are indexed (z, y, x): the reverse of the NIfTI array axes.
    img = sitk.GetImageFromArray(np.ascontiguousarray(lps.transpose(2, 1, 0, 3), dtype=np.float64), isVector=True)
    origin, spacing, direction = itk_geometry(affine)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def itk_affine(affine_ras: np.ndarray) -> sitk.AffineTransform:
    """``sitk.AffineTransform(3)`` (centre 0) of a world ``(4, 4)`` RAS affine, in LPS."""
    import SimpleITK as sitk

    lps = RAS_TO_LPS @ affine_ras @ RAS_TO_LPS
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(lps[:3, :3].flatten()))
    tx.SetTranslation(tuple(lps[:3, 3]))
    return tx


def check_output_paths(out, out_labels=None, field=None, affine=None, n: int | None = None) -> None:
    """Output names must differ and have a suffix the writer understands (checked before any work).

    ``n = 2``: a NIfTI displacement field is refused. ITK's NIfTI reader (SimpleITK, ANTs,
    Slicer) reads a vector image with one slice as a 2D image, dropping the slice's position and
    through-plane direction, so the field would be applied in the wrong place; NRRD and
    MetaImage keep the 3D geometry.
    """
    for path, what, ok in ((out, "warped image", is_nifti_path(out)),
                           (out_labels, "warped labels", out_labels is None or is_nifti_path(out_labels)),
                           (field, "displacement field", field is None or full_suffix(field) in FIELD_SUFFIXES),
                           (affine, "affine", affine is None or full_suffix(affine) in AFFINE_SUFFIXES)):
        if not ok:
            allowed = {"displacement field": FIELD_SUFFIXES, "affine": AFFINE_SUFFIXES}.get(what, (".nii", ".nii.gz"))
            raise ValueError(f"{path}: unsupported file type for the {what} (use {', '.join(allowed)})")
    given = [Path(p) for p in (out, out_labels, field, affine) if p is not None]
    if len({p.resolve() for p in given}) < len(given):
        raise ValueError(f"{', '.join(map(str, given))}: two outputs name the same file")
    if n == 2 and field is not None and is_nifti_path(field):
        stem = Path(field).name[: -len(full_suffix(field))]
        raise ValueError(f"{field}: ITK tools read a one-slice NIfTI vector image as 2D and lose the slice's "
                         f"position, so a 2D model's field must be written as .nrrd or .mha (e.g. {stem}.nrrd)")
