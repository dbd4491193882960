"""FIRE losses, equations (1)–(13) of the FIRE paper as fixed by METHOD.md, and ExFIRE's
least-squares adversarial terms.

:func:`fire_forward` runs the training graph once (both directions) and
:func:`fire_loss` turns it into a :class:`FIRELoss` of named parts, ready to log.
:func:`adversarial_images` names what each discriminator sees as real and as synthesised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from . import spatial
from .nets.fire import FIRENet
from .nets.transformation import Transform

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

    def per_sample(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``-MI`` of each sample ``(B,)``; ``a``, ``b`` ``(B, ...)`` in [-1, 1]."""
        if a.shape != b.shape:
            raise ValueError(f"MI: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        to01 = lambda x: ((x.float() + 1) / 2).clamp(0, 1).flatten(1)  # noqa: E731
        (ia, wa), (ib, wb) = self._windows(to01(a)), self._windows(to01(b))
        bsz, p, k = ia.shape[0], ia.shape[1], self.num_bins
        joint_idx = (ia[..., :, None] * k + ib[..., None, :]).flatten(1)
        joint_w = (wa[..., :, None] * wb[..., None, :]).flatten(1)
        pab = torch.zeros(bsz, k * k, dtype=wa.dtype, device=wa.device).scatter_add(1, joint_idx, joint_w) / p
        pa = torch.zeros(bsz, k, dtype=wa.dtype, device=wa.device).scatter_add(1, ia.flatten(1), wa.flatten(1)) / p
        pb = torch.zeros(bsz, k, dtype=wb.dtype, device=wb.device).scatter_add(1, ib.flatten(1), wb.flatten(1)) / p
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


SIMILARITIES = ("rms", "mi", "lncc")


def make_similarity(name: str, spatial_dims: int, mi_bins: int = 32, mi_sigma_ratio: float = 0.5,
                    ncc_kernel: int = 7):
    """The dissimilarity used in (7): ``"rms"`` (paper), ``"mi"`` (Parzen MI) or ``"lncc"``."""
    if name == "rms":
        return rms
    if name == "mi":
        return MutualInformation(mi_bins, mi_sigma_ratio)
    if name == "lncc":
        return LocalNCC(spatial_dims, ncc_kernel)
    raise ValueError(f"unknown similarity {name!r}; choose one of {SIMILARITIES}")


def smoothness(disp_nr: torch.Tensor, image_shape=None) -> torch.Tensor:
    """(10) one direction's ``||∇² phi_nr||²``: squared Laplacian summed over points and channels, batch-averaged.

    Units (the paper leaves them open): with ``image_shape`` the field and the derivatives are
    in *image voxels* (phi_nr produced on the feature grid, converted to the image grid's
    voxel units), so the penalty of a deformation of so many voxels does not depend on the
    network's feature stride; without it, both are in normalised coordinates p ∈ [-1, 1]^n.
    The two differ by the factor ``(2 / S_k)²`` per axis (about 1e-3 for a 64-pixel image).

    Args:
        disp_nr: ``(B, n, *S/4)`` normalised displacement on the feature grid.
        image_shape: the input image's spatial shape ``S``, or None for normalised units.
    """
    if image_shape is None:
        lap = spatial.laplacian(disp_nr, spacing="normalised")
    else:
        n = disp_nr.shape[1]
        half = spatial.constant([s / 2 for s in image_shape], disp_nr.device, disp_nr.dtype)
        u_vox = disp_nr * half.view(1, n, *([1] * n))  # image-voxel displacement
        step = [si / sf for si, sf in zip(image_shape, disp_nr.shape[2:])]  # feature step in image voxels
        lap = spatial.laplacian(u_vox, spacing=step)
    return lap.pow(2).flatten(1).sum(1).mean()


def smoothness_weight(n: int, image_shape) -> float:
    """λ = 2^{2n} / (10 N), N = number of points of the input image (13).

    The Laplacian is evaluated where phi_nr is produced, on the feature grid with N / 4^n
    points, so λ·R_smooth is 0.1 × the mean squared Laplacian per feature point.
    """
    return 2 ** (2 * n) / (10 * math.prod([int(s) for s in image_shape]))


@dataclass
class FIREOutputs:
    """Everything one training forward computes (both directions). Shapes: images ``(B,1,*S)``,
    features ``(B,4w,*S/4)``, fields ``(B,n,*S)``."""

    g_a: torch.Tensor
    g_b: torch.Tensor
    t_ab: Transform
    t_ba: Transform
    g_a_warped: torch.Tensor  # G_A ∘ phi^{A→B} (feature grid), in B's space
    g_b_warped: torch.Tensor
    u_ab: torch.Tensor  # phi^{A→B} on the image grid
    u_ba: torch.Tensor
    af_ab: torch.Tensor  # phi_af^{A→B} on the image grid
    af_ba: torch.Tensor
    xhat_b: torch.Tensor  # F^{A→B}(G_A), aligned with x^A
    xhat_a: torch.Tensor
    xhat_t_b: torch.Tensor  # F^{A→B}(G_A ∘ phi^{A→B}), aligned with x^B
    xhat_t_a: torch.Tensor
    cyc_a: torch.Tensor  # F^{B→A}(G(xhat_b))
    cyc_b: torch.Tensor
    g_xhat_b: torch.Tensor  # G(xhat_b)
    g_xhat_a: torch.Tensor
    reg_b: torch.Tensor  # F^{A→B}(G(x^A ∘ phi^{A→B}))   (7)
    reg_a: torch.Tensor
    rsyn_b: torch.Tensor  # F^{A→B}(G_A ∘ phi_af^{A→B})  (11)
    rsyn_a: torch.Tensor
    rreg_b: torch.Tensor  # F^{A→B}(G(x^A ∘ phi_af^{A→B}))  (12)
    rreg_a: torch.Tensor
    warped_a: torch.Tensor  # x^A ∘ phi^{A→B}
    warped_b: torch.Tensor
    affine_a: torch.Tensor  # x^A ∘ phi_af^{A→B}
    affine_b: torch.Tensor


def encode_both(net: FIRENet, x_a: torch.Tensor, x_b: torch.Tensor):
    """G on both images in one batch: ``(G_A, G_B, fine A→B, fine B→A)``, each ``fine`` one ``(moving,
    fixed)`` pair of G's finer features per finer level of the affine stage (None without finer levels,
    :meth:`nets.fire.FIRENet.encode_pair`)."""
    g_a, g_b, fine = net.encode_pair(x_a, x_b)
    return g_a, g_b, fine, (None if fine is None else tuple(pair[::-1] for pair in fine))


def fire_forward(net: FIRENet, x_a: torch.Tensor, x_b: torch.Tensor) -> FIREOutputs:
    """The FIRE training graph (METHOD.md "Forward graph in training"), batched for speed.

    Every call of G (or of one F) on several inputs is done as one batch: instance norm is
    per sample, so this is exactly the same as separate calls.

    Args:
        x_a, x_b: ``(B, 1, *S)`` in [-1, 1].
    """
    b = x_a.shape[0]
    shape = x_a.shape[2:]
    g_a, g_b, fine_ab, fine_ba = encode_both(net, x_a, x_b)
    fshape = g_a.shape[2:]
    t_ab = net.transform("AtoB", g_a, g_b, x_a, x_b, fine_ab)
    t_ba = net.transform("BtoA", g_b, g_a, x_b, x_a, fine_ba)

    u_ab_f, u_ba_f = t_ab.field(fshape), t_ba.field(fshape)
    u_ab, u_ba = t_ab.field(shape), t_ba.field(shape)
    af_ab, af_ba = t_ab.affine_field(shape), t_ba.affine_field(shape)

    warped_a, warped_b = spatial.warp(x_a, u_ab), spatial.warp(x_b, u_ba)
    affine_a, affine_b = spatial.warp(x_a, af_ab), spatial.warp(x_b, af_ba)

    # F^{A→B} on G_A (x̂^B) first: its output is re-encoded below.
    xhat_b = net.F_ab(g_a)
    xhat_a = net.F_ba(g_b)

    g2 = net.G(torch.cat([xhat_b, xhat_a, warped_a, warped_b, affine_a, affine_b]))
    g_xhat_b, g_xhat_a, g_warped_a, g_warped_b, g_aff_a, g_aff_b = g2.split(b)

    # All remaining decoder calls, one batch per decoder.
    g_a_w, g_b_w = spatial.warp(g_a, u_ab_f), spatial.warp(g_b, u_ba_f)
    fa_in = torch.cat([g_a_w, g_xhat_a, g_warped_a, t_ab.feat_affine, g_aff_a])
    fb_in = torch.cat([g_b_w, g_xhat_b, g_warped_b, t_ba.feat_affine, g_aff_b])
    xhat_t_b, cyc_b, reg_b, rsyn_b, rreg_b = net.F_ab(fa_in).split(b)
    xhat_t_a, cyc_a, reg_a, rsyn_a, rreg_a = net.F_ba(fb_in).split(b)

    return FIREOutputs(
        g_a=g_a, g_b=g_b, t_ab=t_ab, t_ba=t_ba, g_a_warped=g_a_w, g_b_warped=g_b_w, u_ab=u_ab, u_ba=u_ba, af_ab=af_ab, af_ba=af_ba,
        xhat_b=xhat_b, xhat_a=xhat_a, xhat_t_b=xhat_t_b, xhat_t_a=xhat_t_a, cyc_a=cyc_a, cyc_b=cyc_b,
        g_xhat_b=g_xhat_b, g_xhat_a=g_xhat_a, reg_b=reg_b, reg_a=reg_a, rsyn_b=rsyn_b, rsyn_a=rsyn_a,
        rreg_b=rreg_b, rreg_a=rreg_a, warped_a=warped_a, warped_b=warped_b, affine_a=affine_a,
        affine_b=affine_b,
    )


class FIRELoss(NamedTuple):
    """The total loss (1) and each of its parts (every one is logged)."""

    total: torch.Tensor
    syn_acc: torch.Tensor  # (2)
    syn_fea: torch.Tensor  # (3)
    syn_cyc: torch.Tensor  # (4)
    syn_align: torch.Tensor  # (5)
    reg_acc: torch.Tensor  # (7)
    reg_ic: torch.Tensor  # (8)
    r_smooth: torch.Tensor  # (10), already multiplied by λ
    r_syn: torch.Tensor  # (11)
    r_reg: torch.Tensor  # (12)
    r_affine_sim: torch.Tensor  # beyond the paper: weighted dissimilarity of x^A ∘ φ_af and x^B (0 when off)
    adv: torch.Tensor  # ExFIRE generator adversarial term (0 when off)

    def as_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}{k}": v for k, v in self._asdict().items()}


