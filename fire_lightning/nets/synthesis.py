"""G and F (FIRE §3.1): the encoder into the shared representation and the decoders out of it.

``w`` is the width (``model.synthesis.width``, paper: 64); ``S`` the image grid, ``S/4`` G's feature grid.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ConvBlock, ResBlock, conv


class Checkpointed(nn.Module):
    """A ``self.net`` (``nn.Sequential``) run with activation checkpointing when ``checkpoint`` is
    set (``model.checkpoint_activations``), in training with gradients only: each call keeps only
    its input, and the backward recomputes the call's activations, one call at a time. A FIRE step
    calls G twice and each F twice on batches of up to 6 inputs, so what stays alive is the inputs
    and outputs, not every layer of every call (the memory of 3D at paper width). Same values and
    gradients either way. Whole calls are checkpointed, not single blocks: on a 64×64×32 step at
    width 16, per-block checkpointing cut the peak by 28 %, whole calls by 50 % (for +28 % time).
    Eval mode (validation, inference, Grad-CAM and its hooks) always runs plainly.

    ``chunk`` (``model.checkpoint_chunk``) > 0 checkpoints each run of that many samples of a call
    apart: the backward then recomputes one chunk's activations at a time, not the whole batch's
    (every layer works per sample: convolutions, instance norm, upsampling), so the transient of the
    recomputation shrinks with the chunk; the values are the same, the weights' gradients equal up to
    float summation order."""

    checkpoint: bool = False
    chunk: int = 0
    net: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.net, x)

    def _run(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and self.training and torch.is_grad_enabled():
            if 0 < self.chunk < x.shape[0]:
                return torch.cat([checkpoint(blocks, part, use_reentrant=False) for part in x.split(self.chunk)])
            return checkpoint(blocks, x, use_reentrant=False)
        return blocks(x)


class Encoder(Checkpointed):
    """G: ``(B, 1, *S) -> (B, 4w, *S/4)``; conv7(w) → conv3 s2 (2w) → conv3 s2 (4w) → 4 ResBlocks.

    ``outer_kernel``: the first convolution's kernel (7, the paper's; in 3D a 7³ kernel at full
    resolution is most of a CPU iteration's time, so the 3D CPU config uses 3).

    ``down_kernel``: the stride-2 convolutions' kernel. 3 (the paper's) centres feature point ``o`` on
    image pixel ``4o`` after two levels, while every warp of G's features (``align_corners=False``)
    assumes ``4o + 1.5``: a 1.5-pixel offset, which an affine warp of the features turns into an
    error of up to (scale − 1) × 1.5 pixels. 4 (padding 1) puts each level's points where the grid
    convention does.
    """

    def __init__(self, n: int, width: int, in_channels: int = 1, n_res: int = 4, down_kernel: int = 3,
                 outer_kernel: int = 7):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            ConvBlock(n, in_channels, w, outer_kernel),
            ConvBlock(n, w, 2 * w, down_kernel, stride=2),
            ConvBlock(n, 2 * w, 4 * w, down_kernel, stride=2),
            *[ResBlock(n, 4 * w) for _ in range(n_res)],
        )
        self.out_channels = 4 * w
        #: channels of G's output (S/4) and of its finer levels (S/2, S), the affine stage's inputs
        self.level_channels = (4 * w, 2 * w, w)

    @property
    def last_conv(self) -> nn.Module:
        """The last convolution (inside the last ResBlock, before its instance norm)."""
        return self.net[-1].body[1]

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the last ResBlock, whose output is G(x) (see explain.py on why not the conv)."""
        return self.net[-1]

    #: where each finer level ends in ``net``: S/2 after the first stride-2 block, S/1 after the first block
    LEVEL_ENDS = (2, 1)

    def finer(self, x: torch.Tensor, levels: int) -> tuple[torch.Tensor, ...]:
        """G's ``levels`` finer feature maps, coarse to fine: ``(B, 2w, *S/2)`` (the affine stage's fine level,
        ``model.affine_fine_passes``), then ``(B, w, *S)`` (its full-resolution level, ``affine_full_passes``).
        Only G's first blocks run (not its last, which Grad-CAM hooks, nor the ResBlocks' cost)."""
        return self._levels(x, levels, coarse=False)[1]

    def pyramid(self, x: torch.Tensor, levels: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(G(x) (B, 4w, *S/4), finer)`` in one pass of G, ``finer`` as in :meth:`finer` (``levels`` 0–2)."""
        return self._levels(x, levels, coarse=True)

    def _levels(self, x: torch.Tensor, levels: int, coarse: bool):
        if not 0 <= levels <= len(self.LEVEL_ENDS):
            raise ValueError(f"G has {len(self.LEVEL_ENDS)} finer levels, asked for {levels}")
        ends = sorted(self.LEVEL_ENDS[:levels]) + ([len(self.net)] if coarse else [])  # fine to coarse along G
        out, start, h = [], 0, x
        for end in ends:
            h = self._run(self.net[start:end], h)
            out.append(h)
            start = end
        finer = out[:-1] if coarse else out
        return (out[-1] if coarse else None), tuple(reversed(finer))


class Decoder(Checkpointed):
    """F: ``(B, 4w, *S/4) -> (B, 1, *S)`` in [-1, 1]; 4 ResBlocks → up+conv3 (2w) → up+conv3 (w) → conv7 → conv1
    → tanh. ``outer_kernel``: that conv7's kernel (as G's)."""

    def __init__(self, n: int, width: int, out_channels: int = 1, n_res: int = 4, outer_kernel: int = 7):
        super().__init__()
        w = width
        mode = "bilinear" if n == 2 else "trilinear"
        self.net = nn.Sequential(
            *[ResBlock(n, 4 * w) for _ in range(n_res)],
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
            ConvBlock(n, 4 * w, 2 * w, 3),
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
            ConvBlock(n, 2 * w, w, 3),
            ConvBlock(n, w, w, outer_kernel),
            conv(n, w, out_channels, 1),
            nn.Tanh(),
        )

