"""Image dissimilarities: RMS (the paper's), Parzen-window mutual information and local normalised
cross-correlation, and :func:`make_similarity`, which picks the one used in (7)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .. import spatial

_EPS = 1e-8


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error per sample, averaged over the batch.

    ``sqrt(mean((a-b)^2) + eps) - sqrt(eps)``: exactly 0 for identical inputs and with a
    finite gradient there.

    Args:
        a, b: ``(B, ...)`` of the same shape.

    Returns:
        scalar.
    """
    if a.shape != b.shape:
        raise ValueError(f"rms: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = (a - b).pow(2).flatten(1).mean(1)
    # Both square roots in the tensor's dtype, by the same routine: a Python-float sqrt(eps)
    # differs from float32 sqrt(float32(eps)) on CPUs whose vector sqrt rounds differently (AVX2).
    eps = torch.full_like(mse, _EPS)
    return (torch.sqrt(mse + eps) - torch.sqrt(eps)).mean()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error ``(B, ...)`` → scalar (VoxelMorph's mono-modal similarity)."""
    if a.shape != b.shape:
        raise ValueError(f"mse: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.float() - b.float()).pow(2).mean()


class ParzenWindows(NamedTuple):
    """One image's Parzen windows (:meth:`MutualInformation.windows`): for each voxel the nearest bins
    ``idx`` and their normalised weights ``weight``, both ``(B, P, 2 support)``, the marginal histogram
    ``hist`` ``(B, bins)``, and the image's shape."""

    idx: torch.Tensor
    weight: torch.Tensor
    hist: torch.Tensor
    shape: tuple


class MutualInformation(nn.Module):
    """Negative Parzen-window mutual information (MI-CNN paper, eqs 3–7), per sample, batch-averaged.

    Gaussian Parzen windows of width ``sigma_ratio`` bins on ``num_bins`` bin centres spread over
    [0, 1] (inputs in [-1, 1] are mapped there), and ``-sum p_ab log(p_ab / (p_a p_b))`` as MONAI's
    ``GlobalMutualInformationLoss`` computes it. Written here, not called from MONAI, for speed:
    MONAI evaluates every sample against every bin (``exp`` over ``(B, P, bins)``, much of it
    underflowing into slow denormals, then a ``(bins × P) @ (P × bins)`` product); a window of
    0.5 bins is negligible (< e⁻⁸) beyond 2 bins, so each sample here touches only the
    ``2 × support`` nearest bins and the joint histogram is a scatter-add. Same value to ~1e-4,
    about 10× faster on the CPU (tests/test_losses.py), which matters: MI is evaluated on every
    training batch and in every step of per-pair refinement.
    """

    def __init__(self, num_bins: int = 32, sigma_ratio: float = 0.5):
        super().__init__()
        if num_bins < 2 or sigma_ratio <= 0:
            raise ValueError(f"MI needs num_bins >= 2 and sigma_ratio > 0, got {num_bins}, {sigma_ratio}")
        self.num_bins, self.sigma = int(num_bins), float(sigma_ratio)  # sigma in bins
        self.support = max(1, math.ceil(4 * self.sigma))  # bins kept on each side of a sample

    def _windows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, P)`` in [0, 1] → bin indices and normalised window weights, both ``(B, P, 2 support)``."""
        k = self.num_bins
        pos = x * (k - 1)
        near = torch.arange(-self.support + 1, self.support + 1, device=x.device)
        idx = pos.detach().floor().long()[..., None] + near  # (B, P, W)
        valid = (idx >= 0) & (idx < k)
        w = torch.exp(-(pos[..., None] - idx.to(pos.dtype)).pow(2) / (2 * self.sigma**2)) * valid
        return idx.clamp(0, k - 1), w / w.sum(-1, keepdim=True)

    def windows(self, x: torch.Tensor) -> ParzenWindows:
        """An image's Parzen windows and marginal histogram, ``x`` ``(B, ...)`` in [-1, 1]: what
        :meth:`per_sample` computes of ``b``, to pass instead of it when one image is compared many times
        (each step of per-pair refinement compares a new warped image with the same fixed one)."""
        idx, w = self._windows(((x.float() + 1) / 2).clamp(0, 1).flatten(1))
        hist = torch.zeros(idx.shape[0], self.num_bins, dtype=w.dtype, device=w.device)
        hist = hist.scatter_add(1, idx.flatten(1), w.flatten(1)) / idx.shape[1]
        return ParzenWindows(idx, w, hist, tuple(x.shape))

    def per_sample(self, a: torch.Tensor, b: torch.Tensor | ParzenWindows) -> torch.Tensor:
        """``-MI`` of each sample ``(B,)``; ``a``, ``b`` ``(B, ...)`` in [-1, 1], or ``b`` its :meth:`windows`."""
        fixed = b if isinstance(b, ParzenWindows) else self.windows(b)
        if tuple(a.shape) != fixed.shape:
            raise ValueError(f"MI: shapes differ, {tuple(a.shape)} vs {fixed.shape}")
        ia, wa, pa, _ = self.windows(a)
        ib, wb, pb, _ = fixed
        bsz, p, k = ia.shape[0], ia.shape[1], self.num_bins
        joint_idx = (ia[..., :, None] * k + ib[..., None, :]).flatten(1)
        joint_w = (wa[..., :, None] * wb[..., None, :]).flatten(1)
        pab = torch.zeros(bsz, k * k, dtype=wa.dtype, device=wa.device).scatter_add(1, joint_idx, joint_w) / p
        papb = (pa[:, :, None] * pb[:, None, :]).flatten(1)
        eps = 1e-7  # MONAI's smooth_nr / smooth_dr
        return -(pab * torch.log((pab + eps) / (papb + eps) + eps)).sum(1)

    @spatial.float32  # histograms of bf16 intensities would lose the Parzen window's resolution
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.per_sample(a, b).mean()


class LocalNCC(nn.Module):
    """Negative local normalised cross-correlation (MONAI), window ``kernel_size``."""

    def __init__(self, spatial_dims: int, kernel_size: int = 7):
        super().__init__()
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        self.ncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=spatial_dims, kernel_size=kernel_size)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.ncc(a.float(), b.float())


SIMILARITIES = ("rms", "mi", "lncc", "mse")


def make_similarity(name: str, spatial_dims: int, mi_bins: int = 32, mi_sigma_ratio: float = 0.5,
                    ncc_kernel: int = 7):
    """The dissimilarity used in (7) (and the MI-CNN's): ``"rms"`` (paper), ``"mi"`` (Parzen MI), ``"lncc"``
    or ``"mse"``."""
    if name == "rms":
        return rms
    if name == "mse":
        return mse
    if name == "mi":
        return MutualInformation(mi_bins, mi_sigma_ratio)
    if name == "lncc":
        return LocalNCC(spatial_dims, ncc_kernel)
    raise ValueError(f"unknown similarity {name!r}; choose one of {SIMILARITIES}")