def syn_acc_loss(out: FIREOutputs, x_a, x_b) -> torch.Tensor:
    """(2) L_syn,acc = RMS(x̂_T^B, x^B) + RMS(x̂_T^A, x^A): synthesis from warped features matches the target."""
    return rms(out.xhat_t_b, x_b) + rms(out.xhat_t_a, x_a)


def syn_fea_loss(out: FIREOutputs) -> torch.Tensor:
    """(3) L_syn,fea = RMS(G(x^A), G(x^B) ∘ φ^{B→A}) + RMS(G(x^B), G(x^A) ∘ φ^{A→B}): modality-invariant features."""
    return rms(out.g_a, out.g_b_warped) + rms(out.g_b, out.g_a_warped)


def syn_cyc_loss(out: FIREOutputs, x_a, x_b) -> torch.Tensor:
    """(4) L_syn,cyc = RMS(F^{B→A}(G(x̂^B)), x^A) + RMS(F^{A→B}(G(x̂^A)), x^B): cycle consistency."""
    return rms(out.cyc_a, x_a) + rms(out.cyc_b, x_b)


def syn_align_loss(out: FIREOutputs) -> torch.Tensor:
    """(5) L_syn,align = RMS(G(x^A), G(x̂^B)) + RMS(G(x^B), G(x̂^A)): synthesised images encode alike."""
    return rms(out.g_a, out.g_xhat_b) + rms(out.g_b, out.g_xhat_a)


