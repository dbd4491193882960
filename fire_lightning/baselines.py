"""ANTs baselines through antspyx: ANTs-Affine and ANTs-SyN, both with Mattes mutual information.

Each pair is registered on exactly the grid the model sees (the data module's tensors, with
their voxel size), and the result is returned as the project's normalised displacement field
(``spatial`` conventions), so labels are warped and scored by the same code as FIRE's.

Giving the baseline its best fair chance (measured on the phantom test pairs, docs/benchmark.md):

* intensities are passed in [0, 1], not the network's [-1, 1]: ANTs' centre-of-mass
  initialisation weighs voxels by intensity, and negative background breaks it;
* dense metric sampling (``regular`` at rate 1.0) at every level: antspyx's default random
  20 % starves the 32-bin joint histogram on small 2D images, and about half of the
  multi-modal pairs then fail;
* SyN iterates at full resolution: antspyx's default ``reg_iterations=(40, 20, 0)`` skips it;
* in 2D the affine runs from four starts and the result of lowest Mattes MI
  (``ants.image_mutual_information``) is kept: the centre of mass (antspyx's default), the best start of
  ANTs' own multi-start rotation search (antsAffineInitializer: 15° steps over ±27°, 100 local iterations
  each), the same search from the images' principal axes, and no move (``aff_starts``). From the centre of
  mass alone the affine stopped in a wrong rotation (> 5 mm affine error) on 4 of the first 40 validation
  pairs (11 of the 120 test pairs); with the search as well, none of those 40 (ANTs-SyN 80.30 % against
  77.90 %, at 1.5× the time), but 3 of all 80 validation pairs, where both ended wrong; with the two more
  starts, none of the 80 (ANTs-SyN 80.25 % against 79.36 %, 0.65 against 0.42 s a pair on 1 thread; either
  start alone left one failure; ``benchmarks/tune_peers.py``, docs/benchmark.md); a result that mirrors
  the image is never kept (the principal axes' start ended in one on a test pair and won the MI choice).
  3D keeps the centre of mass start: on the 8 validation pairs of the 3D benchmark no pair fails either
  way, and the search scores ANTs-SyN 71.77 % against 72.10 % at twice the time.

ANTs-SyN is ``SyNOnly`` started from the ANTs-Affine result (what ``type_of_transform="SyN"``
does in one call); its time per pair is the affine stage's plus the SyN stage's. (Raising the
affine's full-resolution iterations from 10 to 100 changed neither Dice nor failures on the
phantom pairs.) For the inverse-consistency error each pair is also registered the other way
round, fixed onto moving, as FIRE's T^{B→A} does; those runs are not timed (``ice_every``: only
every k-th pair, where the time matters more than ANTs' ICE on every pair: the demo).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import spatial
from .peers.common import quiet

log = logging.getLogger(__name__)

METHODS = ("ANTs-Affine", "ANTs-SyN")


@dataclass
class AntsParams:
    """Every parameter handed to ``ants.registration`` (recorded in ``results.json``)."""

    aff_metric: str = "mattes"
    aff_sampling: int = 32  # histogram bins
    aff_random_sampling_rate: float = 1.0  # with "regular" sampling: dense
    aff_iterations: tuple = (2100, 1200, 1200, 10)
    aff_shrink_factors: tuple = (6, 4, 2, 1)
    aff_smoothing_sigmas: tuple = (3, 2, 1, 0)
    # a second affine from the best start of ANTs' multi-start search (``ants.affine_initializer``), the one of
    # lower MI kept: (step in degrees, arc searched as a fraction of pi each way, local iterations); () = none.
    # Only for images of aff_search_dims dimensions (the choice: the module's docstring)
    aff_search: tuple = (15, 0.15, 100)
    aff_search_dims: tuple = (2,)
    # more starts, where aff_search runs: "principal" (the search again, from the images' principal axes) and
    # "identity" (no move, rotations about the grid's centre); each another affine, the one of lowest MI kept
    aff_starts: tuple = ("principal", "identity")
    syn_metric: str = "mattes"
    syn_sampling: int = 32
    reg_iterations: tuple = (100, 70, 50)  # shrink 4, 2, 1: the last level is full resolution
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    random_seed: int = 1
    # every k-th pair is also registered the other way round, for ANTs' inverse-consistency error
    # (untimed; 1: every pair, 0: none): half of the benchmark's ANTs time goes to those runs
    ice_every: int = 1

    def __post_init__(self):
        if isinstance(self.aff_starts, str):  # one start: aff_starts=identity
            self.aff_starts = (self.aff_starts,)
        unknown = [s for s in self.aff_starts if s not in ("principal", "identity")]
        if unknown:
            raise ValueError(f"unknown ANTs affine start {unknown[0]!r}; use 'principal' or 'identity'")

    @classmethod
    def preset(cls, name: str, **kw) -> "AntsParams":
        """``"fair"`` (the defaults above) or ``"antspyx-default"`` (antspyx's own defaults: random
        20 % sampling, no SyN iterations at full resolution, the affine from the centre of mass alone), to
        show what the fair settings change."""
        if name == "fair":
            return cls(**kw)
        if name == "antspyx-default":
            return cls(aff_random_sampling_rate=0.2, reg_iterations=(40, 20, 0), aff_search=(), **kw)
        raise ValueError(f"unknown ANTs preset {name!r}; use 'fair' or 'antspyx-default'")

    def affine_kwargs(self) -> dict:
        return dict(type_of_transform="Affine", aff_metric=self.aff_metric, aff_sampling=self.aff_sampling,
                    aff_random_sampling_rate=self.aff_random_sampling_rate,
                    aff_iterations=tuple(self.aff_iterations), aff_shrink_factors=tuple(self.aff_shrink_factors),
                    aff_smoothing_sigmas=tuple(self.aff_smoothing_sigmas))

    def syn_kwargs(self) -> dict:
        return dict(type_of_transform="SyNOnly", syn_metric=self.syn_metric, syn_sampling=self.syn_sampling,
                    reg_iterations=tuple(self.reg_iterations), grad_step=self.grad_step,
                    flow_sigma=self.flow_sigma, total_sigma=self.total_sigma)

    def record(self) -> dict:
        import ants

        out = dataclasses.asdict(self)
        out.update(antspyx=ants.__version__, threads_effective=itk_threads(),
                   affine_call=_jsonable(self.affine_kwargs()),
                   syn_call=_jsonable(self.syn_kwargs()), syn_initial_transform="the ANTs-Affine result",
                   intensities="[0, 1]", sampling_strategy="regular")
        return _jsonable(out)


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


_ITK_THREADS: int | None = None  # the thread count antspyx's ITK was started with in this process


def itk_threads() -> int | None:
    """Threads ANTs uses in this process (None before the first registration)."""
    return _ITK_THREADS


def _configure_ants(params: AntsParams):
    """Import antspyx with the thread count and seed of ``params``.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when its threading starts (the first
    registration), so the first call fixes the count for the process; a later different request
    is logged and the effective count is what :meth:`AntsParams.record` reports.
    """
    global _ITK_THREADS
    if _ITK_THREADS is None:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(params.threads)
        _ITK_THREADS = int(params.threads)
    elif params.threads != _ITK_THREADS:
        log.warning("ANTs keeps the %d threads it started with in this process (asked for %d)", _ITK_THREADS,
                    params.threads)
    os.environ["ANTS_RANDOM_SEED"] = str(params.random_seed)
    import ants

    ants.config._random_seed = params.random_seed  # antspyx passes it on as --random-seed
    return ants


def _to_ants(ants, x: torch.Tensor, spacing, intensity: bool = True):
    """``(1, *S)`` tensor → ANTsImage with identity direction, origin 0 and ``spacing``; images mapped
    from [-1, 1] to [0, 1]."""
    arr = x[0].detach().cpu().double().numpy()
    if intensity:
        arr = (arr + 1) / 2
    img = ants.from_numpy(arr.astype(np.float32))
    img.set_spacing(tuple(float(s) for s in spacing))
    return img


def _field_from_transforms(ants, fixed, moving, transforms, invert, spacing, prefix: str) -> torch.Tensor:
    """Compose ANTs transforms into one dense field on ``fixed``'s grid → normalised ``(n, *S)``.

    ANTs' displacement vectors are physical (mm) along the image's physical axes; with an identity
    direction those are the array axes, in array order.
    """
    path = ants.apply_transforms(fixed, moving, transforms, whichtoinvert=invert, compose=prefix)
    if path is None:
        raise RuntimeError("antsApplyTransforms did not write the composed field")
    vec = ants.image_read(path).numpy()  # (*S, n) mm
    mm = torch.from_numpy(np.moveaxis(vec, -1, 0).astype(np.float32))[None]
    return spatial.voxel_to_normalised(spatial.mm_to_voxel(mm, spacing))[0]


def _registration(ants, *args, **kwargs) -> tuple[dict, float]:
    """``ants.registration`` → (its result, seconds). antsRegistration fails now and then with "error
    code 1" on a pair that it registers on the next call (multi-threaded); one failure is retried,
    and the time is that of the call that succeeded. A second failure is raised."""
    for attempt in (1, 2):
        t0 = time.perf_counter()
        try:
            return ants.registration(*args, **kwargs), time.perf_counter() - t0
        except RuntimeError as e:
            if attempt == 2:
                raise RuntimeError(f"ANTs registration failed twice: {e}") from None
            log.warning("ANTs registration failed (%s); trying once more", e)
    raise AssertionError("unreachable")


def _identity_start(ants, f, path: Path) -> str:
    """An identity affine whose centre of rotation is the grid's centre, written to ``path`` (a start for
    ``ants.registration``: no move, where antspyx's default moves the centres of mass together)."""
    tx = ants.new_ants_transform(dimension=f.dimension, transform_type="AffineTransform")
    tx.set_fixed_parameters([(n - 1) / 2 * s for n, s in zip(f.shape, f.spacing)])
    ants.write_transform(tx, str(path))
    return str(path)


