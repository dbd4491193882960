"""Building blocks shared by every network: convolutions for 2D and 3D, instance norm, conv blocks, ResNet blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


def conv(n: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv2d`` or, for ``n = 3``, :class:`Conv3d`."""
    return Conv3d(*args, **kwargs) if n == 3 else getattr(nn, f"Conv{n}d")(*args, **kwargs)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose float32 CPU forward (and so its backward) always runs oneDNN's convolution.

    PyTorch picks oneDNN or its own slower loop by a rule written for 2D: with one sample, kernels of at
    most 3 and ``N × C × D × H`` at most 20 480, it takes the loop, which on a 3D volume is far the slower:
    the non-rigid U-Net's first convolution (2 → 16 channels on 48 × 56 × 48 voxels, batch 1) took 10.3 ms
    forward and 58 ms forward + backward, against 2.4 and 35 ms by oneDNN (a one-off timing, one thread,
    torch 2.13; the whole model: docs/performance.md). The values are the same to float rounding
    (tests/test_networks.py). 1 × 1 × 1 kernels, other dtypes and devices, padding modes other than zeros,
    tensor subclasses (fake tensors) and compiled graphs keep PyTorch's choice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # compiling first: dynamo folds it and traces torch's convolution, not the checks after it
        if (not torch.compiler.is_compiling() and type(x) is torch.Tensor  # not fake or meta tensors
                and x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and math.prod(self.kernel_size) > 1 and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, list(self.padding),
                                                     list(self.stride), list(self.dilation), self.groups)
        return super().forward(x)


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
