"""The FIRE objective: each term (2)–(12) as a function of :func:`graph.fire_forward`'s outputs, their
sum (1) as a :class:`FIRELoss` of named parts, and the affine warm-up's loss."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import spatial
from ..nets.fire import FIRENet
from .graph import FIREOutputs, encode_both
from .regularisers import smoothness, smoothness_weight
from .similarity import rms


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

    Decision (docs/method.md): the *image* is warped and re-encoded (§3.8), not the features (the
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

    Departure from docs/method.md's "displacements in normalised coordinates" for this one term
    (default ``smooth_units="voxel"``): the field and its derivatives are taken in image voxels.
    In normalised units the same deformation costs ~(S/2)^4 more (about 1 000× on the phantom),
    which kept φ_nr from improving on the affine result at all; ``"normalised"`` keeps that form.
    """
    n = len(image_shape)
    units = tuple(image_shape) if smooth_units == "voxel" else None
    if smooth_units not in ("voxel", "normalised"):
        raise ValueError(f"smooth_units must be 'voxel' or 'normalised', got {smooth_units!r}")
    return smoothness_weight(n, image_shape) * (smoothness(out.t_ab.disp_nr, units)
                                                + smoothness(out.t_ba.disp_nr, units))


def r_syn_loss(out: FIREOutputs, x_a, x_b) -> torch.Tensor:
    """(11) R_syn = RMS(x^B, F^{A→B}(G(x^A) ∘ φ_af^{A→B})) + (B→A): affinely warped *features*."""
    return rms(x_b, out.rsyn_b) + rms(x_a, out.rsyn_a)


def r_reg_loss(out: FIREOutputs, x_a, x_b) -> torch.Tensor:
    """(12) R_reg = RMS(x^B, F^{A→B}(G(x^A ∘ φ_af^{A→B}))) + (B→A).

    Decision (docs/method.md), same ambiguity as (7): affinely warped *images*, re-encoded.
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