def _affine(ants, f, m, params: AntsParams, tmp: Path, tag: str) -> tuple[dict, float]:
    """ANTs-Affine of ``m`` onto ``f`` → (``ants.registration``'s result, seconds): from the centre of mass;
    with ``params.aff_search`` also from the best start of ANTs' multi-start rotation search
    (antsAffineInitializer) and from each of ``params.aff_starts``, keeping the result of lowest Mattes MI
    (ANTs' own metric, better when lower) among those that do not mirror the image (:func:`_reflects`). The
    seconds are all of it: every registration, the searches and the choice."""
    aff, secs = _registration(ants, f, m, outprefix=str(tmp / f"{tag}aff_"), **params.affine_kwargs())
    if not params.aff_search or f.dimension not in params.aff_search_dims:
        return aff, secs
    step, arc, iterations = params.aff_search
    results = [aff]
    for k, start in enumerate(("search", *params.aff_starts)):
        t0 = time.perf_counter()
        if start == "identity":
            init = _identity_start(ants, f, tmp / f"{tag}identity.mat")
        else:  # the search, from the centres of mass or from the principal axes
            with quiet():  # antsAffineInitializer prints a line per start from C++
                init = ants.affine_initializer(f, m, search_factor=float(step), radian_fraction=float(arc),
                                               use_principal_axis=start == "principal",
                                               local_search_iterations=int(iterations),
                                               txfn=str(tmp / f"{tag}{start}.mat"))
        secs += time.perf_counter() - t0
        out, t = _registration(ants, f, m, outprefix=str(tmp / f"{tag}aff{k}_"), initial_transform=[init],
                               **params.affine_kwargs())
        results.append(out)
        secs += t
    t0 = time.perf_counter()
    kept = [r for r in results if not _reflects(ants, r)] or [aff]
    best = min(kept, key=lambda r: ants.image_mutual_information(f, r["warpedmovout"]))
    return best, secs + time.perf_counter() - t0


