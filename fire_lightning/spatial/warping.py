"""Warping: the one place that resamples an image, a label map or a field at transformed points
(and the one place where the ``(x, y, z)`` axis order of :func:`torch.nn.functional.grid_sample` is
reversed to tensor-axis order)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grid import float32, identity_grid, spatial_ndim


def _sample(x: torch.Tensor, disp: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    n = spatial_ndim(x)
    if disp.shape[1] != n or disp.dim() != x.dim():
        raise ValueError(f"field shape {tuple(disp.shape)} does not fit image shape {tuple(x.shape)}")
    coords = identity_grid(disp.shape[2:], disp.device, disp.dtype) + disp
    # grid_sample wants (B, *S, n) with the last axis in reversed (x, y[, z]) order.
    grid = coords.permute(0, *range(2, n + 2), 1).flip(-1)
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], *grid.shape[1:])
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


@float32
def warp(x: torch.Tensor, disp: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Resample ``x`` at ``phi(p) = p + disp(p)`` with (bi/tri)linear interpolation.

    Args:
        x: image or feature map ``(B, C, *S_in)``.
        disp: normalised displacement ``(B, n, *S_out)``; the output has the field's grid.
        padding_mode: ``"border"`` (default), ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(B, C, *S_out)``.
    """
    return _sample(x, disp, "bilinear", padding_mode)


@float32
def warp_labels(labels: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Warp an integer label map with nearest-neighbour sampling; outside = background 0.

    Args:
        labels: ``(B, 1, *S_in)``, any integer or float dtype.
        disp: ``(B, n, *S_out)``.

    Returns:
        ``(B, 1, *S_out)`` with the dtype of ``labels``.
    """
    out = _sample(labels.to(disp.dtype), disp, "nearest", "zeros")
    return out.round().to(labels.dtype)


@float32
def sample_at(x: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros"
              ) -> torch.Tensor:
    """Sample ``x`` at given points (absolute normalised coordinates, not a displacement).

    For resampling between grids (e.g. through world coordinates): ``sample_at(x, c)(p) = x(c(p))``.

    Args:
        x: image ``(B, C, *S_in)``; sampled in its own dtype (use float64 for large integer labels).
        coords: ``(B or 1, n, *S_out)`` normalised coordinates in ``x``'s grid (tensor-axis order,
            ``align_corners=False``); points outside ``[-1, 1]`` get ``padding_mode``.
        mode: ``"bilinear"`` ((bi/tri)linear) or ``"nearest"``.
        padding_mode: ``"zeros"`` (default), ``"border"`` or ``"reflection"``.

    Returns:
        ``(B, C, *S_out)``.
    """
    ident = identity_grid(coords.shape[2:], coords.device, coords.dtype)
    return _sample(x, coords - ident, mode, padding_mode)
