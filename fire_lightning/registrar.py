"""The :class:`Registrar`: a FIRE checkpoint loaded once, registering NIfTI pairs of any size, spacing and
orientation, with the outputs in the fixed image's space (:class:`RegistrationResult`). How it works:
:mod:`fire_lightning.register`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch

from . import spatial
from .geometry import (
    ModelGrid,
    fire_and_affine,
    image_tensor,
    model_grid,
    model_input,
    nonrigid_part,
    normaliser,
    on_grid,
    slabs,
    transform_points,
    voxel_points,
    world_affine,
)
from .inference import load_model
from .io import (
    check_image,
    image_like,
    is_2d,
    load_nifti,
    nifti_writer,
    save_atomic,
    spatial_data,
    spatial_shape,
    voxel_sizes,
)
from .itk_io import check_output_paths, itk_affine, itk_displacement_field
from .refine import RefineSettings

if TYPE_CHECKING:  # SimpleITK is imported where ITK outputs are made: a plain registration does not need it
    import SimpleITK as sitk

log = logging.getLogger(__name__)


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
        field: (property) ITK displacement field (``sitkVectorFloat64``, LPS mm, fixed grid; :mod:`.itk_io`).
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
        """Sample the moving data at every fixed voxel (:mod:`.register`, step 4), slab by slab.

        Returns:
            warped, warped affine-only, warped labels (or None) as ``(X, Y, Z)`` arrays, and the
            world displacement ``(X, Y, Z, 3)`` (RAS mm) of the FIRE transform.
        """
        n, dev = self.n, self.device
        to_grid = normaliser(grid.shape) @ np.linalg.inv(grid.affine) @ fix.affine  # fixed voxel → grid normalised
        grid_to_world = grid.normalised_to_world()
        to_moving = normaliser(mov_data.shape) @ np.linalg.inv(mov.affine) @ grid_to_world
        mov_t = image_tensor(mov_data, n, dev)
        # float64: exact large labels
        lab_t = None if lab_data is None else image_tensor(lab_data, n, dev, torch.float64)

        tensor_shape = fix_shape[:n]
        warped = np.zeros(tensor_shape, np.float32)
        warped_aff = np.zeros(tensor_shape, np.float32)
        warped_lab = None if lab_t is None else np.zeros(tensor_shape, np.float64)
        disp = np.zeros((*tensor_shape, 3), np.float64)
        for lo, hi in slabs(tensor_shape):
            sl = (slice(None),) * (n - 1) + (slice(lo, hi),)
            p = transform_points(to_grid, voxel_points(fix_shape, n, lo, hi, dev))  # (1, 3, *S_slab)
            fire, aff = fire_and_affine(p, theta, u_nr)
            s, s_aff = transform_points(to_moving, fire)[:, :n], transform_points(to_moving, aff)[:, :n]
            warped[sl] = spatial.sample_at(mov_t, s, "bilinear", "zeros")[0, 0].cpu().numpy()
            warped_aff[sl] = spatial.sample_at(mov_t, s_aff, "bilinear", "zeros")[0, 0].cpu().numpy()
            if lab_t is not None:
                warped_lab[sl] = spatial.sample_at(lab_t, s, "nearest", "zeros")[0, 0].cpu().numpy()
            d = transform_points(grid_to_world, fire) - transform_points(grid_to_world, p)
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
