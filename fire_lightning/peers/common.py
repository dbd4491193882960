"""What the classical peers share: images handed to an ITK-based tool on the model's grid, their dense
displacement fields brought back as the project's normalised fields, and one retry of a failed call.

Axis order: the project's tensors are ``(1, *S)`` in array order; an ITK image made here has ITK axis ``k``
= array axis ``k`` (numpy's reversed order is undone by a transpose), spacing in array order, origin 0
(Greedy's with ``centre_origin``: the grid's centre) and an identity direction. An ITK displacement vector
is then physical (mm) along the array axes, in array order, as ANTs' is (:mod:`..baselines`), and it maps a
fixed-grid point to the moving image's point sampled there: the project's convention (``spatial``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch

from .. import spatial

log = logging.getLogger(__name__)


class PeerFailed(RuntimeError):
    """A peer's registration failed twice on a pair (raised; the benchmark names the pair)."""


def unit_array(x: torch.Tensor) -> np.ndarray:
    """``(1, *S)`` image in [-1, 1] → float32 array ``S`` in ITK axis order (reversed), intensities in [0, 1].

    [0, 1] as for ANTs: a centre-of-gravity initialisation weighs voxels by intensity, and a negative
    background breaks it."""
    arr = ((x[0].detach().cpu().double().numpy() + 1) / 2).astype(np.float32)
    return np.ascontiguousarray(arr.T)


def field_from_itk(vec: np.ndarray, spacing) -> torch.Tensor:
    """An ITK displacement field read as numpy (``S`` reversed, then ``n`` components; mm along the array
    axes) → normalised ``(n, *S)``."""
    n = vec.shape[-1]
    arr = np.transpose(vec, tuple(reversed(range(n))) + (n,))  # (*S, n)
    mm = torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, 0)).astype(np.float32))[None]
    return spatial.voxel_to_normalised(spatial.mm_to_voxel(mm, spacing))[0]


def image_from_itk(arr: np.ndarray) -> torch.Tensor:
    """A scalar ITK image read as numpy (``S`` reversed, intensities in [0, 1]) → ``(1, *S)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr.T).astype(np.float32))[None] * 2 - 1


def check_finite(what: str, *arrays) -> None:
    """Raise when a tool's result holds NaN or infinite values (a failed registration that did not raise)."""
    for a in arrays:
        if not np.isfinite(np.asarray(a)).all():
            raise RuntimeError(f"{what} returned non-finite values")


def check_scales(what: str, matrix, limit: float = 10.0) -> None:
    """Raise when a homogeneous affine ``(n+1, n+1)``'s scales (the singular values of its linear part) leave
    [1 / ``limit``, ``limit``]: an optimisation that diverged. (Greedy's affine on a grid centred at the
    physical origin reached scales of about 11 on a test pair, and its deformable stage then returned only
    NaN.)"""
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0] - 1
    s = np.linalg.svd(m[:n, :n], compute_uv=False)
    if not (s.min() >= 1 / limit and s.max() <= limit):
        raise RuntimeError(f"{what} diverged: its scales are {', '.join(f'{v:.3g}' for v in s)}")


@contextlib.contextmanager
def quiet():
    """Send what a compiled tool prints straight to the process' stdout / stderr (C-level writes that
    Python cannot capture) to /dev/null for the duration, so the benchmark's progress bar stays readable."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def twice(stages: Sequence[Callable[[int, object], object]], tool: str) -> tuple[list, list[float]]:
    """Run a peer's ``stages`` (its affine, then its deformable registration) in turn, each called as
    ``stage(attempt, the result of the stage before)`` → (their results, their seconds).

    A stage that raises (a failure, or non-finite values found by :func:`check_finite`) starts the whole chain
    once more (``attempt`` 2: the tools change their random seed), since a deformable stage may fail on what
    its affine stage handed it; the times are those of the chain that succeeded. A second failure raises
    :class:`PeerFailed`."""
    for attempt in (1, 2):
        results, seconds, previous = [], [], None
        try:
            for stage in stages:
                t0 = time.perf_counter()
                previous = stage(attempt, previous)
                seconds.append(time.perf_counter() - t0)
                results.append(previous)
            return results, seconds
        except (RuntimeError, ValueError) as e:
            if attempt == 2:
                raise PeerFailed(f"{tool} failed twice: {e}") from None
            log.warning("%s failed (%s); trying once more", tool, e)
    raise AssertionError("unreachable")


def both_ways(register: Callable[[object, object], dict], fixed, moving, inverse: bool) -> dict:
    """``register(fixed, moving)`` (method → its output, with ``field``) and, with ``inverse``, the swapped
    pair's fields added as each method's ``inverse``, for the inverse-consistency error (untimed)."""
    out = register(fixed, moving)
    if inverse:
        back = register(moving, fixed)
        for name in out:
            out[name]["inverse"] = back[name]["field"]
    return out