def reg_acc_loss(out: FIREOutputs, x_a, x_b, similarity=rms, similarity_input: str = "synthesised") -> torch.Tensor:
    """(7) L_reg,acc = D(F^{A→B}(G(x^A ∘ φ^{A→B})), x^B) + D(F^{B→A}(G(x^B ∘ φ^{B→A})), x^A).

    METHOD.md decision: the *image* is warped and re-encoded (§3.8), not the features (the
    paper prints the same expression as (2)). ``D`` is RMS (paper) or the configured
    ``similarity``; with ``similarity_input="image"`` the warped image x^A ∘ φ^{A→B} itself is
    compared with x^B (a direct multi-modal term, meant for MI).
    """
    if similarity_input == "synthesised":
        return similarity(out.reg_b, x_b) + similarity(out.reg_a, x_a)
    if similarity_input == "image":
        return similarity(out.warped_a, x_b) + similarity(out.warped_b, x_a)
    raise ValueError(f"similarity_input must be 'synthesised' or 'image', got {similarity_input!r}")


def reg_ic_loss(out: FIREOutputs, x_a, x_b) -> torch.Tensor:
    """(8) L_reg,ic = RMS(x^A, x^A ∘ φ^{A→B} ∘ φ^{B→A}) + RMS(x^B, x^B ∘ φ^{B→A} ∘ φ^{A→B}): inverse consistency."""
    return rms(x_a, spatial.warp(x_a, spatial.compose(out.u_ab, out.u_ba))) + rms(
        x_b, spatial.warp(x_b, spatial.compose(out.u_ba, out.u_ab)))


