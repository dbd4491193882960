"""T_nr, the non-rigid subnet of each transformation network: what produces phi_nr after phi_af.

Two heads, chosen by ``model.nonrigid.head`` (:class:`schema.NonRigidConfig`):

* ``conv`` (the paper's, §3.3): G's features of the moving image warped by phi_af and of the fixed
  image, each through a conv block, concatenated, a ResBlock, a conv and a tanh: a field on G's
  S/4 grid. Its receptive field and capacity are small (about 30 k parameters at width 8), and on
  the phantom it learns no deformation that carries over to new pairs, even when trained on the
  true fields (docs/nonrigid.md).
* ``unet``: a U-Net (as VoxelMorph's and the MI-CNN paper's networks) on the two *images*, the
  moving one warped by phi_af: stride-2 levels down to S/2^(L-1), a decoder with skip connections
  back to ``out_level`` (1: a field on the S/2 grid), ``passes`` times as a recursive cascade (pass
  k re-warps the moving image by phi_af ∘ exp(v) and adds its velocity to v). It reads the images,
  not G's features: on the phantom, G's fine features fed alongside the images made the field
  worse, G's S/4 features no better (the screen in docs/nonrigid.md).

Both return a raw field ``(B, n, *S_nr)`` in normalised units (a velocity when
``model.nonrigid.diffeomorphic``), its last layer zero-initialised, so training starts at phi_nr = identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import spatial
from .blocks import ConvBlock, ResBlock, leaky_conv, zero_conv

NONRIGID_HEADS = ("conv", "unet")


class NonRigidNet(nn.Module):
    """T_nr of the paper: ``(G(x^A) ∘ phi_af, G(x^B)) -> u (B, n, *S/4)`` normalised displacement (or velocity).

    Each input through its own conv block (parallel), concatenated → ResBlock (IN + LeakyReLU)
    → conv3 → tanh. The last conv is zero-initialised: the output starts at exactly 0.
    """

    needs_images = False

    def __init__(self, n: int, in_channels: int, hidden: int):
        super().__init__()
        self.branch_a = ConvBlock(n, in_channels, hidden, 3, leaky=True)
        self.branch_b = ConvBlock(n, in_channels, hidden, 3, leaky=True)
        self.res = ResBlock(n, 2 * hidden, leaky=True)
        self.head = zero_conv(n, 2 * hidden, n)

    @property
    def last_conv(self) -> nn.Module:
        """The displacement head."""
        return self.head

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the ResBlock whose features the head reads."""
        return self.res

    def forward(self, fa_af: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.branch_a(fa_af), self.branch_b(fb)], dim=1)
        return torch.tanh(self.head(self.res(h)))


class UNetNonRigid(nn.Module):
    """T_nr as a U-Net on the image pair: ``(x^A ∘ phi_af, x^B) (B, 1, *S) -> v (B, n, *S/2^out_level)``.

    Level 0 (S): conv of the two images; level i (S/2^i): a stride-2 conv then a conv; the decoder
    goes back up, each step a conv of ``[upsampled, skip]``, to ``out_level``; a conv to ``n``
    channels, zero-initialised and scaled by :attr:`OUTPUT_SCALE` (a smaller step for the field's
    layer than for the features', as VoxelMorph initialises its flow layer small).

    Args:
        channels: features per level, fine to coarse (``len`` = levels; 4: down to S/8).
        out_level: the level the field lives on (0: S, 1: S/2, ...).
        passes / passes_eval: cascade passes in training / at inference (None: as in training).
    """

    needs_images = True
    #: factor on the output layer: its weights move at a tenth of the others' pace under Adam
    OUTPUT_SCALE = 0.1

    def __init__(self, n: int, channels=(16, 32, 32, 32), out_level: int = 1, passes: int = 1,
                 passes_eval: int | None = None):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.n, self.out_level = n, int(out_level)
        self.passes, self.passes_eval = int(passes), int(passes_eval or passes)
        self.down = nn.ModuleList([nn.Identity()]
                                  + [leaky_conv(n, a, b, stride=2) for a, b in zip(channels, channels[1:])])
        self.merge = nn.ModuleList([leaky_conv(n, 2, channels[0])] + [leaky_conv(n, c, c) for c in channels[1:]])
        # decoder step i: input = [the level below (its decoder output, or the bottom), skip of level i]
        self.up = nn.ModuleList([leaky_conv(n, channels[i + 1] + channels[i], channels[i])
                                 for i in range(len(channels) - 2, out_level - 1, -1)])
        self.head = zero_conv(n, channels[out_level], n)
        self.mode = "bilinear" if n == 2 else "trilinear"

    @property
    def last_conv(self) -> nn.Module:
        """The field layer."""
        return self.head

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the last decoder block, whose features the field layer reads."""
        return self.up[-1] if len(self.up) else self.merge[self.out_level]

    def field(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """One pass: ``(B, 1, *S)`` each → velocity increment ``(B, n, *S/2^out_level)``."""
        skips, h = [], None
        for i, (down, merge) in enumerate(zip(self.down, self.merge)):
            h = merge(torch.cat([moving, fixed], 1) if i == 0 else down(h))
            skips.append(h)
        for up, skip in zip(self.up, reversed(skips[self.out_level:-1])):
            h = up(torch.cat([nn.functional.interpolate(h, size=skip.shape[2:], mode=self.mode), skip], 1))
        return self.head(h) * self.OUTPUT_SCALE

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, theta: torch.Tensor,
                to_displacement: Callable[[torch.Tensor], torch.Tensor], passes: int | None = None) -> torch.Tensor:
        """The cascade: ``moving, fixed (B, 1, *S)``, ``theta (B, n, n+1)`` phi_af; ``to_displacement`` turns the
        raw field into phi_nr (scaling and squaring for a velocity). Returns the raw field, the passes' sum.
        ``passes``: how many (None: the training or inference passes)."""
        shape = moving.shape[2:]
        v = None
        if passes is None:
            passes = self.passes if self.training else self.passes_eval
        for _ in range(passes):
            disp = spatial.affine_to_displacement(theta, shape) if v is None else \
                spatial.compose_affine_displacement(theta, spatial.resize_field(to_displacement(v), shape))
            dv = self.field(spatial.warp(moving, disp), fixed).float()
            v = dv if v is None else v + dv
        return v


def build_nonrigid(n: int, feat_channels: int, cfg=None) -> nn.Module:
    """T_nr for ``model.nonrigid`` (:class:`schema.NonRigidConfig`; None: the paper's ``conv`` head)."""
    head = "conv" if cfg is None else cfg.head
    if head == "conv":
        return NonRigidNet(n, feat_channels, feat_channels // 2)
    if head == "unet":
        return UNetNonRigid(n, tuple(cfg.channels), cfg.out_level, cfg.passes, cfg.passes_eval)
    raise ValueError(f"model.nonrigid.head must be one of {NONRIGID_HEADS}, got {head!r}")
