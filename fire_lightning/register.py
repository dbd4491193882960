"""Register NIfTI images with a trained FIRE checkpoint (``fire register``).

Example::

    from fire_lightning.register import Registrar, register_csv

    reg = Registrar("runs/phantom2d-20261121-101500/checkpoints/last.ckpt")  # CUDA when present
    result = reg.register("t1.nii.gz", "flair.nii.gz", moving_labels="t1_labels.nii.gz")
    result.save("t1_in_flair.nii.gz", out_labels="labels_in_flair.nii.gz",
                field="field.nii.gz", affine="affine.mat")
    register_csv("runs/.../last.ckpt", "pairs.csv")  # columns moving,fixed,out[,moving_labels,...]

How it works (world = NIfTI RAS millimetres, voxel = array index, "normalised" = the
``[-1, 1]`` coordinates of :mod:`fire_lightning.spatial`, ``align_corners=False``):

1. **Model grid** (:func:`model_grid`): the model was trained on RAS-oriented arrays at
   ``module.spacing`` mm. The grid covers the fixed image's field of view, centred on it, with
   the fixed image's axes reordered/flipped to the closest RAS orientation (2D: only the two
   in-plane axes; the singleton third axis stays third) but its direction cosines kept (oblique
   stays oblique), voxels of ``spacing`` mm and ``ceil(extent / spacing)`` voxels per axis,
   rounded up to a multiple of 4 (the encoder halves the grid twice).
2. **Model input**: each image is normalised on its own grid (clip to ``[0, p99.5]`` of its
   positive voxels, divide: ``[0, 1]``), resampled linearly onto the model grid through world
   coordinates with :func:`spatial.sample_at` (outside the image: 0), then mapped by ``x*2-1``
   (so background and outside are -1), as in training.
3. ``module.register(moving, fixed)`` gives ``theta`` ``(1, n, n+1)`` and the FIRE field on the
   model grid. The field is split into its affine and non-rigid parts,
   ``phi(p) = theta(p + u_nr(p))``, so that only ``u_nr`` is interpolated (with border
   padding) and the affine part stays exact up to the edges of the fixed image.
4. **Outputs on the fixed grid**: for every fixed voxel centre ``x`` (world), its model-grid
   normalised point ``p``, the moving point ``y = phi(p)`` mapped back to world, then into the
   moving image's own voxel grid, where the *original* moving data are sampled once (linear,
   0 outside; labels nearest, 0 outside). The affine-only image uses ``phi_af(p) = theta(p)``.

ITK outputs (LPS: ``x_LPS = diag(-1, -1, 1) x_RAS``), both mapping fixed points to moving points,
which is what ``sitk.Resample(moving, fixed, transform)`` / ``antsApplyTransforms`` expect:

* field: a 3-component vector image on the fixed grid (origin, spacing, direction of the fixed
  NIfTI in LPS) holding ``d(x) = y - x`` in mm, for ``sitk.DisplacementFieldTransform``
  (float64 in memory, float32 on disk, 3 components and 3D geometry also for 2D images; those
  need ``.nrrd`` or ``.mha``, see :func:`check_output_paths`).
* affine: ``sitk.AffineTransform(3)`` with ``y = A x + t`` (centre 0), the world form of ``theta``.

2D models (images with a singleton third axis): the through-plane coordinate is left as it is
(in model-grid coordinates the affine's through-plane row is the identity: points keep their
distance from the fixed slice's plane), so the moving point lies in the fixed image's plane,
and the moving slice is sampled where that point projects along its third axis. The field and
affine outputs therefore assume that both slices lie in the same plane; a warning is logged
when they do not.

Each step logs at INFO (sizes, voxel sizes, orientations, the model grid, seconds).
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Callable

import nibabel as nib
import numpy as np
import torch

from . import spatial
from .inference import load_model
from .refine import RefineSettings
from .io import (check_image, full_suffix, image_like, is_2d, is_nifti_path, load_nifti, nifti_writer, save_atomic,
                 spatial_data, spatial_shape, voxel_sizes)

if TYPE_CHECKING:  # SimpleITK is imported where ITK outputs are made: a plain registration does not need it
    import SimpleITK as sitk

log = logging.getLogger(__name__)

#: fixed-grid points processed at once when mapping to the moving image (bounds the memory)
CHUNK_POINTS = 1 << 20
#: single-file formats (a two-file format could not be renamed into place atomically)
FIELD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
AFFINE_SUFFIXES = (".mat", ".txt", ".tfm", ".h5")
CSV_REQUIRED = ("moving", "fixed", "out")
CSV_OPTIONAL = ("moving_labels", "out_labels", "field", "affine", "fixed_labels")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])



# ---------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ModelGrid:
    """The grid the model runs on.

    Attributes:
        shape: 3 values ``(X, Y, Z)``; ``Z = 1`` for a 2D model.
        affine: ``(4, 4)`` voxel → world (RAS mm).
        n: spatial dimensions of the model (2 or 3); the tensors are ``(1, C, *shape[:n])``.
    """

    shape: tuple
    affine: np.ndarray
    n: int

    @property
    def tensor_shape(self) -> tuple:
        return tuple(self.shape[: self.n])

    def normalised_to_world(self) -> np.ndarray:
        """``(4, 4)``: normalised model-grid coordinates → world."""
        return self.affine @ np.linalg.inv(normaliser(self.shape))


def _round_up(voxels: float, multiple: int = 4) -> int:
    whole = max(1, int(np.ceil(voxels - 1e-6)))  # 1e-6: 64.0000000001 voxels are 64
    return int(np.ceil(whole / multiple) * multiple)


def model_grid(affine: np.ndarray, shape, spacing, n: int) -> ModelGrid:
    """The model grid for a fixed image (module docstring, step 1).

    Args:
        affine: the fixed image's ``(4, 4)`` voxel → world affine.
        shape: its 3-axis shape ``(X, Y, Z)`` (``Z = 1`` for 2D).
        spacing: the model's voxel size per model axis (``n`` values, mm).
        n: 2 or 3.
    """
    affine = np.asarray(affine, dtype=float)
    sizes = voxel_sizes(affine)
    ornt = nib.orientations.io_orientation(affine)  # per array axis: (closest RAS axis, ±1)
    if n == 3:
        axes = [int(np.flatnonzero(ornt[:, 0] == k)[0]) for k in range(3)]
    else:  # reorder the two in-plane axes only; the through-plane axis keeps its place and sign
        axes = sorted((0, 1), key=lambda i: ornt[i, 0]) + [2]
    signs = [float(ornt[i, 1]) if k < n else 1.0 for k, i in enumerate(axes)]
    steps = [float(spacing[k]) if k < n else float(sizes[2]) for k in range(3)]
    new_shape = tuple(_round_up(sizes[i] * shape[i] / steps[k]) if k < n else 1 for k, i in enumerate(axes))
    directions = affine[:3, :3] / sizes
    cols = np.stack([directions[:, i] * sg * st for i, sg, st in zip(axes, signs, steps)], axis=1)
    centre = affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2) + affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = cols
    out[:3, 3] = centre - cols @ ((np.asarray(new_shape, dtype=float) - 1) / 2)
    return ModelGrid(new_shape, out, n)


def normaliser(shape) -> np.ndarray:
    """``(4, 4)``: voxel index → normalised coordinate of a grid of 3-axis ``shape``:
    ``p = (2 v + 1) / S - 1`` (voxel-centre convention of :func:`spatial.identity_grid`)."""
    s = np.asarray(shape, dtype=float)
    out = np.diag([*(2.0 / s), 1.0])
    out[:3, 3] = 1.0 / s - 1.0
    return out


def _transform_points(matrix, points: torch.Tensor) -> torch.Tensor:
    """``(4, 4)`` homogeneous matrix applied to points ``(1, 3, *S)`` → ``(1, 3, *S)``."""
    m = torch.as_tensor(np.asarray(matrix), dtype=points.dtype, device=points.device)
    lead = [1] * (points.dim() - 2)
    return torch.einsum("ij,bj...->bi...", m[:3, :3], points) + m[:3, 3].view(1, 3, *lead)


def _voxel_points(shape, n: int, lo: int, hi: int, device) -> torch.Tensor:
    """Voxel indices ``(1, 3, *S_slab)`` (float64) of a grid of 3-axis ``shape`` whose tensor
    axes are ``shape[:n]``, restricted to ``[lo, hi)`` along tensor axis ``n - 1``; in 2D the
    third index is 0."""
    ranges = [torch.arange(s, dtype=torch.float64, device=device) for s in shape[:n]]
    ranges[n - 1] = ranges[n - 1][lo:hi]
    mesh = list(torch.meshgrid(*ranges, indexing="ij"))
    mesh += [torch.zeros_like(mesh[0])] * (3 - n)
    return torch.stack(mesh).unsqueeze(0)


def _fire_and_affine(p: torch.Tensor, theta: torch.Tensor, u_nr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where FIRE and its affine part send model-grid points.

    Args:
        p: ``(1, 3, *S)`` normalised model-grid points (2D: the third is the through-plane one).
        theta: ``(1, n, n+1)``; u_nr: ``(1, n, *S_model)`` (see :func:`nonrigid_part`).

    Returns:
        ``phi(p) = theta(p + u_nr(p))`` and ``phi_af(p) = theta(p)``, each ``(1, 3, *S)``; a 2D
        model leaves the through-plane coordinate as it is.
    """
    n = theta.shape[1]
    q = p[:, :n] + spatial.sample_at(u_nr, p[:, :n], "bilinear", "border")
    rest = p[:, n:]
    fire = torch.cat([spatial.apply_affine(theta, q), rest], 1)
    return fire, torch.cat([spatial.apply_affine(theta, p[:, :n]), rest], 1)