def r_smooth_loss(out: FIREOutputs, image_shape, smooth_units: str = "voxel") -> torch.Tensor:
    """λ R_smooth: (10) ‖∇²φ_nr^{A→B}‖² + ‖∇²φ_nr^{B→A}‖², weighted by λ = 2^{2n}/(10N) of (13).

    Departure from METHOD.md's "displacements in normalised coordinates" for this one term
    (default ``smooth_units="voxel"``): the field and its derivatives are taken in image voxels.
    In normalised units the same deformation costs ~(S/2)^4 more (about 1 000× on the phantom),
    which kept φ_nr from improving on the affine result at all; ``"normalised"`` keeps that form.
    """
    n = len(image_shape)
    units = tuple(image_shape) if smooth_units == "voxel" else None
    if smooth_units not in ("voxel", "normalised"):
        raise ValueError(f"smooth_units must be 'voxel' or 'normalised', got {smooth_units!r}")
    return smoothness_weight(n, image_shape) * (smoothness(out.t_ab.disp_nr, units) + smoothness(out.t_ba.disp_nr, units))


def r_syn_loss(out: FIREOutputs, x_a, x_b) -> torch.Tensor:
    """(11) R_syn = RMS(x^B, F^{A→B}(G(x^A) ∘ φ_af^{A→B})) + (B→A): affinely warped *features*."""
    return rms(x_b, out.rsyn_b) + rms(x_a, out.rsyn_a)


def r_reg_loss(out: FIREOutputs, x_a, x_b) -> torch.Tensor:
    """(12) R_reg = RMS(x^B, F^{A→B}(G(x^A ∘ φ_af^{A→B}))) + (B→A).

    METHOD.md decision, same ambiguity as (7): affinely warped *images*, re-encoded.
    """
    return rms(x_b, out.rreg_b) + rms(x_a, out.rreg_a)


