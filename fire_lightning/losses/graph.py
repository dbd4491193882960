"""The FIRE training graph: :func:`fire_forward` runs G, T, F once in both directions and returns
every image, feature map and field that the loss terms compare (:class:`FIREOutputs`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import spatial
from ..nets.fire import FIRENet
from ..nets.transformation import Transform


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


def encode_both(net: FIRENet, x_a: torch.Tensor, x_b: torch.Tensor, encoder=None):
    """G (or ``encoder``) on both images in one batch: ``(G_A, G_B, fine A→B, fine B→A)``, each ``fine`` one
    ``(moving, fixed)`` pair of G's finer features per finer level of the affine stage (None without finer
    levels, :meth:`nets.fire.FIRENet.encode_pair`)."""
    g_a, g_b, fine = net.encode_pair(x_a, x_b, encoder)
    return g_a, g_b, fine, (None if fine is None else tuple(pair[::-1] for pair in fine))


def affine_inputs_both(net: FIRENet, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple:
    """The affine stage's features for A→B and for B→A from one pass of its encoder when they are not G's
    (a frozen copy, :attr:`nets.fire.FIRENet.reads_affine_copy`); ``(None, None)`` when they are G's."""
    if not net.reads_affine_copy:
        return None, None
    c_a, c_b, fine_ab, fine_ba = encode_both(net, x_a, x_b, net.G_affine)
    return (c_a, c_b, fine_ab), (c_b, c_a, fine_ba)


def fire_forward(net: FIRENet, x_a: torch.Tensor, x_b: torch.Tensor) -> FIREOutputs:
    """The FIRE training graph (docs/method.md, "Forward graph in training"), batched for speed.

    Every call of G (or of one F) on several inputs is done as one batch: instance norm is
    per sample, so this is exactly the same as separate calls.

    Args:
        x_a, x_b: ``(B, 1, *S)`` in [-1, 1].
    """
    b = x_a.shape[0]
    shape = x_a.shape[2:]
    g_a, g_b, fine_ab, fine_ba = encode_both(net, x_a, x_b)
    fshape = g_a.shape[2:]
    aff_ab, aff_ba = affine_inputs_both(net, x_a, x_b)
    t_ab = net.transform("AtoB", g_a, g_b, x_a, x_b, fine_ab, aff_ab)
    t_ba = net.transform("BtoA", g_b, g_a, x_b, x_a, fine_ba, aff_ba)

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
        g_a=g_a, g_b=g_b, t_ab=t_ab, t_ba=t_ba, g_a_warped=g_a_w, g_b_warped=g_b_w, u_ab=u_ab, u_ba=u_ba, af_ab=af_ab,
        af_ba=af_ba,
        xhat_b=xhat_b, xhat_a=xhat_a, xhat_t_b=xhat_t_b, xhat_t_a=xhat_t_a, cyc_a=cyc_a, cyc_b=cyc_b,
        g_xhat_b=g_xhat_b, g_xhat_a=g_xhat_a, reg_b=reg_b, reg_a=reg_a, rsyn_b=rsyn_b, rsyn_a=rsyn_a,
        rreg_b=rreg_b, rreg_a=rreg_a, warped_a=warped_a, warped_b=warped_b, affine_a=affine_a,
        affine_b=affine_b,
    )
