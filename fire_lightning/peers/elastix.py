"""elastix (``itk-elastix``): elastix-Affine and elastix-B-spline, with Mattes mutual information.

elastix-Affine is elastix's affine transform started from the images' centres of gravity
(``AutomaticTransformInitializationMethod CenterOfGravity``, as ANTs starts from its centre of mass);
elastix-B-spline is a B-spline transform started from it (the affine result as the initial
transform), its time per pair the affine stage's plus the B-spline
stage's. The images are handed over in memory as ITK images on exactly the grid the model sees (its
voxel size); transformix turns each result into a dense deformation field on the fixed grid (elastix's
transforms map fixed points to moving points, as the project's fields do), which comes back as the
project's normalised field.

The defaults were chosen on the first 16 validation pairs of the 2D demo (64 × 72 pixels of 3 mm;
``benchmarks/tune_peers.py``, docs/benchmark.md, "Peers"; mean Dice of elastix-B-spline, 77.6 % with them):

* elastix's own sampling, 2048 random points per iteration (every voxel: 77.0, the same time), 32 bins
  (16: 77.0), 3 resolutions (4: 77.3), 256 iterations (512: 77.7 at 1.6 × the time);
* a final B-spline grid of 18 mm (12 mm: 74.9, and it folds; 24 mm: 77.4; 30 mm: 77.3);
* no bending-energy penalty (elastix's default B-spline map has one; weight 1 scored 77.6 at 1.4 × the
  time) — and with itk-elastix 0.25.4 the penalty crashes elastix (a segmentation fault) when it runs on
  more than one thread, so a weight > 0 needs ``threads=1``.

In 3D the grid is 42 mm: on the 8 validation pairs of the whole-volume 3D benchmark (48 × 56 × 48 voxels of
4 mm, an elastic part of 7 control points over the volume) elastix-B-spline scored 68.0 with 18 mm, 69.5 with
24, 71.2 with 30, 71.6 with 36, 71.75 with 42, 71.7 with 48 and 71.5 with 60 mm; 8192 samples (69.8 at 24 mm),
512 iterations (69.6 at 24 mm), 4 affine resolutions or 512 affine iterations (71.8 / 71.7 at 42 mm) changed
little, and a 12 mm grid folded.

The first call in a process loads itk's elastix module (about 10 s); that happens before any timed call.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import torch

from .common import both_ways, check_finite, field_from_itk, image_from_itk, quiet, twice, unit_array

METHODS = ("elastix-Affine", "elastix-B-spline")
#: the final B-spline grid (mm) by the images' dimension, when ``ElastixParams.grid_spacing_mm`` is None
GRID_SPACING_MM = {2: 18.0, 3: 42.0}


@dataclass
class ElastixParams:
    """Every elastix parameter this module sets (recorded in ``results.json``; the rest are elastix's
    default ``affine`` and ``bspline`` maps; the choices: the module's docstring). ``sampler``: ``Full``
    (every voxel) or ``RandomCoordinate`` (``samples`` new points every iteration)."""

    bins: int = 32  # NumberOfHistogramBins
    sampler: str = "RandomCoordinate"
    samples: int = 2048  # NumberOfSpatialSamples, with a random sampler
    affine_resolutions: int = 3
    affine_iterations: int = 256  # MaximumNumberOfIterations per resolution
    resolutions: int = 3  # the B-spline stage's
    iterations: int = 256
    grid_spacing_mm: Optional[float] = None  # FinalGridSpacingInPhysicalUnits; None: GRID_SPACING_MM by dimension
    bending_weight: float = 0.0  # Metric1Weight of a bending-energy penalty (0: none; needs threads=1)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    random_seed: int = 1
    ice_every: int = 1  # as AntsParams.ice_every: every k-th pair is also registered the other way round

    def grid_spacing(self, n: int) -> float:
        """The final B-spline grid (mm) for ``n``-dimensional images."""
        return float(self.grid_spacing_mm) if self.grid_spacing_mm is not None else GRID_SPACING_MM[n]

    def maps(self, seed: int, n: int = 2) -> tuple[dict, dict]:
        """The affine and the B-spline parameter maps for ``n``-dimensional images (names → lists of
        strings, as elastix reads them)."""
        import itk

        po = itk.ParameterObject.New()
        common = {"NumberOfHistogramBins": [str(self.bins)], "ImageSampler": [self.sampler],
                  "NumberOfSpatialSamples": [str(self.samples)], "RandomSeed": [str(seed)],
                  "WriteResultImage": ["false"]}
        aff = dict(po.GetDefaultParameterMap("affine", int(self.affine_resolutions)))
        aff.update(common, AutomaticTransformInitialization=["true"],
                   AutomaticTransformInitializationMethod=["CenterOfGravity"],
                   MaximumNumberOfIterations=[str(self.affine_iterations)])
        bsp = dict(po.GetDefaultParameterMap("bspline", int(self.resolutions), self.grid_spacing(n)))
        bsp.update(common, MaximumNumberOfIterations=[str(self.iterations)])
        if self.bending_weight > 0:  # elastix's default B-spline map: MI + the penalty
            bsp.update(Metric1Weight=[str(self.bending_weight)])
        else:  # MI alone: the grid spacing is the regulariser
            bsp.update(Metric=["AdvancedMattesMutualInformation"], Registration=["MultiResolutionRegistration"])
            bsp.pop("Metric0Weight", None), bsp.pop("Metric1Weight", None)
        return {k: list(v) for k, v in aff.items()}, {k: list(v) for k, v in bsp.items()}

    def record(self) -> dict:
        from importlib.metadata import version

        aff = self.maps(self.random_seed)[0]
        out = dataclasses.asdict(self)
        out.update(itk_elastix=version("itk-elastix"), intensities="[0, 1]", affine_map=aff,
                   bspline_maps={f"{n}D": self.maps(self.random_seed, n)[1] for n in (2, 3)},
                   bspline_initial_transform="the elastix-Affine result")
        return out


def _parameter_object(*maps: dict):
    import itk

    po = itk.ParameterObject.New()
    for m in maps:
        po.AddParameterMap(m)
    return po


def _to_itk(x: torch.Tensor, spacing):
    import itk

    img = itk.image_from_array(unit_array(x))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def _register(f, m, p: ElastixParams, spacing) -> dict:
    """elastix-Affine then elastix-B-spline (started from it) of ``m`` onto ``f`` → method → field, seconds,
    warped."""
    import itk

    def run(attempt: int, stage: int, initial=None):
        """Stage 0 (affine) or 1 (B-spline, from ``initial``) → elastix's transform parameter object."""
        maps = p.maps(p.random_seed + attempt - 1, len(spacing))
        kw = {} if initial is None else {"initial_transform_parameter_object": initial}
        with quiet():
            _, transform = itk.elastix_registration_method(f, m, parameter_object=_parameter_object(maps[stage]),
                                                           log_to_console=False, number_of_threads=p.threads, **kw)
        maps = [transform.GetParameterMap(i) for i in range(transform.GetNumberOfParameterMaps())]
        check_finite("elastix", [float(v) for t in maps for v in t["TransformParameters"]])
        return transform

    (aff, bsp), (t_aff, t_bsp) = twice((lambda attempt, _: run(attempt, 0),
                                        lambda attempt, affine: run(attempt, 1, affine)), "elastix")
    out = {}
    for name, transform, secs in (("elastix-Affine", aff, t_aff), ("elastix-B-spline", bsp, t_aff + t_bsp)):
        # transformix writes the field into its output folder (else the working directory)
        with quiet(), tempfile.TemporaryDirectory(prefix="fire-transformix-") as tmp:
            kw = dict(log_to_console=False, output_directory=tmp)
            vec = itk.array_from_image(itk.transformix_deformation_field(f, transform, **kw))
            warped = itk.array_from_image(itk.transformix_filter(m, transform, **kw))
        check_finite(f"{name}'s deformation field", vec)
        out[name] = {"field": field_from_itk(vec, spacing), "seconds": secs, "warped": image_from_itk(warped)}
    return out


def register_pair(moving: torch.Tensor, fixed: torch.Tensor, spacing, params: ElastixParams | None = None,
                  inverse: bool = True) -> dict:
    """elastix-Affine and elastix-B-spline for one pair, and (``inverse``) for the swapped pair.

    Args:
        moving, fixed: ``(1, *S)`` images in [-1, 1] on the same grid (2D or 3D).
        spacing: voxel size in mm per axis.
        inverse: also register ``fixed`` onto ``moving``, for the inverse-consistency error (untimed).

    Returns:
        method → {``field`` ``(n, *S)`` normalised (fixed → moving), ``inverse`` ``(n, *S)`` (with
        ``inverse``), ``seconds`` (elastix-B-spline includes its affine stage), ``warped`` ``(1, *S)``
        transformix's warped moving image in [-1, 1]}.
    """
    import itk

    # itk loads its elastix module on first use (seconds): before any timed call
    itk.ElastixRegistrationMethod, itk.TransformixFilter, itk.ParameterObject  # noqa: B018
    p = params or ElastixParams()
    if p.bending_weight > 0 and p.threads > 1:  # measured with itk-elastix 0.25.4: a segmentation fault
        raise ValueError("elastix's bending-energy penalty crashes elastix when it runs on more than one thread; "
                         "use bending_weight=0 or threads=1")
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(p.threads))  # transformix too
    f, m = _to_itk(fixed, spacing), _to_itk(moving, spacing)
    return both_ways(lambda a, b: _register(a, b, p, spacing), f, m, inverse)
