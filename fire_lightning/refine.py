"""Per-pair refinement (FIRE+IO, "instance optimisation"): a few gradient steps on one pair,
starting from the network's transform.

What is optimised, and why: the transform's own parameters, not a copy of the network's weights.
The network's output is already a parametrisation of exactly what we want to improve: the affine
``theta`` ``(n, n+1)`` and the non-rigid displacement ``phi_nr`` on the feature grid (a velocity when
``model.nonrigid.diffeomorphic``, integrated by scaling and squaring as the network's is, so the refined
field keeps the model's diffeomorphism). Optimising them directly costs one warp and one MI per
step, instead of a forward and backward pass through G and T; the feature-grid field keeps the
model's smoothness scale; and a refined transform is written out like the network's (ITK field
and affine).

The loss, per pair: ``-MI(x_m ∘ phi, x_f)`` (Parzen mutual information on the images themselves,
as ANTs' affine and SyN stages measure alignment) ``+ smooth_weight × λ R_smooth(phi_nr)`` (the
paper's bending term (10) with its λ (13), in image voxels). Adam on both parts (``lr_affine``,
``lr_field``), ``steps`` steps; no randomness, so a fixed input gives a fixed output. Each pair of a
batch is optimised independently (the loss is a sum over pairs and Adam scales each parameter on
its own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import spatial
from .losses import MutualInformation, smoothness, smoothness_weight


@dataclass(frozen=True)
class RefineSettings:
    """How FIRE+IO refines a pair (``fire register --refine N``, ``fire benchmark --refine N``)."""

    steps: int = 0  # 0: the network's output, bit for bit
    lr_affine: float = 1e-2  # Adam step of theta (normalised coordinates)
    lr_field: float = 2e-3  # Adam step of phi_nr (normalised coordinates)
    smooth_weight: float = 1.0  # × the paper's λ R_smooth
    mi_bins: int = 32
    mi_sigma_ratio: float = 0.5
    affine: bool = True  # refine theta
    field: bool = True  # refine phi_nr

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"refine steps (--refine) must be an integer >= 0, got {self.steps!r}")
        for name in ("lr_affine", "lr_field"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise ValueError(f"refine {name} (--refine-{name.replace('_', '-')}) must be a number > 0, "
                                 f"got {value!r}")
        w = self.smooth_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ValueError(f"refine smooth_weight (--refine-smooth) must be a number >= 0, got {w!r}")


def settings_from_cli(steps, lr_affine=None, lr_field=None, smooth=None) -> RefineSettings | None:
    """``--refine N [--refine-lr-affine LR] [--refine-lr-field LR] [--refine-smooth W]`` (strings or numbers)
    → settings; None when ``steps`` is None. Raises ValueError (one line) for a bad value."""
    if steps is None:
        if lr_affine is not None or lr_field is not None or smooth is not None:
            raise ValueError("--refine-lr-affine / --refine-lr-field / --refine-smooth need --refine N")
        return None

    def number(value, name: str, kind):
        try:
            out = kind(str(value).strip())
        except ValueError:
            raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        return out

    kw = {"steps": number(steps, "--refine", int)}
    if lr_affine is not None:
        kw["lr_affine"] = number(lr_affine, "--refine-lr-affine", float)
    if lr_field is not None:
        kw["lr_field"] = number(lr_field, "--refine-lr-field", float)
    if smooth is not None:
        kw["smooth_weight"] = number(smooth, "--refine-smooth", float)
    return RefineSettings(**kw)


def refine(moving: torch.Tensor, fixed: torch.Tensor, theta: torch.Tensor, nr: torch.Tensor, settings: RefineSettings,
           diffeomorphic: bool = False, integration_steps: int = 7, progress: bool = False,
           on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Refine one transform per pair of a batch.

    Args:
        moving, fixed: ``(B, 1, *S)`` in [-1, 1].
        theta: ``(B, n, n+1)`` the network's affine; nr: ``(B, n, *S_f)`` its raw non-rigid output on the
            feature grid (a velocity when ``diffeomorphic``).
        progress: show a progress bar over the steps.
        on_step: called as ``on_step(k, theta, nr)`` (detached) after step ``k`` = 1 … ``steps``: the
            parameters (copies) that ``steps = k`` would return (a refinement curve from one run).

    Returns:
        ``(theta, nr, losses)``: the refined parameters (detached) and the loss of each step (batch sum)
        — the network's own when ``settings.steps == 0``.
    """
    if settings.steps == 0:
        return theta, nr, []
    shape = moving.shape[2:]
    n = len(shape)
    mi = MutualInformation(settings.mi_bins, settings.mi_sigma_ratio)
    lam = settings.smooth_weight * smoothness_weight(n, shape)
    th = theta.detach().clone().requires_grad_(settings.affine)
    v = nr.detach().clone().requires_grad_(settings.field)
    groups = ([{"params": [th], "lr": settings.lr_affine}] if settings.affine else []) + \
             ([{"params": [v], "lr": settings.lr_field}] if settings.field else [])
    opt = torch.optim.Adam(groups)
    losses = []
    from tqdm.auto import tqdm  # here: ``fire register`` without --refine does not import it

    fixed = mi.windows(fixed)  # the same in every step
    with torch.enable_grad():
        for k in tqdm(range(1, settings.steps + 1), desc="refine", unit="step", disable=not progress, leave=False):
            loss = objective(moving, fixed, th, v, mi, lam, diffeomorphic, integration_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(k, th.detach().clone(), v.detach().clone())
    return th.detach(), v.detach(), losses


def objective(moving, fixed, theta, nr, mi: MutualInformation, lam: float, diffeomorphic: bool = False,
              integration_steps: int = 7) -> torch.Tensor:
    """The refinement loss, summed over the batch: ``sum_pairs -MI(x_m ∘ phi, x_f) + lam ||∇² phi_nr||²``
    (``fixed`` the image or its :meth:`MutualInformation.windows`)."""
    disp = spatial.integrate_velocity(nr, integration_steps) if diffeomorphic else nr
    shape = moving.shape[2:]
    u = spatial.compose_affine_displacement(theta, spatial.resize_field(disp, shape))
    sim = mi.per_sample(spatial.warp(moving, u), fixed).sum()
    return sim + lam * moving.shape[0] * smoothness(disp, shape) if lam > 0 else sim


def optimise_affine(moving: torch.Tensor, fixed: torch.Tensor, theta: torch.Tensor, steps: int, lr: float,
                    mi: MutualInformation, shrink: int = 2) -> torch.Tensor:
    """An affine registration by mutual information alone, per pair of a batch: ``steps`` Adam steps of
    ``lr`` on ``theta`` ``(B, n, n+1)`` (fixed → moving, normalised) minimising ``-MI(x_m ∘ theta, x_f)``, on the
    images averaged over ``shrink`` voxels per axis (a normalised affine means the same at every resolution;
    half the resolution, a quarter (2D) or an eighth (3D) of the cost). Returns the result, detached.

    Args:
        moving, fixed: ``(B, 1, *S)`` in [-1, 1].
    """
    n = moving.dim() - 2
    if shrink > 1 and min(moving.shape[2:]) >= 16 * shrink:
        pool = getattr(torch.nn.functional, f"avg_pool{n}d")
        moving, fixed = pool(moving, shrink), pool(fixed, shrink)
    moving, fixed = moving.detach().float(), mi.windows(fixed.detach())
    th = theta.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([th], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            warped = spatial.warp(moving, spatial.affine_to_displacement(th, moving.shape[2:]))
            loss = mi.per_sample(warped, fixed).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return th.detach()