def _slabs(tensor_shape):
    """``[lo, hi)`` ranges along the last axis of a grid, each of at most ~:data:`CHUNK_POINTS` points."""
    per_slice = int(np.prod(tensor_shape[:-1]))
    width = max(1, CHUNK_POINTS // per_slice)
    for lo in range(0, tensor_shape[-1], width):
        yield lo, min(lo + width, tensor_shape[-1])


def nonrigid_part(field: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``u_nr`` of a FIRE field ``phi(p) = p + field(p) = theta(p + u_nr(p))``.

    Args:
        field: ``(1, n, *S)`` normalised; theta: ``(1, n, n+1)``.

    Returns:
        ``(1, n, *S)`` float64.
    """
    ident = spatial.identity_grid(field.shape[2:], field.device, torch.float64)
    return spatial.apply_affine(spatial.invert_affine(theta.double()), ident + field.double()) - ident


def world_affine(theta: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """``(4, 4)`` world (RAS) affine, fixed point → moving point, of ``theta (n, n+1)`` acting on
    the model grid's normalised coordinates (2D: the through-plane row is the identity)."""
    n = grid.n
    full = np.eye(4)
    full[:n, :n] = theta[:, :n]
    full[:n, 3] = theta[:, n]
    to_world = grid.normalised_to_world()
    return to_world @ full @ np.linalg.inv(to_world)


# ---------------------------------------------------------------------------------- ITK (LPS)
def itk_geometry(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """``(origin, spacing, direction)`` in ITK's LPS convention of a NIfTI ``(4, 4)`` affine
    (``direction`` row-major 3×3; column ``j`` is array axis ``j``)."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=float)
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

    lps = _RAS_TO_LPS @ affine_ras @ _RAS_TO_LPS
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(lps[:3, :3].flatten()))
    tx.SetTranslation(tuple(lps[:3, 3]))
    return tx


# ---------------------------------------------------------------------------------- intensities
def normalise_intensity(data: np.ndarray) -> np.ndarray:
    """Clip to ``[0, p99.5]`` of the positive voxels and divide: ``[0, 1]`` (as the phantom's T1)."""
    positive = data[data > 0]
    top = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    return np.clip(data / top, 0.0, 1.0).astype(np.float32)


def _tensor(data3: np.ndarray, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """``(X, Y, Z)`` array → ``(1, 1, *S)`` tensor (2D: the singleton third axis dropped)."""
    arr = data3[:, :, 0] if n == 2 else data3
    return torch.as_tensor(np.ascontiguousarray(arr), dtype=dtype, device=device)[None, None]


def model_input(data3: np.ndarray, affine: np.ndarray, grid: ModelGrid, device) -> torch.Tensor:
    """An image on the model grid as the model saw images in training (module docstring, step 2).

    Args:
        data3: ``(X, Y, Z)`` image; affine: its ``(4, 4)`` voxel → world affine.

    Returns:
        ``(1, 1, *grid.tensor_shape)`` float32 in ``[-1, 1]``.
    """
    return on_grid(normalise_intensity(data3), affine, grid, device) * 2 - 1


def on_grid(data3: np.ndarray, affine: np.ndarray, grid: ModelGrid, device, mode: str = "bilinear",
            dtype=torch.float32) -> torch.Tensor:
    """``(X, Y, Z)`` data with voxel → world ``affine`` resampled onto the model grid through world
    coordinates (0 outside): ``(1, 1, *grid.tensor_shape)`` (``mode="nearest"``, float64 for labels)."""
    n = grid.n
    src = _tensor(data3, n, device, dtype)
    to_src = normaliser(data3.shape) @ np.linalg.inv(affine) @ grid.affine  # grid voxel → source normalised
    coords = _transform_points(to_src, _voxel_points(grid.shape, n, 0, grid.shape[n - 1], device))
    return spatial.sample_at(src, coords[:, :n], mode, "zeros")


def grid_to_fixed(volume: torch.Tensor, grid: ModelGrid, fixed_affine: np.ndarray, fixed_shape) -> np.ndarray:
    """A map on the model grid ``(1, 1, *grid.tensor_shape)`` sampled (linearly, 0 outside) at every
    voxel of the fixed image: ``(X, Y, Z)`` float32, the fixed image's 3-axis ``fixed_shape``."""
    n = grid.n
    to_grid = normaliser(grid.shape) @ np.linalg.inv(grid.affine) @ fixed_affine  # fixed voxel → grid normalised
    out = np.zeros(tuple(fixed_shape[:n]), np.float32)
    for lo, hi in _slabs(out.shape):
        sl = (slice(None),) * (n - 1) + (slice(lo, hi),)
        p = _transform_points(to_grid, _voxel_points(fixed_shape, n, lo, hi, volume.device))
        out[sl] = spatial.sample_at(volume.double(), p[:, :n], "bilinear", "zeros")[0, 0].cpu().numpy()
    return out.reshape(tuple(fixed_shape))


# ---------------------------------------------------------------------------------- result
@dataclass
class RegistrationResult:
    """Everything ``fire register`` writes, in the fixed image's space.

    Attributes:
        warped: the moving image warped by FIRE: the fixed image's shape, affine and header,
            float32, the moving image's intensity units.
        warped_affine: the same with FIRE's affine part only.
        warped_labels: the moving labels warped (nearest neighbour, the labels' dtype) or None.
        displacement: ``(X, Y, Z, 3)`` fixed point → moving point, RAS mm, on the fixed grid.
        fixed_affine: the fixed image's ``(4, 4)`` voxel → world affine.
        affine_ras: ``(4, 4)`` FIRE's affine part in world (RAS) coordinates, fixed point → moving point.
        grid: the model grid.
        seconds: wall time of the registration (reading the inputs included).
        theta: ``(n, n+1)`` FIRE's affine part on the model grid's normalised coordinates.
        field: (property) ITK displacement field (``sitkVectorFloat64``, LPS mm, fixed grid; module docstring).
        affine: (property) ITK affine transform (LPS), fixed point → moving point.
    """

    warped: nib.Nifti1Image
    warped_affine: nib.Nifti1Image
    warped_labels: nib.Nifti1Image | None
    displacement: np.ndarray
    fixed_affine: np.ndarray
    affine_ras: np.ndarray
    grid: ModelGrid
    seconds: float
    theta: np.ndarray | None = None

    @cached_property
    def field(self) -> sitk.Image:
        return itk_displacement_field(self.displacement, self.fixed_affine)

    @cached_property
    def affine(self) -> sitk.AffineTransform:
        return itk_affine(self.affine_ras)

    def save(self, out, out_labels=None, field=None, affine=None) -> list[Path]:
        """Write the outputs that are given a path, all or none (see :func:`io.save_atomic`)."""
        check_output_paths(out, out_labels, field, affine, self.grid.n)
        if out_labels is not None and self.warped_labels is None:
            raise ValueError(f"{out_labels}: no warped labels to write (register with moving_labels)")
        writers = {out: nifti_writer(self.warped)}
        if out_labels is not None:
            writers[out_labels] = nifti_writer(self.warped_labels)
        if field is not None or affine is not None:
            import SimpleITK as sitk
        if field is not None:
            # float32 on disk, as ANTs writes its fields (10^-6 mm is plenty)
            writers[field] = lambda p: sitk.WriteImage(sitk.Cast(self.field, sitk.sitkVectorFloat32), str(p))
        if affine is not None:
            writers[affine] = lambda p: sitk.WriteTransform(self.affine, str(p))
        written = save_atomic(writers)
        log.info("wrote %s", ", ".join(map(str, written)))
        return written


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


# ---------------------------------------------------------------------------------- registrar
@dataclass
class Prepared:
    """A checked pair on the model grid (:meth:`Registrar.prepare`).

    Attributes:
        moving, fixed: ``(1, 1, *grid.tensor_shape)`` model inputs in [-1, 1].
        moving_labels, fixed_labels: ``(1, 1, *grid.tensor_shape)`` int64 labels on the model grid, or None.
        grid: the model grid; moving_image, fixed_image, moving_label_image: the loaded NIfTI;
            moving_data: the moving image's ``(X, Y, Z)`` array (read once).
        moving_name, fixed_name: the names messages use.
    """

    moving: torch.Tensor
    fixed: torch.Tensor
    moving_labels: torch.Tensor | None
    fixed_labels: torch.Tensor | None
    grid: ModelGrid
    moving_image: nib.Nifti1Image
    fixed_image: nib.Nifti1Image
    moving_data: np.ndarray
    moving_label_image: nib.Nifti1Image | None
    moving_name: str
    fixed_name: str


def resolve_device(device=None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is available")
    return device


def _describe(img: nib.Nifti1Image) -> str:
    sizes = ", ".join(f"{s:.3g}" for s in voxel_sizes(img.affine))
    return f"shape {tuple(img.shape)}, voxels ({sizes}) mm, {''.join(nib.aff2axcodes(img.affine))}"


class Registrar:
    """A FIRE checkpoint loaded once, registering any number of image pairs.

    Args:
        checkpoint: a ``fire train`` checkpoint (e.g. ``RUN/checkpoints/last.ckpt``).
        device: ``"cpu"``, ``"cuda"``, a :class:`torch.device`, or None / ``"auto"`` (CUDA if present).
        refine: FIRE+IO for every pair: a :class:`refine.RefineSettings`, a number of steps, or None
            (the network's output).
    """

    def __init__(self, checkpoint, device=None, refine=None):
        self.refine = RefineSettings(steps=refine) if isinstance(refine, int) and not isinstance(refine, bool) \
            else refine
        if self.refine is not None and not isinstance(self.refine, RefineSettings):
            raise ValueError(f"refine must be a number of steps or RefineSettings, got {refine!r}")
        self.device = resolve_device(device)
        self.checkpoint = Path(checkpoint)
        self.module = load_model(self.checkpoint).to(self.device)
        self.n = int(self.module.cfg.data.spatial_dims)
        self.spacing = tuple(float(s) for s in self.module.spacing)
        log.info("checkpoint %s: %dD model, %s mm voxels, on %s", self.checkpoint, self.n, self.spacing, self.device)

    # ------------------------------------------------------------------ inputs
    def _load(self, image, what: str, labels: bool = False) -> tuple[nib.Nifti1Image, str]:
        """A checked image and the name its messages use."""
        if isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            name = f"<{what} in memory>"
            check_image(image, f"{name}: {what}", labels=labels)
        else:
            name = str(image)
            image = load_nifti(image, what, labels=labels)
        image_dims = 2 if is_2d(image) else 3
        if image_dims != self.n:
            hint = " (a 2D image is a NIfTI whose third axis has size 1)" if self.n == 2 else ""
            raise ValueError(f"{name}: {what} is {image_dims}D (shape {tuple(image.shape)}) but the checkpoint "
                             f"{self.checkpoint} holds a {self.n}D model{hint}")
        return image, name

    @staticmethod
    def _check_labels(labels: nib.Nifti1Image, labels_name: str, image: nib.Nifti1Image, image_name: str,
                      role: str = "moving") -> None:
        if spatial_shape(labels) != spatial_shape(image):
            raise ValueError(f"{labels_name}: {role} labels have shape {tuple(labels.shape)}, the {role} image "
                             f"{image_name} {tuple(image.shape)}; they must share the grid")
        if not np.allclose(labels.affine, image.affine, rtol=0, atol=1e-3):
            raise ValueError(f"{labels_name}: {role} labels' voxel-to-world affine differs from the {role} image "
                             f"{image_name}'s; they must share the grid")

    def _warn_if_not_coplanar(self, fixed: nib.Nifti1Image, moving: nib.Nifti1Image) -> None:
        """2D: the fixed slice's corners should lie within half a slice of the moving slice's plane."""
        x, y = fixed.shape[0] - 1, fixed.shape[1] - 1
        corners = np.array([[0, 0, 0, 1], [x, 0, 0, 1], [0, y, 0, 1], [x, y, 0, 1]], dtype=float).T
        off = np.abs((np.linalg.inv(moving.affine) @ fixed.affine @ corners)[2])
        if off.max() > 0.5:
            log.warning("the 2D slices are not in the same plane (the fixed slice is up to %.2f slices off the "
                        "moving one); the moving slice is sampled where points project onto it, and the field / "
                        "affine outputs assume one plane", off.max())

    # ------------------------------------------------------------------ model inputs
    def prepare(self, moving, fixed, moving_labels=None, fixed_labels=None, keep_labels: bool = False) -> "Prepared":
        """Check and load a pair (paths or nibabel images) and put it on the model grid.

        Every input is checked before anything is computed (one-line errors naming the file).
        Labels are resampled nearest-neighbour onto the model grid (``keep_labels``: the moving
        labels are only loaded, for sampling later at full resolution).
        """
        mov, mov_name = self._load(moving, "moving image")
        fix, fix_name = self._load(fixed, "fixed image")
        labels = {}
        for role, path, image, image_name in (("moving", moving_labels, mov, mov_name),
                                              ("fixed", fixed_labels, fix, fix_name)):
            if path is not None:
                lab, lab_name = self._load(path, f"{role} labels", labels=True)
                self._check_labels(lab, lab_name, image, image_name, role)
                labels[role] = lab
        log.info("moving %s: %s", mov_name, _describe(mov))
        log.info("fixed %s: %s", fix_name, _describe(fix))
        if self.n == 2:
            self._warn_if_not_coplanar(fix, mov)
        grid = model_grid(fix.affine, spatial_shape(fix), self.spacing, self.n)
        log.info("model grid: shape %s, %s mm voxels, %s", grid.tensor_shape, self.spacing,
                 "".join(nib.aff2axcodes(grid.affine)))

        def on_model_grid(role):
            if role not in labels or (keep_labels and role == "moving"):
                return None
            lab = labels[role]
            return on_grid(spatial_data(lab, np.float64), lab.affine, grid, self.device, "nearest",
                           torch.float64).round().long()

        mov_data = spatial_data(mov)
        return Prepared(moving=model_input(mov_data, mov.affine, grid, self.device),
                        fixed=model_input(spatial_data(fix), fix.affine, grid, self.device),
                        moving_labels=on_model_grid("moving"), fixed_labels=on_model_grid("fixed"),
                        grid=grid, moving_image=mov, fixed_image=fix, moving_data=mov_data,
                        moving_label_image=labels.get("moving"),
                        moving_name=mov_name, fixed_name=fix_name)

    # ------------------------------------------------------------------ registration
    @torch.no_grad()
    def register(self, moving, fixed, moving_labels=None) -> RegistrationResult:
        """Register ``moving`` to ``fixed`` (paths or nibabel images); every input is checked first.

        Args:
            moving, fixed: 2D or 3D NIfTI images (as the checkpoint), any size/spacing/orientation.
            moving_labels: optional integer label map on the moving image's grid.

        Returns:
            :class:`RegistrationResult` (all in the fixed image's space).
        """
        t0 = time.perf_counter()
        pair = self.prepare(moving, fixed, moving_labels=moving_labels, keep_labels=True)
        mov, fix, lab, grid = pair.moving_image, pair.fixed_image, pair.moving_label_image, pair.grid
        t_model = time.perf_counter()
        reg = self.module.register(pair.moving, pair.fixed, refine=self.refine)
        t_model = time.perf_counter() - t_model
        theta = reg["theta"].double()
        u_nr = nonrigid_part(reg["field"], theta)

        lab_data = spatial_data(lab, np.float64) if lab is not None else None
        warped, warped_aff, warped_lab, disp = self._map_to_fixed(fix, spatial_shape(fix), mov, pair.moving_data,
                                                                  lab_data, grid, theta, u_nr)
        affine_ras = world_affine(theta[0].cpu().numpy(), grid)
        result = RegistrationResult(
            warped=image_like(fix, warped, np.float32, "fire register: warped moving image"),
            warped_affine=image_like(fix, warped_aff, np.float32, "fire register: moving image, affine only"),
            warped_labels=None if lab is None else image_like(fix, warped_lab, lab.get_data_dtype(),
                                                              "fire register: warped moving labels"),
            displacement=disp, fixed_affine=fix.affine, affine_ras=affine_ras,
            grid=grid,
            seconds=time.perf_counter() - t0,
            theta=theta[0].cpu().numpy(),
        )
        log.info("registered in %.2f s (model %.2f s) on %s; max displacement %.2f mm", result.seconds, t_model,
                 self.device, float(np.linalg.norm(disp, axis=-1).max()))
        return result

    def _map_to_fixed(self, fix, fix_shape, mov, mov_data, lab_data, grid: ModelGrid, theta, u_nr):
        """Sample the moving data at every fixed voxel (module docstring, step 4), slab by slab.

        Returns:
            warped, warped affine-only, warped labels (or None) as ``(X, Y, Z)`` arrays, and the
            world displacement ``(X, Y, Z, 3)`` (RAS mm) of the FIRE transform.
        """
        n, dev = self.n, self.device
        to_grid = normaliser(grid.shape) @ np.linalg.inv(grid.affine) @ fix.affine  # fixed voxel → grid normalised
        grid_to_world = grid.normalised_to_world()
        to_moving = normaliser(mov_data.shape) @ np.linalg.inv(mov.affine) @ grid_to_world
        mov_t = _tensor(mov_data, n, dev)
        lab_t = None if lab_data is None else _tensor(lab_data, n, dev, torch.float64)  # float64: exact large labels

        tensor_shape = fix_shape[:n]
        warped = np.zeros(tensor_shape, np.float32)
        warped_aff = np.zeros(tensor_shape, np.float32)
        warped_lab = None if lab_t is None else np.zeros(tensor_shape, np.float64)
        disp = np.zeros((*tensor_shape, 3), np.float64)
        for lo, hi in _slabs(tensor_shape):
            sl = (slice(None),) * (n - 1) + (slice(lo, hi),)
            p = _transform_points(to_grid, _voxel_points(fix_shape, n, lo, hi, dev))  # (1, 3, *S_slab)
            fire, aff = _fire_and_affine(p, theta, u_nr)
            s, s_aff = _transform_points(to_moving, fire)[:, :n], _transform_points(to_moving, aff)[:, :n]
            warped[sl] = spatial.sample_at(mov_t, s, "bilinear", "zeros")[0, 0].cpu().numpy()
            warped_aff[sl] = spatial.sample_at(mov_t, s_aff, "bilinear", "zeros")[0, 0].cpu().numpy()
            if lab_t is not None:
                warped_lab[sl] = spatial.sample_at(lab_t, s, "nearest", "zeros")[0, 0].cpu().numpy()
            d = _transform_points(grid_to_world, fire) - _transform_points(grid_to_world, p)
            disp[sl] = d[0].movedim(0, -1).cpu().numpy()

        def three(a):  # (X, Y[, Z]) → (X, Y, Z)
            return a.reshape(fix_shape + a.shape[n:])

        return three(warped), three(warped_aff), None if warped_lab is None else three(warped_lab), three(disp)

    def register_files(self, moving, fixed, out, moving_labels=None, out_labels=None, field=None,
                       affine=None) -> RegistrationResult:
        """Register and write: every input and output name is checked and the whole registration
        computed before anything is written; then all outputs are written, or none."""
        if (moving_labels is None) != (out_labels is None):
            given, missing = ("moving_labels", "out_labels") if out_labels is None else ("out_labels", "moving_labels")
            raise ValueError(f"{moving_labels or out_labels}: {given} needs {missing} as well")
        check_output_paths(out, out_labels, field, affine, self.n)
        result = self.register(moving, fixed, moving_labels)
        result.save(out, out_labels=out_labels, field=field, affine=affine)
        return result


# ---------------------------------------------------------------------------------- batch mode
@dataclass
class CSVReport:
    """Outcome of :func:`register_csv`: ``rows`` pairs tried; ``failures``: ``(row, message)``
    with rows numbered from 1 (the first line below the header); ``dice``: per scored row (one with
    ``fixed_labels``), ``{"row", "label value" → Dice, "mean"}``."""

    rows: int
    failures: list = dc_field(default_factory=list)
    dice: list = dc_field(default_factory=list)


def label_dice(warped_labels, fixed_labels) -> dict:
    """Dice of every non-zero label value of two label NIfTI files (or images) on the same grid:
    ``{value: Dice, ..., "mean": mean over the values}``; a value absent from both is left out."""
    a_img, b_img = (nib.load(str(x)) if not isinstance(x, nib.Nifti1Image) else x for x in (warped_labels, fixed_labels))
    a, b = np.asarray(a_img.dataobj), np.asarray(b_img.dataobj)
    if a.shape != b.shape or not np.allclose(a_img.affine, b_img.affine, atol=1e-3):
        raise ValueError(f"{fixed_labels}: fixed_labels are not on the fixed image's grid ({b.shape} vs {a.shape})")
    out = {}
    for v in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}):
        x, y = a == v, b == v
        out[int(v)] = float(2 * (x & y).sum() / max(int(x.sum() + y.sum()), 1))
    out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def read_pairs_csv(csv_path) -> list[dict]:
    """The rows of a pairs CSV as dicts of paths (None where a cell is empty); relative paths are
    relative to the CSV file's folder. Header: ``moving,fixed,out`` and optionally
    ``moving_labels,out_labels,field,affine,fixed_labels`` (``fixed_labels``: score the warped
    labels against them, see :func:`register_csv`)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: pairs CSV not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in CSV_REQUIRED if c not in header]
        unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
        if missing or unknown:
            raise ValueError(f"{csv_path}: the header must name {','.join(CSV_REQUIRED)} (and optionally "
                             f"{','.join(CSV_OPTIONAL)}); missing {missing}, unknown {unknown}")
        raw_rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not raw_rows:
        raise ValueError(f"{csv_path}: no pairs below the header")

    def resolve(cell: str):
        if not cell:
            return None
        p = Path(cell).expanduser()
        return p if p.is_absolute() else csv_path.parent / p

    return [{k: resolve(row.get(k, "")) for k in CSV_REQUIRED + CSV_OPTIONAL} for row in raw_rows]


def register_csv(checkpoint, csv_path, device=None, on_error: Callable[[str], None] | None = None,
                 refine=None) -> CSVReport:
    """Register every pair of a CSV (see :func:`read_pairs_csv`) with one loaded model.

    A row that fails (missing or bad file, ...) is reported through ``on_error`` (one line naming
    the CSV, the row and the file; default: logged as an error) and the others still run; a
    failed row writes nothing. Rows with ``fixed_labels`` (and ``out_labels``) are scored: Dice per
    label value of the written warped labels against them, in ``<csv>_dice.csv`` next to the CSV
    (one line per scored row, then the mean and std).
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    rows = read_pairs_csv(csv_path)
    registrar = Registrar(checkpoint, device=device, refine=refine)
    report = CSVReport(rows=len(rows))
    on_error = on_error or log.error
    with logging_redirect_tqdm():
        for i, row in enumerate(tqdm(rows, desc="register", unit="pair", file=sys.stderr, disable=None), start=1):
            missing = [k for k in CSV_REQUIRED if row[k] is None]
            try:
                if missing:
                    raise ValueError(f"empty {', '.join(missing)}")
                row = dict(row)
                fixed_labels = row.pop("fixed_labels")
                if fixed_labels is not None and row["out_labels"] is None:
                    raise ValueError(f"{fixed_labels}: fixed_labels needs moving_labels and out_labels to score")
                registrar.register_files(**row)
                if fixed_labels is not None:
                    report.dice.append({"row": i, **label_dice(row["out_labels"], fixed_labels)})
            except Exception as e:  # one bad pair must not stop the batch
                kind = "" if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: "
                message = f"{csv_path}: row {i}: {kind}{' '.join(str(e).split())}"
                report.failures.append((i, message))
                on_error(message)
    log.info("%d of %d pairs registered", report.rows - len(report.failures), report.rows)
    if report.dice:
        _write_dice(report.dice, Path(csv_path).with_name(Path(csv_path).stem + "_dice.csv"))
    return report


def _write_dice(rows: list[dict], path: Path) -> None:
    keys = sorted({k for r in rows for k in r if k not in ("row", "mean")}) + ["mean"]
    table = [[r["row"], *[r.get(k, "") for k in keys]] for r in rows]
    stats = [[name, *[f(np.array([r[k] for r in rows if k in r])) for k in keys]]
             for name, f in (("mean", np.mean), ("std", lambda v: v.std(ddof=1) if v.size > 1 else 0.0))]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["row", *[f"dice_{k}" for k in keys]], *table, *stats])
