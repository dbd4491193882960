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
  need ``.nrrd`` or ``.mha``, see :func:`itk_io.check_output_paths`).
* affine: ``sitk.AffineTransform(3)`` with ``y = A x + t`` (centre 0), the world form of ``theta``.

2D models (images with a singleton third axis): the through-plane coordinate is left as it is
(in model-grid coordinates the affine's through-plane row is the identity: points keep their
distance from the fixed slice's plane), so the moving point lies in the fixed image's plane,
and the moving slice is sampled where that point projects along its third axis. The field and
affine outputs therefore assume that both slices lie in the same plane; a warning is logged
when they do not.

Each step logs at INFO (sizes, voxel sizes, orientations, the model grid, seconds).

The code: :mod:`.geometry` (steps 1, 2 and the point maps), :mod:`.registrar` (checks, steps 3-4),
:mod:`.itk_io` (the ITK outputs), :mod:`.pairs_csv` (``--csv`` batches); this module gathers their API.
"""

from .geometry import (  # noqa: F401  (the registration API, gathered)
    CHUNK_POINTS,
    ModelGrid,
    grid_to_fixed,
    model_grid,
    model_input,
    nonrigid_part,
    normalise_intensity,
    normaliser,
    on_grid,
    world_affine,
)
from .itk_io import (  # noqa: F401
    AFFINE_SUFFIXES,
    FIELD_SUFFIXES,
    check_output_paths,
    itk_affine,
    itk_displacement_field,
    itk_geometry,
)
from .pairs_csv import CSV_OPTIONAL, CSV_REQUIRED, CSVReport, label_dice, read_pairs_csv, register_csv  # noqa: F401
from .registrar import Prepared, Registrar, RegistrationResult, resolve_device  # noqa: F401
