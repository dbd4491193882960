"""FIRE losses, equations (1)–(13) of the FIRE paper as docs/method.md fixes them, and ExFIRE's
least-squares adversarial terms.

:func:`fire_forward` runs the training graph once (both directions) and
:func:`fire_loss` turns it into a :class:`FIRELoss` of named parts, ready to log.
:func:`adversarial_images` names what each discriminator sees as real and as synthesised.

One module per job: :mod:`.similarity` (RMS, MI, LNCC), :mod:`.regularisers` (smoothness and λ),
:mod:`.graph` (the training forward), :mod:`.terms` (each term and their sum) and :mod:`.adversarial`
(ExFIRE's LSGAN terms). Everything public is re-exported here.
"""

from __future__ import annotations

from .adversarial import (
    RealFake,
    adversarial_images,
    discriminators,
    generator_adversarial_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from .graph import FIREOutputs, encode_both, fire_forward
from .regularisers import gradient_smoothness, smoothness, smoothness_weight
from .similarity import SIMILARITIES, LocalNCC, MutualInformation, make_similarity, mse, rms
from .terms import (
    FIRELoss,
    affine_warmup_loss,
    fire_loss,
    r_affine_sim_loss,
    r_reg_loss,
    r_smooth_loss,
    r_syn_loss,
    reg_acc_loss,
    reg_ic_loss,
    syn_acc_loss,
    syn_align_loss,
    syn_cyc_loss,
    syn_fea_loss,
)

__all__ = [
    "SIMILARITIES", "FIRELoss", "FIREOutputs", "LocalNCC", "MutualInformation", "RealFake", "adversarial_images",
    "affine_warmup_loss", "discriminators", "encode_both", "fire_forward", "fire_loss", "generator_adversarial_loss",
    "gradient_smoothness", "lsgan_discriminator_loss", "lsgan_generator_loss", "make_similarity", "mse",
    "r_affine_sim_loss", "r_reg_loss", "r_smooth_loss", "r_syn_loss", "reg_acc_loss", "reg_ic_loss", "rms",
    "smoothness", "smoothness_weight", "syn_acc_loss", "syn_align_loss", "syn_cyc_loss", "syn_fea_loss",
]