def r_affine_sim_loss(out: FIREOutputs, x_a, x_b, similarity) -> torch.Tensor:
    """Beyond the paper (``model.affine.mi_weight``): D(x^A ∘ φ_af^{A→B}, x^B) + D(x^B ∘ φ_af^{B→A}, x^A) with a
    multi-modal D (MI): the affinely warped *image* against the fixed one directly, as ANTs' affine
    stage measures it, instead of only through the synthesised images of (11) and (12)."""
    return similarity(out.affine_a, x_b) + similarity(out.affine_b, x_a)


def affine_warmup_loss(net: FIRENet, x_a: torch.Tensor, x_b: torch.Tensor, similarity) -> torch.Tensor:
    """Beyond the paper (``optim.affine_warmup_steps``): D(x^A ∘ φ_af^{A→B}, x^B) + D(x^B ∘ φ_af^{B→A}, x^A)
    alone, through G and T_af only (no decoders, no T_nr): the affine warm-up's loss.

    Args:
        x_a, x_b: ``(B, 1, *S)`` in [-1, 1]; similarity: a multi-modal D (MI).
    """
    shape = x_a.shape[2:]
    g_a, g_b, fine_ab, fine_ba = encode_both(net, x_a, x_b)
    th_ab = net.affine_theta("AtoB", g_a, g_b, x_a, x_b, fine_ab)
    th_ba = net.affine_theta("BtoA", g_b, g_a, x_b, x_a, fine_ba)
    return (similarity(spatial.warp(x_a, spatial.affine_to_displacement(th_ab, shape)), x_b)
            + similarity(spatial.warp(x_b, spatial.affine_to_displacement(th_ba, shape)), x_a))


def fire_loss(out: FIREOutputs, x_a: torch.Tensor, x_b: torch.Tensor, similarity=rms,
              adversarial: torch.Tensor | None = None, similarity_input: str = "synthesised",
              smooth_units: str = "voxel", affine_similarity=None, affine_weight: float = 0.0) -> FIRELoss:
    """(1) L = L_syn + L_reg + R, with L_syn = (2)+(3)+(4)+(5) (6), L_reg = (7)+(8) (9) and
    R = R_syn + R_reg + λ R_smooth (13). No other weights (the paper's single hyperparameter is λ).

    Args:
        out: :func:`fire_forward` outputs.
        x_a, x_b: the inputs ``(B, 1, *S)``.
        similarity: dissimilarity used in (7) (:func:`make_similarity`); RMS elsewhere.
        similarity_input: see :func:`reg_acc_loss`.
        smooth_units: see :func:`r_smooth_loss`.
        adversarial: optional ExFIRE generator term added to the total.
        affine_similarity, affine_weight: :func:`r_affine_sim_loss`'s D and weight (0: off, the paper).
    """
    zero = torch.zeros((), device=x_a.device)
    parts = dict(
        syn_acc=syn_acc_loss(out, x_a, x_b),
        syn_fea=syn_fea_loss(out),
        syn_cyc=syn_cyc_loss(out, x_a, x_b),
        syn_align=syn_align_loss(out),
        reg_acc=reg_acc_loss(out, x_a, x_b, similarity, similarity_input),
        reg_ic=reg_ic_loss(out, x_a, x_b),
        r_smooth=r_smooth_loss(out, x_a.shape[2:], smooth_units),
        r_syn=r_syn_loss(out, x_a, x_b),
        r_reg=r_reg_loss(out, x_a, x_b),
        r_affine_sim=affine_weight * r_affine_sim_loss(out, x_a, x_b, affine_similarity) if affine_weight > 0 else zero,
        adv=adversarial if adversarial is not None else zero,
    )
    return FIRELoss(total=sum(parts.values()), **parts)


# ------------------------------------------------------------------ ExFIRE adversarial terms
# Least-squares GAN (Mao et al., "Least squares generative adversarial networks", ICCV 2017)
# with targets real = 1, synthesised = 0, as ExFIRE §3 trains D^A and D^B.

