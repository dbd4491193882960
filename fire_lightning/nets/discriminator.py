"""ExFIRE's discriminators D^A, D^B (optional, ``model.adversarial``)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import conv, inorm


class Discriminator(nn.Module):
    """PatchGAN discriminator ``(B, 1, *S) -> (B, 1, *S/8)`` realness logits (ExFIRE, optional)."""

    def __init__(self, n: int, width: int, n_layers: int = 3):
        super().__init__()
        layers = [conv(n, 1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for i in range(1, n_layers):
            nxt = min(width * 2**i, width * 8)
            layers += [conv(n, ch, nxt, 4, stride=2, padding=1), inorm(n, nxt), nn.LeakyReLU(0.2, inplace=True)]
            ch = nxt
        layers += [conv(n, ch, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_conv(self) -> nn.Module:
        """The one-channel patch-score projection."""
        return self.net[-1]

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the instance norm after the last feature convolution (before the projection)."""
        return self.net[-3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