def _reflects(ants, reg: dict) -> bool:
    """Whether an ANTs affine result (its ``fwdtransforms``' matrix) mirrors the image: a start from the
    principal axes can end in a reflection, whose mutual information on a near-symmetric brain may beat the
    right answer (it did on one test pair, 100 % folding)."""
    tx = ants.read_transform(reg["fwdtransforms"][0])
    n = tx.dimension
    return bool(np.linalg.det(np.reshape(np.asarray(tx.parameters[:n * n], dtype=np.float64), (n, n))) <= 0)


def _register(ants, f, m, params: AntsParams, spacing, tmp: Path, tag: str) -> dict:
    """ANTs-Affine then ANTs-SyN (started from it) of ``m`` onto ``f`` → method → field, seconds, warped."""
    aff, t_aff = _affine(ants, f, m, params, tmp, tag)
    syn, t_syn = _registration(ants, f, m, outprefix=str(tmp / f"{tag}syn_"), initial_transform=aff["fwdtransforms"],
                               **params.syn_kwargs())
    out = {}
    for name, reg, secs in (("ANTs-Affine", aff, t_aff), ("ANTs-SyN", syn, t_aff + t_syn)):
        out[name] = {
            "field": _field_from_transforms(ants, f, m, reg["fwdtransforms"], None, spacing,
                                            str(tmp / f"{tag}{name}_")),
            "seconds": secs,
            "warped": torch.from_numpy(reg["warpedmovout"].numpy().astype(np.float32))[None] * 2 - 1,
        }
    return out


def register_pair(moving: torch.Tensor, fixed: torch.Tensor, spacing, params: AntsParams | None = None,
                  inverse: bool = True) -> dict:
    """ANTs-Affine and ANTs-SyN for one pair, and (``inverse``) for the swapped pair.

    Args:
        moving, fixed: ``(1, *S)`` images in [-1, 1] on the same grid.
        spacing: voxel size in mm per axis.
        inverse: also register ``fixed`` onto ``moving``, as FIRE's T^{B→A} does, for the
            inverse-consistency error (not counted in ``seconds``).

    Returns:
        method → {``field`` ``(n, *S)`` normalised (fixed → moving, as FIRE's), ``inverse`` ``(n, *S)``
        (the swapped registration's field, when ``inverse``), ``seconds`` (registration time;
        ANTs-SyN includes its affine stage), ``warped`` ``(1, *S)`` ANTs' own linearly warped moving
        image in [-1, 1]}.
    """
    params = params or AntsParams()
    ants = _configure_ants(params)
    f, m = _to_ants(ants, fixed, spacing), _to_ants(ants, moving, spacing)
    with tempfile.TemporaryDirectory(prefix="fire-ants-") as tmp:
        out = _register(ants, f, m, params, spacing, Path(tmp), "ab_")
        if inverse:
            back = _register(ants, m, f, params, spacing, Path(tmp), "ba_")
            for name in out:
                out[name]["inverse"] = back[name]["field"]
    return out