class RealFake(NamedTuple):
    """What one discriminator sees: ``real`` and ``fake`` (synthesised) images, each ``(B, 1, *S)``."""

    real: list[torch.Tensor]
    fake: list[torch.Tensor]


def adversarial_images(out: FIREOutputs, x_a: torch.Tensor, x_b: torch.Tensor) -> dict[str, RealFake]:
    """The real and synthesised inputs of D^A (modality A) and D^B (modality B); the one place
    that defines them (the generator term and the discriminator loss both read it).

    ExFIRE §3: "the transformed images are considered as real by D^A and D^B", so a warped real
    image is real. D^A: real = x^A, x^A ∘ φ^{A→B}; fake = x̂^A = F^{B→A}(G_B),
    x̂_T^A = F^{B→A}(G_B ∘ φ^{B→A}). D^B symmetric.

    Args:
        out: :func:`fire_forward` outputs.
        x_a, x_b: the inputs ``(B, 1, *S)``.

    Returns:
        ``{"A": RealFake, "B": RealFake}``, every image ``(B, 1, *S)`` (the tensors themselves, not copies).
    """
    return {
        "A": RealFake(real=[x_a, out.warped_a], fake=[out.xhat_a, out.xhat_t_a]),
        "B": RealFake(real=[x_b, out.warped_b], fake=[out.xhat_b, out.xhat_t_b]),
    }


def lsgan_generator_loss(disc: nn.Module, fakes: list[torch.Tensor]) -> torch.Tensor:
    """The generators' LSGAN term: mean over ``fakes`` of ``mean((D(f) - 1)^2)`` (synthesised
    images should score as real). Gradients flow into the images (and into D's parameters
    unless they are frozen).

    Args:
        disc: ``(B, 1, *S) -> (B, 1, *S')`` realness scores.
        fakes: images ``(B, 1, *S)``.

    Returns:
        scalar.
    """
    return torch.stack([(disc(f) - 1).pow(2).mean() for f in fakes]).mean()


def lsgan_discriminator_loss(disc: nn.Module, reals: list[torch.Tensor], fakes: list[torch.Tensor]
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The discriminator's LSGAN loss
    ``0.5 [mean_r mean((D(r) - 1)^2) + mean_f mean(D(f)^2)]`` on detached images: it trains D
    only, never what produced the images.

    Args:
        disc: ``(B, 1, *S) -> (B, 1, *S')`` realness scores.
        reals, fakes: images ``(B, 1, *S)``.

    Returns:
        ``(loss, mean_real_score, mean_fake_score)``, scalars; the mean raw scores of D (for
        monitoring) are detached.
    """
    real_scores = [disc(r.detach()) for r in reals]
    fake_scores = [disc(f.detach()) for f in fakes]
    real_term = torch.stack([(s - 1).pow(2).mean() for s in real_scores]).mean()
    fake_term = torch.stack([s.pow(2).mean() for s in fake_scores]).mean()
    return 0.5 * (real_term + fake_term), _mean_score(real_scores), _mean_score(fake_scores)


def _mean_score(scores: list[torch.Tensor]) -> torch.Tensor:
    """Mean raw score over a list of ``(B, 1, *S')`` score maps, detached: scalar."""
    return torch.stack([s.detach().mean() for s in scores]).mean()


def discriminators(net: FIRENet) -> dict[str, nn.Module]:
    """``{"A": D^A, "B": D^B}``, the keys of :func:`adversarial_images` (empty when ExFIRE is off)."""
    return {"A": net.D_a, "B": net.D_b} if net.D_a is not None else {}


def generator_adversarial_loss(net: FIRENet, images: dict[str, RealFake]) -> torch.Tensor:
    """ExFIRE's generator term: ``sum over D in {D^A, D^B}`` of :func:`lsgan_generator_loss` on
    that discriminator's synthesised images (G, F and T learn to confuse D^A and D^B, §3).

    Returns:
        scalar (unweighted).
    """
    return sum(lsgan_generator_loss(disc, images[name].fake) for name, disc in discriminators(net).items())
