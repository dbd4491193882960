"""Greedy (PICSL's fast diffeomorphic registration, ``picsl_greedy``): Greedy-Affine and Greedy, with
normalised mutual information (NMI).

Greedy-Affine is a similarity (``-a -dof 7``) then a full affine (``-dof 12``) started from it, the first
from the images' centres of mass (``-moments 1``, as ANTs starts from its centre of mass) and, in 2D, from
that start turned by ±10°, ±20° and ±30° about the image centre, the result of the lowest NMI kept (as ANTs
keeps the best of its starts); Greedy is
Greedy's deformable registration started from it (``-it``), its time per pair the affine stages' plus the
deformable stage's. The images are handed over in memory as SimpleITK images on exactly the grid the
model sees (its voxel size), and Greedy composes its own transforms into one dense field on the fixed grid
(``-rc``), which comes back as the project's normalised field. (Greedy's affine matrices are in RAS
coordinates, its fields in ITK's physical coordinates; the composed field avoids reading the matrix.)
What Greedy prints from C++ is sent to /dev/null.

The defaults were chosen on the first 16 validation pairs of the 2D demo (64 × 72 pixels of 3 mm;
``benchmarks/tune_peers.py``, docs/benchmark.md, "Peers"; mean Dice of Greedy, the deformable method):

* NMI: Greedy's MI scored 55.2 % against 73.2 %, its affine stage failing (> 5 mm) on 6 of 16 pairs;
* the similarity stage before the affine one: a lone 12-parameter affine failed on one pair (69.8 %),
  rigid first (``6,12``) scored 71.7; centres of mass rather than image centres (72.1);
* affine iterations 200x200x100, coarsest first (100x50x10: 4 pairs fail, 65.2; which levels run: below);
* the deformable stage at full resolution only, 100 iterations: a three-level pyramid (200x100x50, the
  coarsest level 16 × 18 pixels) scored 70.7, two levels 72.4, 200 iterations 73.1;
* Greedy's own smoothing, ``-s 1.732vox 0.7071vox`` (1.2 / 0.5: 72.5, 3 / 1: 71.4), step ``-e 1`` (0.5: 69.6,
  2: 66.9);
* plain greedy updates: the stationary-velocity mode (``-sv``) scored 70.0 (69.4 with 200 iterations).

Those 16 pairs were two slices, and hid a weakness: on the first 40 validation pairs Greedy's affine stage
failed (> 5 mm) on 14 (deformable Dice 63.4); a random rigid search first (``search=(1000, 20, 10)``) on 15,
second-order moments (``-moments 2``) on 34; the better of two starts by the metric did not help.
On all 80 validation pairs (35 failures of 80, deformable Dice 57.2, before):

* no affine level narrower than 24 voxels (``min_level_voxels``, kept): the demo's 64 × 72 keeps two levels,
  32 × 36 and 64 × 72 (32 of 80, 61.9). In 3D it leaves out the 12-voxel level of a 48-voxel volume, where
  Greedy's affine had diverged (a deformable stage of NaN twice on a test pair), and keeps 24 and 48;
* the grid's centre at the physical origin (``centre_origin``, off): Greedy's affine matrices act about the
  physical origin, which SimpleITK puts at the first voxel, so a rotation about it is also a large shift;
  centred, its rotations and scalings act about the image centre, and its affine failed on 19 of 80 (66.9,
  with the level above). But on some pairs its affine then diverges, not reproducibly on two threads (scales of
  about 11 on a test pair, in 6 runs of 6), and its deformable stage returns only NaN: two benchmark runs
  stopped on a test pair where it failed twice in a row. Computing the affine on the centred grid and moving
  its matrix to the uncentred one before the deformable stage (a one-off change) kept the divergence. With
  the origin at the first voxel, in the same repeats, it never did. A diverged affine (scales outside [0.1, 10],
  :func:`~.common.check_scales`) now counts as the affine stage's failure and is retried.

None of these removed the remaining failures on the validation pairs: Powell's method (``-powell``, 4× the
time), the sample jitter (``-jitter``), inputs smoothed by 1 or 2 voxels, a fixed-image mask (``-gm``), a unit
voxel size, a random rigid search (docs/benchmark.md). What did, in 2D (all 80 validation pairs, 1 thread,
affine failures; docs/benchmark.md, "Greedy's starts"):

* **several starts** (``rotation_starts``): the chain from the centres of mass turned by 0, ±10°, ±20° and
  ±30° about the fixed grid's centre, the result of the lowest final NMI kept (a start that diverges is
  dropped): 5 of 80 (Greedy 71.65; 6 with 0, ±20° and ±30°, 7 with 0 and ±20°). Greedy's own random search
  (``-search``) chooses among its starts before optimising them, and did not help;
* **a padded reference space** (``ref_pad``, ``-ref-pad 8x8``: the fixed grid grown by 8 voxels for the affine
  stages, so that a moving image turned or scaled past the fixed image's edge still counts): with one start 25
  of 80 instead of 32; with five starts (0, ±20°, ±30°) and no padding 5, but some with errors of hundreds of
  mm (Greedy-Affine 65.04, against 67.08 padded).

The time is the price: with the seven starts Greedy takes 1.06 s a pair on one thread, against 0.21. In 3D
one start and no padding (``start_dims``): Greedy-Affine did not fail on the 3D validation or test pairs,
whose rotations are smaller (up to 10° about each axis). The failures left are
Greedy's metric more than its start: with the moving image moved by the true affine beforehand, Greedy's affine
from there moved it more than 5 mm away again on 6 of the 80 pairs (10 with the padding).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from .common import both_ways, check_finite, check_scales, field_from_itk, image_from_itk, quiet, twice, unit_array

METHODS = ("Greedy-Affine", "Greedy")


def _levels(iterations) -> str:
    """Iterations per level, coarsest first → Greedy's ``100x50x20`` (the shrink factors are 2^k ... 1)."""
    return "x".join(str(int(i)) for i in (iterations if isinstance(iterations, (tuple, list)) else (iterations,)))


