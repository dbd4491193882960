"""Building blocks shared by every network: convolutions for 2D and 3D, instance norm, conv blocks, ResNet blocks."""

from __future__ import annotations

import torch
from torch import nn


def conv(n: int, *args, **kwargs) -> nn.Module:
    return getattr(nn, f"Conv{n}d")(*args, **kwargs)


def inorm(n: int, ch: int) -> nn.Module:
    """Instance norm with a learned scale and shift per channel (``n`` is not needed: one module for
    2D and 3D). ``GroupNorm`` with one channel per group is instance norm (statistics per sample and
    channel over the spatial axes, in training and eval alike, eps 1e-5, ``weight`` / ``bias``: the
    state-dict keys of ``InstanceNorm{n}d(affine=True)``, so older checkpoints load), computed by one
    native op that keeps the channels-last layout; ``InstanceNorm`` reshapes, repeats its affine
    parameters and returns to the default layout on every call (``register`` 7 % faster on the
    2-core CPU, docs/performance.md)."""
    return nn.GroupNorm(ch, ch, eps=1e-5, affine=True)


class ConvBlock(nn.Sequential):
    """conv → instance norm → activation (ReLU or LeakyReLU(0.2)).

    Padding ``(k - 1) // 2``: "same" for odd kernels; an even kernel of stride 2 halves the grid with
    its output point ``o`` centred on input ``2o + 0.5``, where ``align_corners=False`` puts it.
    """

    def __init__(self, n: int, cin: int, cout: int, k: int, stride: int = 1, leaky: bool = False):
        super().__init__(
            conv(n, cin, cout, k, stride=stride, padding=(k - 1) // 2),
            inorm(n, cout),
            nn.LeakyReLU(0.2, inplace=True) if leaky else nn.ReLU(inplace=True),
        )


class ResBlock(nn.Module):
    """CycleGAN ResNet block: x + (conv3 → IN → act → conv3 → IN)(x)."""

    def __init__(self, n: int, ch: int, leaky: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            ConvBlock(n, ch, ch, 3, leaky=leaky),
            conv(n, ch, ch, 3, padding=1),
            inorm(n, ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def leaky_conv(n: int, cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """conv3 (stride 1 or 2) → LeakyReLU(0.2), without normalisation: for layers whose values carry a
    displacement's scale, which an instance norm would remove."""
    return nn.Sequential(conv(n, cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True))


def zero_conv(n: int, cin: int, cout: int) -> nn.Module:
    """conv3 with zero weights and bias: an output layer that starts at exactly 0 (the identity transform
    for a displacement head) and still learns (its weights' gradients are its inputs')."""
    layer = conv(n, cin, cout, 3, padding=1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
