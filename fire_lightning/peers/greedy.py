"""Greedy (PICSL's fast diffeomorphic registration, ``picsl_greedy``): Greedy-Affine and Greedy, with
normalised mutual information (NMI).

Greedy-Affine is a 12-parameter affine (``-a -dof 12``) started from the images' centres of mass
(``-moments 1``, as ANTs starts from its centre of mass); Greedy is Greedy's deformable registration
started from it (``-it``), its time per pair the affine stage's plus the deformable stage's. The images
are handed over in memory as SimpleITK images on exactly the grid the model sees (its voxel size), and
Greedy composes its own transforms into one dense field on the fixed grid (``-rc``), which comes back as
the project's normalised field. (Greedy's affine matrices are in RAS coordinates, its fields in ITK's
physical coordinates; the composed field avoids reading the matrix at all.)

The defaults were chosen on the validation pairs of the 2D demo (``benchmarks/tune_peers.py``,
docs/benchmark.md, "Peers"): see :class:`GreedyParams`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from .common import check_finite, field_from_itk, image_from_itk, quiet, twice, unit_array

METHODS = ("Greedy-Affine", "Greedy")


def _levels(iterations) -> str:
    """Iterations per level, coarsest first → Greedy's ``100x50x20`` (the shrink factors are 2^k ... 1)."""
    return "x".join(str(int(i)) for i in iterations)


@dataclass
class GreedyParams:
    """Every parameter of the Greedy calls (recorded in ``results.json``).

    ``affine_init``: ``moments`` (centres of mass, ``-moments 1``), ``centers`` (image centres) or
    ``identity``. ``sigmas``: ``-s`` — the smoothing of each update (fluid) and of the field (elastic),
    in voxels."""

    metric: str = "NMI"
    affine_init: str = "moments"
    affine_iterations: tuple = (200, 200, 100)  # per level, coarsest first
    iterations: tuple = (200, 100, 50)  # the deformable stage's, per level
    sigmas: tuple = (1.732, 0.7071)  # Greedy's defaults
    step: float = 1.0  # -e: the deformable update's step (voxels)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    random_seed: int = 1
    ice_every: int = 1  # as AntsParams.ice_every: every k-th pair is also registered the other way round

    def affine_command(self, seed: int, init: str) -> str:
        return (f"-threads {self.threads} -seed {seed} -i fix mov -a -dof 12 {init} -n "
                f"{_levels(self.affine_iterations)} -m {self.metric} -o aff")

    def deformable_command(self) -> str:
        s0, s1 = self.sigmas
        return (f"-threads {self.threads} -i fix mov -it aff -n {_levels(self.iterations)} -m {self.metric} "
                f"-s {s0}vox {s1}vox -e {self.step} -o warp")

    def record(self) -> dict:
        from importlib.metadata import version

        out = dataclasses.asdict(self)
        out.update(picsl_greedy=version("picsl_greedy"), intensities="[0, 1]",
                   affine_call=self.affine_command(self.random_seed, "-ia mom" if self.affine_init == "moments"
                                                   else "-ia-image-centers" if self.affine_init == "centers" else ""),
                   deformable_call=self.deformable_command())
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _to_sitk(x: torch.Tensor, spacing):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(unit_array(x))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def _register(g, f, m, p: GreedyParams, spacing) -> dict:
    """Greedy-Affine then Greedy (started from it) of ``m`` onto ``f`` → method → field, seconds, warped."""
    import SimpleITK as sitk

    def affine(attempt: int):
        seed = p.random_seed + attempt - 1
        init = {"moments": "-ia mom", "centers": "-ia-image-centers", "identity": ""}[p.affine_init]
        with quiet():
            if p.affine_init == "moments":
                g.execute(f"-threads {p.threads} -i fix mov -moments 1 -o mom", fix=f, mov=m, mom=None)
            g.execute(p.affine_command(seed, init), fix=f, mov=m, aff=None)
        check_finite("Greedy's affine", g["aff"])

    def deformable(attempt: int):
        with quiet():
            g.execute(p.deformable_command(), warp=None)
        check_finite("Greedy's deformable stage", sitk.GetArrayViewFromImage(g["warp"]))

    _, t_aff = twice(affine, "Greedy-Affine")
    _, t_def = twice(deformable, "Greedy")
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
    f, m = _to_sitk(fixed, spacing), _to_sitk(moving, spacing)
    out = _register(cls(), f, m, p, spacing)
    if inverse:
        back = _register(cls(), m, f, p, spacing)
        for name in out:
            out[name]["inverse"] = back[name]["field"]
    return out