@dataclass
class GreedyParams:
    """Every parameter of the Greedy calls (recorded in ``results.json``; the choices: the module's docstring).

    ``affine_init``: ``moments`` (centres of mass, ``-moments 1``), or ``identity`` / ``centers`` (no move: the
    two images share one grid, so their centres coincide); the affine chain starts from it turned by each of
    ``rotation_starts`` (:func:`_best_of_starts`). ``sigmas``: ``-s`` — the smoothing of each update (fluid)
    and of the field (elastic), in voxels. Iterations per level, coarsest first: Greedy halves the resolution
    per level."""

    metric: str = "NMI"
    affine_init: str = "moments"
    affine_dofs: tuple = (7, 12)  # the affine stages' degrees of freedom, each started from the one before
    affine_iterations: tuple = (200, 200, 100)  # per level, coarsest first
    search: tuple = ()  # -search N rot tran: N random rigid starts (rotation sd in degrees, offset sd in mm) first
    rotation_starts: tuple = (0, -10, 10, -20, 20, -30, 30)  # degrees: the affine from each turned start, best kept
    ref_pad: int = 8  # -ref-pad: the affine stages' reference space, the fixed grid padded by this many voxels
    start_dims: tuple = (2,)  # the dimensions where rotation_starts and ref_pad apply (3D: one start, no padding)
    min_level_voxels: int = 24  # a level whose shortest axis would have fewer voxels is left out (coarsest first)
    centre_origin: bool = False  # the grid's centre at the physical origin (off: the deformable stage's NaN)
    iterations: tuple = (100,)  # the deformable stage's, per level: one, at full resolution
    sigmas: tuple = (1.732, 0.7071)  # Greedy's defaults
    step: float = 1.0  # -e: the deformable update's step (voxels)
    stationary_velocity: bool = False  # -sv: a stationary velocity field, exponentiated (Greedy's diffeomorphic mode)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    random_seed: int = 1
    ice_every: int = 1  # as AntsParams.ice_every: every k-th pair is also registered the other way round

    def __post_init__(self):
        if not isinstance(self.affine_dofs, (tuple, list)):  # one stage: affine_dofs=12
            self.affine_dofs = (int(self.affine_dofs),)
        for key in ("rotation_starts", "start_dims"):  # one value: rotation_starts=0
            if not isinstance(getattr(self, key), (tuple, list)):
                setattr(self, key, (getattr(self, key),))
        if not self.rotation_starts:
            raise ValueError("GreedyParams.rotation_starts needs at least one angle (0: the start itself)")
        if self.affine_init not in ("moments", "centers", "identity"):
            raise ValueError(f"GreedyParams.affine_init is 'moments', 'centers' or 'identity', "
                             f"not {self.affine_init!r}")

    def starts(self, ndim: int) -> tuple:
        """The rotations (degrees) the affine chain starts from, for ``ndim``-D images: ``rotation_starts``
        in ``start_dims``, else the start itself."""
        return tuple(float(a) for a in self.rotation_starts) if ndim in self.start_dims else (0.0,)

    def affine_levels(self, shape=None) -> tuple:
        """``affine_iterations`` without the levels coarser than ``min_level_voxels`` along the shortest axis
        of ``shape`` (the image's size; level k of L has the size / 2^(L-1-k)); the finest level always stays."""
        its = tuple(self.affine_iterations) if isinstance(self.affine_iterations, (tuple, list)) \
            else (self.affine_iterations,)
        if shape is None:
            return its
        while len(its) > 1 and min(shape) / 2 ** (len(its) - 1) < self.min_level_voxels:
            its = its[1:]
        return its

    def affine_commands(self, seed: int, shape=None, start: str = "start.mat") -> list[tuple[str, str]]:
        """The affine stages' calls (``-a -dof N``) for images of ``shape`` (:meth:`affine_levels`; with
        ``ref_pad`` where ``len(shape)`` is in ``start_dims``) and their outputs, the first started from the
        matrix file ``start``, each next one from the one before, the last one writing ``aff``."""
        init = f"-ia {start}"
        if self.search:
            init += " -search " + " ".join(str(v) for v in self.search)
        pad = ""
        if shape is not None and self.ref_pad and len(shape) in self.start_dims:
            pad = " -ref-pad " + "x".join([str(int(self.ref_pad))] * len(shape))
        out = []
        for k, dof in enumerate(self.affine_dofs):
            name = "aff" if k == len(self.affine_dofs) - 1 else f"aff{k}"
            out.append((f"-threads {self.threads} -seed {seed} -i fix mov -a -dof {dof} {init} "
                        f"-n {_levels(self.affine_levels(shape))} -m {self.metric}{pad} -o {name}", name))
            init = f"-ia {name}"
        return out

    def deformable_command(self, seed: int) -> str:
        s0, s1 = self.sigmas
        sv = " -sv" if self.stationary_velocity else ""
        return (f"-threads {self.threads} -seed {seed} -i fix mov -it aff -n {_levels(self.iterations)} "
                f"-m {self.metric} -s {s0}vox {s1}vox -e {self.step}{sv} -o warp")

    def record(self) -> dict:
        from importlib.metadata import version

        out = dataclasses.asdict(self)
        out.update(picsl_greedy=version("picsl_greedy"), intensities="[0, 1]",
                   affine_calls=[c for c, _ in self.affine_commands(self.random_seed)],
                   deformable_call=self.deformable_command(self.random_seed))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _to_sitk(x: torch.Tensor, spacing, centre_origin: bool):
    """``(1, *S)`` in [-1, 1] → a SimpleITK image in [0, 1] of voxel size ``spacing``, its centre at the physical
    origin with ``centre_origin`` (else its first voxel, SimpleITK's default)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(unit_array(x))
    img.SetSpacing(tuple(float(s) for s in spacing))
    if centre_origin:
        img.SetOrigin(tuple(-(n - 1) / 2 * float(s) for n, s in zip(img.GetSize(), img.GetSpacing())))
    return img


def _turned_start(base, degrees: float, f, path: str) -> str:
    """Greedy's matrix ``base`` (RAS, fixed → moving, homogeneous) after a turn by ``degrees`` in the plane of the
    first two axes about the centre of ``f``'s grid (the fixed image), written to ``path`` for ``-ia``."""
    import numpy as np

    n = f.GetDimension()
    lps = f.TransformContinuousIndexToPhysicalPoint([(k - 1) / 2 for k in f.GetSize()])
    centre = np.array(lps) * np.array([-1.0, -1.0] + [1.0] * (n - 2))  # ITK's LPS → Greedy's RAS
    a = np.radians(degrees)
    turn = np.eye(n + 1)
    turn[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    turn[:n, n] = centre - turn[:n, :n] @ centre
    np.savetxt(path, np.asarray(base, dtype=np.float64) @ turn)
    return path


def _final_metric(g) -> float:
    """Greedy's metric (lower is better) at the last iteration of the finest level of its last call."""
    return float(g.metric_log()[-1]["TotalPerPixelMetric"][-1])


def _best_of_starts(base, starts, f, run):
    """``run(path)`` (the affine chain from the matrix file ``path`` → its Greedy object) from ``base`` turned by
    each of ``starts`` (degrees, :func:`_turned_start`) → the object of the lowest final metric (ties: the
    earlier start). A start whose chain raises (diverged, non-finite) is dropped; if every start does, a
    ``RuntimeError`` names each start's error (with one start: that start's own error)."""
    import tempfile

    kept, errors = [], []
    with tempfile.TemporaryDirectory(prefix="greedy-") as tmp:
        for k, degrees in enumerate(starts):
            path = _turned_start(base, degrees, f, f"{tmp}/start{k}.mat")
            if len(starts) == 1:
                return run(path)
            try:
                one = run(path)
            except RuntimeError as e:
                errors.append(f"{degrees:g}°: {e}")
                continue
            kept.append((_final_metric(one), k, one))
    if not kept:
        raise RuntimeError(f"Greedy's affine failed from every start ({'; '.join(errors)})")
    return min(kept, key=lambda r: (r[0], r[1]))[2]


def _register(make, f, m, p: GreedyParams, spacing) -> dict:
    """Greedy-Affine then Greedy (started from it) of ``m`` onto ``f`` → method → field, seconds, warped.

    ``make()`` gives a Greedy object; each attempt, and each of the affine's starts (:meth:`GreedyParams.starts`),
    gets a new one, so that a retry starts from a clean Greedy. The affine chain runs from each start (the
    centres-of-mass alignment turned by each angle, :func:`_best_of_starts`) and the result of the lowest final
    metric is kept; with several starts, one that diverges is dropped and the stage fails only when every start
    does."""
    import numpy as np
    import SimpleITK as sitk

    g = None

    def chain(seed: int, start: str):
        one = make()
        with quiet():
            for command, name in p.affine_commands(seed, f.GetSize(), start):
                one.execute(command, fix=f, mov=m, **{name: None})
                check_finite("Greedy's affine", one[name])
                check_scales("Greedy's affine", one[name])
        return one

    def affine(attempt: int, _):
        nonlocal g
        seed = p.random_seed + attempt - 1
        base = np.eye(f.GetDimension() + 1)  # identity, and image centres: the two grids are the same
        if p.affine_init == "moments":
            first = make()
            with quiet():
                first.execute(f"-threads {p.threads} -i fix mov -moments 1 -o mom", fix=f, mov=m, mom=None)
            base = np.asarray(first["mom"], dtype=np.float64)
        g = _best_of_starts(base, p.starts(f.GetDimension()), f, lambda path: chain(seed, path))

    def deformable(attempt: int, _):
        with quiet():
            g.execute(p.deformable_command(p.random_seed + attempt - 1), warp=None)
        check_finite("Greedy's deformable stage", sitk.GetArrayViewFromImage(g["warp"]))

    _, (t_aff, t_def) = twice((affine, deformable), "Greedy")
    out = {}
    for name, spec, secs in (("Greedy-Affine", "aff", t_aff), ("Greedy", "warp aff", t_aff + t_def)):
        with quiet():
            g.execute(f"-threads {p.threads} -rf fix -rm mov res -rc comp -r {spec}", res=None, comp=None)
        vec = sitk.GetArrayFromImage(g["comp"])
        check_finite(f"{name}'s composed field", vec)
        out[name] = {"field": field_from_itk(vec, spacing), "seconds": secs,
                     "warped": image_from_itk(sitk.GetArrayFromImage(g["res"]))}
    return out


def register_pair(moving: torch.Tensor, fixed: torch.Tensor, spacing, params: GreedyParams | None = None,
                  inverse: bool = True) -> dict:
    """Greedy-Affine and Greedy for one pair, and (``inverse``) for the swapped pair.

    Args:
        moving, fixed: ``(1, *S)`` images in [-1, 1] on the same grid (2D or 3D).
        spacing: voxel size in mm per axis.
        inverse: also register ``fixed`` onto ``moving``, for the inverse-consistency error (untimed).

    Returns:
        method → {``field`` ``(n, *S)`` normalised (fixed → moving), ``inverse`` ``(n, *S)`` (with
        ``inverse``), ``seconds`` (Greedy includes its affine stage), ``warped`` ``(1, *S)`` Greedy's own
        linearly resliced moving image in [-1, 1]}.
    """
    from picsl_greedy import Greedy2D, Greedy3D

    p = params or GreedyParams()
    cls = Greedy2D if moving.dim() == 3 else Greedy3D
    f, m = (_to_sitk(x, spacing, p.centre_origin) for x in (fixed, moving))
    return both_ways(lambda a, b: _register(cls, a, b, p, spacing), f, m, inverse)

