"""ExFIRE's adversarial terms: a least-squares GAN (Mao et al., "Least squares generative adversarial
networks", ICCV 2017) with targets real = 1, synthesised = 0, as ExFIRE §3 trains D^A and D^B."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..nets.fire import FIRENet
from .graph import FIREOutputs


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
