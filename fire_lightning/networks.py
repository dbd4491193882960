"""FIRE networks (FIRE §3.1–3.3, METHOD.md "Networks"), one code path for 2D and 3D.

``w`` is the configurable width (paper: 64). Shapes below use ``S`` for the image grid and
``S/4`` for the feature grid of G.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import spatial
from .blocks import ConvBlock, ResBlock, conv, inorm, zero_conv
from .nonrigid import build_nonrigid


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

    ``down_kernel``: the stride-2 convolutions' kernel. 3 (METHOD.md) centres feature point ``o`` on
    image pixel ``4o`` after two levels, while every warp of G's features (``align_corners=False``)
    assumes ``4o + 1.5``: a 1.5-pixel offset, which an affine warp of the features turns into an
    error of up to (scale − 1) × 1.5 pixels. 4 (padding 1) puts each level's points where the grid
    convention does.
    """

    def __init__(self, n: int, width: int, in_channels: int = 1, n_res: int = 4, down_kernel: int = 3):
        super().__init__()
        if down_kernel not in (3, 4):
            raise ValueError(f"down_kernel must be 3 (paper) or 4 (grid-aligned), got {down_kernel}")
        w = width
        self.net = nn.Sequential(
            ConvBlock(n, in_channels, w, 7),
            ConvBlock(n, w, 2 * w, down_kernel, stride=2),
            ConvBlock(n, 2 * w, 4 * w, down_kernel, stride=2),
            *[ResBlock(n, 4 * w) for _ in range(n_res)],
        )
        self.out_channels = 4 * w

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
    """F: ``(B, 4w, *S/4) -> (B, 1, *S)`` in [-1, 1]; 4 ResBlocks → up+conv3 (2w) → up+conv3 (w) → conv7 → conv1 → tanh."""

    def __init__(self, n: int, width: int, out_channels: int = 1, n_res: int = 4):
        super().__init__()
        w = width
        mode = "bilinear" if n == 2 else "trilinear"
        self.net = nn.Sequential(
            *[ResBlock(n, 4 * w) for _ in range(n_res)],
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
            ConvBlock(n, 4 * w, 2 * w, 3),
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
            ConvBlock(n, 2 * w, w, 3),
            ConvBlock(n, w, w, 7),
            conv(n, w, out_channels, 1),
            nn.Tanh(),
        )


class AffineNet(nn.Module):
    """T_af: ``[G(x^A), G(x^B)] (B, 8w, *S/4) -> theta (B, n, n+1)``.

    Three strided conv blocks (conv + instance norm + LeakyReLU; the last without the norm, see
    below), global average pooling, two fully connected layers. The paper's layer sizes ("1×8, 7", "8×10, 5", "16×20, 2") are
    not self-consistent; we use kernels 7, 5, 3 with ``channels`` outputs (config). The last
    layer is zero-initialised with an identity bias, so the output is exactly the identity.
    """

    def __init__(self, n: int, in_channels: int, channels: tuple[int, ...] = (32, 64, 64), hidden: int = 64):
        super().__init__()
        self.n = n
        layers, cin = [], in_channels
        for i, (c, k) in enumerate(zip(channels, (7, 5, 3))):
            if i < len(channels) - 1:
                layers.append(ConvBlock(n, cin, c, k, stride=2, leaky=True))
            else:
                # No instance norm before the global average pooling: normalising each channel
                # over the few remaining points would make its pooled mean a constant (the norm's
                # bias), whatever the input, and the affine parameters could not be regressed.
                layers.append(nn.Sequential(conv(n, cin, c, k, stride=2, padding=k // 2), nn.LeakyReLU(0.2, inplace=True)))
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = getattr(nn, f"AdaptiveAvgPool{n}d")(1)
        self.fc = nn.Sequential(nn.Linear(cin, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, n * (n + 1)))
        nn.init.zeros_(self.fc[-1].weight)
        with torch.no_grad():
            self.fc[-1].bias.copy_(torch.eye(n, n + 1).flatten())

    @property
    def last_conv(self) -> nn.Module:
        """The last convolution before the global average pooling (no norm follows it)."""
        return self.features[-1][0]

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the last convolution."""
        return self.last_conv

    #: smallest feature grid the three stride-2 blocks reduce to more than one point (instance norm needs 2)
    min_size = 16

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        h = torch.cat([fa, fb], dim=1)
        if min(h.shape[2:]) < self.min_size:  # tiny inputs: upsample so every block keeps >= 2 points
            size = [max(s, self.min_size) for s in h.shape[2:]]
            h = nn.functional.interpolate(h, size=size, mode="bilinear" if self.n == 2 else "trilinear")
        h = self.pool(self.features(h)).flatten(1)
        return self.fc(h).view(-1, self.n, self.n + 1)


class DenseAffineNet(nn.Module):
    """T_af by a closed-form fit (``model.affine_head = "dense"``): ``(G(x^A), G(x^B)) -> theta (B, n, n+1)``.

    A small U-Net on the feature grid (two stride-2 levels: at 1/16 of the image its receptive field
    spans the image) predicts, at every feature point ``p``, where ``p`` lies in the moving image,
    ``p + u(p)``, and a confidence ``w(p)`` (softmax over the points); theta is the weighted
    least-squares affine through those correspondences (:func:`spatial.fit_affine`), differentiable.
    Each point only has to match locally, which a convolution does equivariantly, instead of one
    regression through global pooling having to read the transform off position-free features (a
    rotation is a displacement that varies linearly across the image). The output layer is
    zero-initialised: ``u = 0`` and equal weights, so theta starts at exactly the identity.
    """

    def __init__(self, n: int, in_channels: int, channels: tuple[int, ...] = (32, 64, 64), ridge: float = 1e-3):
        super().__init__()
        self.n, self.ridge = n, float(ridge)
        c1, c2, c3 = channels
        self.enc0 = ConvBlock(n, in_channels, c1, 3, leaky=True)
        self.enc1 = ConvBlock(n, c1, c2, 4, stride=2, leaky=True)
        self.enc2 = ConvBlock(n, c2, c3, 4, stride=2, leaky=True)
        self.mid = ConvBlock(n, c3, c3, 3, leaky=True)
        self.dec1 = ConvBlock(n, c3 + c2, c2, 3, leaky=True)
        self.dec0 = ConvBlock(n, c2 + c1, c1, 3, leaky=True)
        self.head = zero_conv(n, c1, n + 1)
        self.mode = "bilinear" if n == 2 else "trilinear"

    @property
    def last_conv(self) -> nn.Module:
        """The output layer (displacement and confidence)."""
        return self.head

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the last decoder block, whose features the output layer reads."""
        return self.dec0

    #: smallest feature grid on which both stride-2 levels keep at least 2 points per axis
    min_size = 8

    def correspondences(self, fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u (B, n, *S/4)`` normalised displacement and ``w (B, *S/4)`` weights (sum 1)."""
        h = torch.cat([fa, fb], dim=1)
        size = h.shape[2:]
        if min(size) < self.min_size:  # tiny inputs: the U-Net runs on an upsampled grid, the fit on the input's
            h = nn.functional.interpolate(h, size=[max(s, self.min_size) for s in size], mode=self.mode)
        e0 = self.enc0(h)
        e1 = self.enc1(e0)
        m = self.mid(self.enc2(e1))
        up = lambda t, ref: nn.functional.interpolate(t, size=ref.shape[2:], mode=self.mode)  # noqa: E731
        d1 = self.dec1(torch.cat([up(m, e1), e1], 1))
        out = self.head(self.dec0(torch.cat([up(d1, e0), e0], 1)))
        if tuple(out.shape[2:]) != tuple(size):
            out = nn.functional.interpolate(out, size=size, mode=self.mode)
        w = torch.softmax(out[:, self.n].flatten(1), dim=1).view(out.shape[0], *size)
        return out[:, : self.n], w

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        u, w = self.correspondences(fa, fb)
        return spatial.fit_affine_to_field(u, w, ridge=self.ridge)


class KeypointAffineNet(nn.Module):
    """T_af by keypoints (``model.affine_head = "keypoints"``, after KeyMorph): ``(G(x^A), G(x^B)) -> theta``.

    One small convolutional detector, applied to each image's features separately (so both images'
    keypoints come from the same function of modality-invariant features), gives ``K`` heatmaps; each
    keypoint is its heatmap's soft-argmax (the mean position under a softmax over the grid), with a
    confidence from both images' heatmap peaks. theta is the weighted least-squares affine that takes
    the fixed image's keypoints onto the moving image's (:func:`spatial.fit_affine`), in closed form.
    A detector is translation-equivariant by construction and sees the whole image through the softmax,
    so a keypoint follows its anatomy however far the transform moved it.
    """

    def __init__(self, n: int, in_channels: int, channels: tuple[int, ...] = (32, 64, 64), ridge: float = 1e-3):
        super().__init__()
        self.n, self.ridge = n, float(ridge)
        c1, c2, k = channels
        self.features = nn.Sequential(ConvBlock(n, in_channels, c1, 3, leaky=True), ConvBlock(n, c1, c2, 3, leaky=True),
                                      ConvBlock(n, c2, c2, 3, leaky=True))
        self.heat = conv(n, c2, k, 1)

    @property
    def last_conv(self) -> nn.Module:
        return self.heat

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the detector's last block, whose features the heatmap layer reads."""
        return self.features[-1]

    def keypoints(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, *S)`` features → keypoints ``(B, n, K)`` (normalised) and heatmap peaks ``(B, K)``."""
        h = self.heat(self.features(f)).flatten(2)  # (B, K, P)
        prob = torch.softmax(h, dim=2)
        grid = spatial.identity_grid(f.shape[2:], f.device, f.dtype).flatten(2)[0]  # (n, P)
        return torch.einsum("bkp,np->bnk", prob, grid), prob.amax(2)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        kp, pk = self.keypoints(torch.cat([fa, fb]))
        b = fa.shape[0]
        w = (pk[:b] * pk[b:]).sqrt()
        return spatial.fit_affine(kp[b:], kp[:b], w / w.sum(1, keepdim=True), ridge=self.ridge)


class MatchAffineNet(nn.Module):
    """T_af by local matching (``model.affine_head = "match"``): ``(G(x^A), G(x^B)) -> theta``.

    Both encodings go through one learned projection (unit-length descriptors, the same function
    for both images); at every feature point the fixed descriptor is correlated with the moving
    descriptors within ``radius`` points, and the displacement is the soft-argmax of those
    correlations (sub-point precise). theta is the weighted least-squares affine through these
    correspondences (:func:`spatial.fit_affine`). A cost volume, as optical-flow networks match, with
    an affine fit on top; in a cascade (``affine_passes``) each pass matches what the previous one left.

    ``weighting`` (``model.affine_weighting``) says how much each correspondence counts:

    * ``"peak"``: a scalar, the soft-argmax's peak probability;
    * ``"aperture"``: a matrix, the inverse of the match distribution's covariance (floored at
      ``floor`` points). On an edge the distribution spreads along the edge, where the soft-argmax
      mean is pulled towards zero displacement (the aperture problem), so only the component across
      the edge is trusted. A rotation moves the brain's outline mostly along itself: scalar weights
      see it shortened; these do not.
    """

    WEIGHTINGS = ("peak", "aperture")

    def __init__(self, n: int, in_channels: int, channels: tuple[int, ...] = (32, 64, 64), ridge: float = 1e-3,
                 radius: int = 2, temperature: float = 0.1, weighting: str = "peak", floor: float = 0.5):
        super().__init__()
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {self.WEIGHTINGS}, got {weighting!r}")
        self.n, self.ridge, self.radius = n, float(ridge), int(radius)
        self.weighting, self.floor = weighting, float(floor)
        c1, _, d = channels
        self.project = nn.Sequential(ConvBlock(n, in_channels, c1, 3, leaky=True), conv(n, c1, d, 1))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def last_conv(self) -> nn.Module:
        return self.project[-1]

    @property
    def gradcam_layer(self) -> nn.Module:
        """Grad-CAM's target: the descriptor projection."""
        return self.project[-1]

    def search_radii(self, size) -> tuple[int, ...]:
        """Search radius per axis: ``radius``, but at most half the axis, so that a thin axis (the
        2 feature slices of an 8-slice slab) is not matched against its own replicated border, whose
        soft-argmax would be a spurious displacement of a whole slab."""
        return tuple(min(self.radius, (int(s) - 1) // 2) for s in size)

    @staticmethod
    def offsets(radii, device: torch.device | None = None, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """``(n, D)`` integer displacements within ``radii`` (tensor-axis order), built on ``device``
        once per radii, device and dtype and shared: never modify them in place."""
        return _offsets(tuple(int(r) for r in radii), torch.device(device or "cpu"), dtype)

    def correspondences(self, fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u (B, n, *S)`` normalised displacement and weights: ``(B, *S)`` summing to 1 (``"peak"``), or
        ``(B, n, n, *S)`` matrices in normalised units, scaled so that in points their traces sum to n, as
        unit-sum scalar weights would (``"aperture"``)."""
        return self._match(self.project(fa), self.descriptors(fb), self.log_temperature)

    def descriptors(self, f: torch.Tensor) -> torch.Tensor:
        """``(B, d, *S)`` unit-length descriptors of features ``f`` (normalised in float32 also under
        mixed precision, as :meth:`_match` normalises the moving ones)."""
        return _unit_length(self.project(f))

    @staticmethod
    def cost_volume(ea: torch.Tensor, eb: torch.Tensor, radii) -> torch.Tensor:
        """``(B, D, *S)``: at each point, ``eb``'s descriptor dotted with ``ea``'s displaced by each of
        :meth:`offsets` (same order), ``ea`` replicated beyond its border.

        Two ways to the same values (within float rounding), chosen by size: on a coarse grid (at most
        :data:`DENSE_POINTS_PER_OFFSET` points per offset) every point's descriptor is dotted with every
        other's in one matrix product and the window is gathered from it, several times faster there
        than D shifted products; on finer grids, where the all-pairs product grows with the square of
        the points, one shifted product per offset."""
        size = ea.shape[2:]
        if math.prod(size) <= DENSE_POINTS_PER_OFFSET * math.prod([2 * r + 1 for r in radii]):
            b = ea.shape[0]
            corr = torch.bmm(eb.flatten(2).transpose(1, 2), ea.flatten(2))  # (B, fixed points, moving points)
            index = _window_index(tuple(size), tuple(radii), ea.device)  # (P, D)
            return corr.gather(2, index.expand(b, -1, -1)).transpose(1, 2).reshape(b, -1, *size)
        # slices from Python integers: offsets read off a tensor cost a host read per axis and offset
        windows = tuple((slice(None), slice(None)) + tuple(slice(r + o, r + o + s) for r, o, s in zip(radii, off, size))
                        for off in itertools.product(*[range(-r, r + 1) for r in radii]))  # the order of offsets()
        if torch.compiler.is_compiling():
            # inductor stops at F.pad(mode="replicate")'s backward (its strides disagree with its fake
            # kernel's); an index per axis compiles to the same loads. Eager, F.pad is 4x faster (CPU).
            # Autograd's own backward of the windows: inductor fuses it.
            pad = ea
            for axis, (s, r) in enumerate(zip(size, radii)):
                pad = pad.index_select(2 + axis, _replicate_index(int(s), int(r), ea.device))
            return _shifted_products(pad, eb, windows)
        pad = nn.functional.pad(ea, [p for r in reversed(radii) for p in (r, r)], mode="replicate")
        return _ShiftedProducts.apply(pad, eb, windows)

    @spatial.float32  # under mixed precision the projection is bf16; the cost volume and soft-argmax are not
    def _match(self, ea: torch.Tensor, eb: torch.Tensor, log_temperature: torch.Tensor):
        """``ea (B, d, *S)``: the moving features' projection; ``eb``: the fixed :meth:`descriptors`."""
        b, size, n = ea.shape[0], ea.shape[2:], self.n
        radii = self.search_radii(size)
        off = self.offsets(radii, ea.device, ea.dtype)  # (n, D)
        ea = nn.functional.normalize(ea, dim=1)
        prob = torch.softmax(self.cost_volume(ea, eb, radii) / log_temperature.exp(), dim=1)  # (B, D, *S)
        step = spatial.constant([2.0 / s for s in size], ea.device, ea.dtype)  # one point, normalised
        mean = torch.einsum("bd...,nd->bn...", prob, off)  # (B, n, *S) points
        u = mean * step.view(1, n, *([1] * n))
        if self.weighting == "peak":
            conf = prob.amax(1)
            return u, conf / conf.flatten(1).sum(1).view(b, *([1] * n))
        second = torch.einsum("bd...,kd,ld->b...kl", prob, off, off)  # (B, *S, n, n) points²
        m = mean.movedim(1, -1)
        eye = torch.eye(n, device=ea.device, dtype=ea.dtype)
        cov = second - m[..., :, None] * m[..., None, :] + self.floor ** 2 * eye
        w = torch.linalg.inv_ex(cov).inverse  # points⁻²; inv_ex: LAPACK's info not read back
        w = w / (w.diagonal(dim1=-2, dim2=-1).sum(-1).flatten(1).sum(1) / n).view(b, *([1] * (n + 2)))
        w = w / (step[:, None] * step[None, :])  # residuals in normalised units
        return u, w.movedim(-2, 1).movedim(-1, 2)

    def fit(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """theta through the correspondences, with the ridge in the units of unit-sum scalar weights."""
        if w.dim() == u.dim() - 1:  # scalar weights (B, *S); matrices are (B, n, n, *S)
            return spatial.fit_affine_to_field(u, w, ridge=self.ridge)
        step2 = [(2.0 / s) ** 2 for s in u.shape[2:]]  # Python numbers: a tensor's mean would be read back
        return spatial.fit_affine_to_field(u, w, ridge=self.ridge / (sum(step2) / len(step2)))

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        return self.fit(*self.correspondences(fa, fb))

    def against(self, fb: torch.Tensor):
        """``fa -> theta`` against fixed features ``fb`` whose descriptors, the same in every pass of a
        cascade, are projected once (instance norm is per sample: the same values as projecting each time)."""
        eb = self.descriptors(fb)
        return lambda fa: self.fit(*self._match(self.project(fa), eb, self.log_temperature))


@contextlib.contextmanager
def fresh_caches():
    """:func:`clear_caches` on entry and on exit, however the block ends."""
    clear_caches()
    try:
        yield
    finally:
        clear_caches()


def clear_caches() -> None:
    """Empty the grids and constants shared between calls (:func:`spatial.identity_grid`,
    :func:`spatial.constant`, the matching head's offsets, the cost volume's indices): before and
    after running on fake tensors (``profiling.fake_tensors``) or on the meta device
    (``profiling.step_host_copies``), whose tensors must neither meet real ones nor outlive their use."""
    spatial._identity_grid.cache_clear()
    spatial._constant.cache_clear()
    _offsets.cache_clear()
    _replicate_index.cache_clear()
    _window_index.cache_clear()


#: :meth:`MatchAffineNet.cost_volume` takes the all-pairs route up to this many points per offset
DENSE_POINTS_PER_OFFSET = 16


@functools.lru_cache(maxsize=16)
def _offsets(radii: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        grids = torch.meshgrid(*[torch.arange(-r, r + 1, device=device, dtype=dtype) for r in radii], indexing="ij")
        return torch.stack(grids, 0).flatten(1)


def _shifted_products(pad: torch.Tensor, eb: torch.Tensor, windows: tuple) -> torch.Tensor:
    """``(B, D, *S)``: ``eb (B, d, *S)`` dotted over ``d`` with each window (a tuple of slices) of
    ``pad (B, d, *S + 2r)``."""
    return torch.stack([(eb * pad[w]).sum(1) for w in windows], 1)


class _ShiftedProducts(torch.autograd.Function):
    """:func:`_shifted_products` with a backward that adds each window's gradient into one gradient of
    ``pad``, in place: autograd's own backward of the windows builds a zero tensor of ``pad``'s size per
    window and axis and adds them up (2 of 3 of the FIRE step's ``slice_backward`` ops, 12 % of its CPU
    time in the demo model), about 8 ops per window against 2 here."""

    @staticmethod
    def forward(ctx, pad: torch.Tensor, eb: torch.Tensor, windows: tuple) -> torch.Tensor:
        ctx.save_for_backward(pad, eb)
        ctx.windows = windows
        return _shifted_products(pad, eb, windows)

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative (create_graph) raises, not guesses
    def backward(ctx, grad: torch.Tensor):
        pad, eb = ctx.saved_tensors
        want_pad, want_eb = ctx.needs_input_grad[:2]
        g_pad = torch.zeros_like(pad) if want_pad else None
        g_eb = torch.zeros_like(eb) if want_eb else None
        for k, w in enumerate(ctx.windows):
            g = grad[:, k : k + 1]  # (B, 1, *S), a view
            if want_pad:
                g_pad[w].addcmul_(g, eb)
            if want_eb:
                g_eb.addcmul_(g, pad[w])
        return g_pad, g_eb, None


@functools.lru_cache(maxsize=32)
def _replicate_index(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """``(size + 2 radius,)``: the index of each point of an axis padded by ``radius`` on each side,
    the border replicated (clamped)."""
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        return torch.arange(-radius, size + radius, device=device).clamp(0, size - 1)


@functools.lru_cache(maxsize=16)
def _window_index(size: tuple[int, ...], radii: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(P, D)`` flat index of each point's neighbour at each of :meth:`MatchAffineNet.offsets`,
    clamped to the grid (the border replicated); built once per grid."""
    with torch.inference_mode(False), torch.no_grad():  # usable by training after a first use in validation
        coords = torch.meshgrid(*[torch.arange(s, device=device) for s in size], indexing="ij")
        off = MatchAffineNet.offsets(radii, device)  # (n, D)
        index = torch.zeros((), dtype=torch.long, device=device)
        for c, o, s in zip(coords, off, size):
            index = index * s + (c.reshape(-1, 1) + o).clamp(0, s - 1)
        return index


@spatial.float32
def _unit_length(e: torch.Tensor) -> torch.Tensor:
    """``(B, d, *S)`` descriptors scaled to unit length along d."""
    return nn.functional.normalize(e, dim=1)


#: G's finer features of a pair, one ``(moving, fixed)`` per finer level of the affine stage, coarse to fine
FinerFeatures = tuple[tuple[torch.Tensor, torch.Tensor], ...]

AFFINE_HEADS = ("regress", "dense", "keypoints", "match")
AFFINE_INITS = ("identity",) + spatial.MOMENT_MODES


@dataclass
class Transform:
    """One direction's transform, all fields normalised.

    Attributes:
        theta: ``(B, n, n+1)`` affine part phi_af.
        nr_feat: ``(B, n, *S_nr)`` non-rigid displacement phi_nr on T_nr's grid (S/4 for the paper's
            head, S/2 for the default U-Net's): the network's raw output, a velocity when ``diffeomorphic``.
        disp_nr: ``(B, n, *S_nr)`` non-rigid displacement (integrated if diffeomorphic).
        feat_affine: ``(B, C, *S/4)`` the moving features warped by phi_af (T_nr's input).
    """

    theta: torch.Tensor
    nr_feat: torch.Tensor
    disp_nr: torch.Tensor
    feat_affine: torch.Tensor

    def affine_field(self, shape) -> torch.Tensor:
        """phi_af as a displacement ``(B, n, *shape)``."""
        return spatial.affine_to_displacement(self.theta, shape)

    def field(self, shape) -> torch.Tensor:
        """phi = phi_af ∘ phi_nr as a displacement ``(B, n, *shape)``; phi_nr linearly upsampled (§3.6)."""
        return spatial.compose_affine_displacement(self.theta, spatial.resize_field(self.disp_nr, shape))


class TransformationNet(nn.Module):
    """T = T_af then T_nr; returns :class:`Transform` with phi = phi_af ∘ phi_nr.

    How T_af produces theta (``model.affine_*``; the paper: ``regress``, one pass, no initialisation):

    * ``affine_head``: ``regress`` (:class:`AffineNet`, the paper's) or ``dense`` (:class:`DenseAffineNet`);
    * ``theta0``: an initial affine handed in by the caller (the images' moments,
      :meth:`FIRENet.initial_affine`); the head then predicts the remaining correction;
    * ``affine_weighting``: how the ``match`` head weighs its correspondences (:class:`MatchAffineNet`);
    * ``affine_passes`` K: a recursive cascade. Pass k warps the moving features by the current
      theta and the (shared) head predicts a correction, composed on: theta <- theta ∘ delta_k.
      Gradients flow through every pass. ``affine_passes_eval`` passes in eval mode (validation, test,
      ``fire register``): each pass closes only part of what is left (about a third of a rotation),
      so more passes at inference than in training go on converging.
    * ``affine_fine_passes``: coarse to fine. After the cascade on G's S/4 features (one point = 4
      pixels), a second matching head (its own projection, same kind as ``affine_head="match"``)
      corrects theta on G's S/2 features (:meth:`Encoder.finer`), where a point is half as wide;
      ``affine_full_passes``: then a third on G's full-resolution features (its first block, one point =
      one pixel), with ``full_channels`` descriptors. Each level has its passes in training and at
      inference (``*_passes_eval``; None: as in training).
    """

    def __init__(self, n: int, feat_channels: int, affine_channels=(32, 64, 64), affine_hidden: int = 64,
                 diffeomorphic: bool = False, integration_steps: int = 7, affine_head: str = "regress",
                 affine_passes: int = 1, affine_weighting: str = "peak", affine_passes_eval: int | None = None,
                 affine_fine_passes: int = 0, fine_channels: int | None = None,
                 affine_fine_passes_eval: int | None = None, affine_full_passes: int = 0,
                 affine_full_passes_eval: int | None = None, full_channels: int | None = None,
                 affine_full_channels=(16, 32, 32), nonrigid=None):
        super().__init__()
        if affine_head not in AFFINE_HEADS:
            raise ValueError(f"affine_head must be one of {AFFINE_HEADS}, got {affine_head!r}")
        if affine_passes < 1 or (affine_passes_eval is not None and affine_passes_eval < 1):
            raise ValueError(f"affine passes must be >= 1, got {affine_passes} (eval: {affine_passes_eval})")
        if affine_head == "regress":
            self.affine = AffineNet(n, 2 * feat_channels, tuple(affine_channels), affine_hidden)
        elif affine_head == "dense":
            self.affine = DenseAffineNet(n, 2 * feat_channels, tuple(affine_channels))
        elif affine_head == "keypoints":
            self.affine = KeypointAffineNet(n, feat_channels, tuple(affine_channels))
        else:
            self.affine = MatchAffineNet(n, feat_channels, tuple(affine_channels), weighting=affine_weighting)
        self.affine_passes = int(affine_passes)
        self.affine_passes_eval = int(affine_passes_eval) if affine_passes_eval is not None else self.affine_passes
        if affine_fine_passes < 0 or (affine_fine_passes and not fine_channels):
            raise ValueError(f"affine_fine_passes must be >= 0 with fine_channels given, got {affine_fine_passes}, "
                             f"{fine_channels}")
        if affine_full_passes < 0 or (affine_full_passes and not (full_channels and affine_fine_passes)):
            raise ValueError(f"affine_full_passes must be >= 0, and > 0 only after a fine level (affine_fine_passes "
                             f"> 0) with full_channels given; got {affine_full_passes}, {affine_fine_passes}, "
                             f"{full_channels}")
        for name, k in (("affine_fine_passes_eval", affine_fine_passes_eval),
                        ("affine_full_passes_eval", affine_full_passes_eval)):
            if k is not None and k < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {k}")
        self.affine_fine_passes = int(affine_fine_passes)
        self.affine_fine_passes_eval = int(affine_fine_passes_eval or affine_fine_passes)
        self.affine_fine = (MatchAffineNet(n, fine_channels, tuple(affine_channels), weighting=affine_weighting)
                            if affine_fine_passes else None)
        self.affine_full_passes = int(affine_full_passes)
        self.affine_full_passes_eval = int(affine_full_passes_eval or affine_full_passes)
        self.affine_full = (MatchAffineNet(n, full_channels, tuple(affine_full_channels), weighting=affine_weighting)
                            if affine_full_passes else None)
        self.nonrigid = build_nonrigid(n, feat_channels, nonrigid)
        self.diffeomorphic = diffeomorphic
        self.integration_steps = integration_steps

    def affine_parameters(self) -> list[nn.Parameter]:
        """T_af's parameters: the head's, and the finer levels' when there are any."""
        return [*self.affine.parameters(), *[p for head, _ in self.finer_levels() for p in head.parameters()]]

    def finer_levels(self) -> list[tuple[MatchAffineNet, int]]:
        """The finer levels' ``(head, passes)``, coarse to fine, with the passes of the current mode."""
        mode = "" if self.training else "_eval"
        return [(getattr(self, head), getattr(self, f"{head}_passes{mode}")) for head in ("affine_fine", "affine_full")
                if getattr(self, head) is not None]

    @staticmethod
    def _cascade(head: nn.Module, fa: torch.Tensor, fb: torch.Tensor, theta: torch.Tensor | None, passes: int
                 ) -> torch.Tensor | None:
        """``passes`` times: warp ``fa`` by theta, let ``head`` predict the correction, compose it on."""
        step = head.against(fb) if isinstance(head, MatchAffineNet) else (lambda fa_k: head(fa_k, fb))
        for _ in range(passes):
            fa_k = fa if theta is None else spatial.warp(fa, spatial.affine_to_displacement(theta, fa.shape[2:]))
            delta = step(fa_k)
            theta = delta if theta is None else spatial.compose_affine(theta, delta)
        return theta

    @property
    def n_finer(self) -> int:
        """How many finer levels (S/2, S/1) the affine stage reads."""
        return len(self.finer_levels())

    def finest_level(self, fa: torch.Tensor, fb: torch.Tensor, fine: FinerFeatures | None
                     ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """The affine stage's last head and the (moving, fixed) features it reads: the finest finer
        level's, or the cascade's on G's output without finer levels."""
        levels = self._finer_inputs(fine)
        if not levels:
            return self.affine, fa, fb
        (head, _), (f_moving, f_fixed) = levels[-1]
        return head, f_moving, f_fixed

    def _finer_inputs(self, fine: FinerFeatures | None) -> list[tuple[tuple[MatchAffineNet, int], tuple]]:
        """Each finer level's ``(head, passes)`` with its ``(moving, fixed)`` features from ``fine``."""
        levels = self.finer_levels()
        if levels and (fine is None or len(fine) < len(levels)):
            raise ValueError(f"the affine stage's {len(levels)} finer level(s) need G's finer features of both images "
                             f"(got {0 if fine is None else len(fine)} level(s))")
        return list(zip(levels, fine or ()))

    def affine_theta(self, fa: torch.Tensor, fb: torch.Tensor, theta0: torch.Tensor | None = None,
                     fine: FinerFeatures | None = None) -> torch.Tensor:
        """phi_af ``(B, n, n+1)`` (the moving features are warped by it in :meth:`forward`, which needs them).

        ``fine``: one ``(moving, fixed)`` pair of G's finer features per finer level, coarse to fine
        (:meth:`Encoder.finer`: S/2, then S/1), needed when ``affine_fine_passes`` (``affine_full_passes``).
        """
        theta = self._cascade(self.affine, fa, fb, theta0, self.affine_passes if self.training else self.affine_passes_eval)
        for (head, passes), (f_moving, f_fixed) in self._finer_inputs(fine):
            theta = self._cascade(head, f_moving, f_fixed, theta, passes)
        return theta

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, theta0: torch.Tensor | None = None,
                fine: FinerFeatures | None = None, theta: torch.Tensor | None = None,
                images: tuple[torch.Tensor, torch.Tensor] | None = None) -> Transform:
        """``theta``: phi_af given (:meth:`FIRENet.symmetric_affine`), the affine stage skipped; ``images``:
        the ``(moving, fixed)`` images ``(B, 1, *S)`` that ``fa``, ``fb`` encode (T_nr heads that read images)."""
        if theta is None:
            theta = self.affine_theta(fa, fb, theta0, fine)
        fa_af = spatial.warp(fa, spatial.affine_to_displacement(theta, fa.shape[2:]))
        if self.nonrigid.needs_images:
            if images is None or images[0] is None or images[1] is None:
                raise ValueError("model.nonrigid.head='unet' reads the images: pass them with their encodings")
            raw = self.nonrigid(images[0], images[1], theta, self.displacement)
        else:
            raw = self.nonrigid(fa_af, fb).float()  # a field is geometry: float32 also under mixed precision
        return Transform(theta=theta, nr_feat=raw, disp_nr=self.displacement(raw), feat_affine=fa_af)

    def displacement(self, raw: torch.Tensor) -> torch.Tensor:
        """phi_nr's displacement from T_nr's raw output: integrated by scaling and squaring when
        ``diffeomorphic`` (a stationary velocity), else the output itself."""
        return spatial.integrate_velocity(raw, self.integration_steps) if self.diffeomorphic else raw


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


class FIRENet(nn.Module):
    """All FIRE networks: G, F^{A→B}, F^{B→A}, T^{A→B}, T^{B→A} (and D^A, D^B when adversarial).

    ``forward`` is inference only (§3.4): ``(x_a, x_b) -> Transform`` of T^{A→B}.
    Training uses the parts directly (see :mod:`fire_lightning.losses`); every use of T goes through
    :meth:`transform`, which adds the images' initial affine when ``affine_init`` asks for one.
    """

    def __init__(self, n: int, width: int = 16, affine_channels=(32, 64, 64), affine_hidden: int = 64,
                 diffeomorphic: bool = False, integration_steps: int = 7, adversarial: bool = False,
                 disc_width: int = 16, n_res: int = 4, affine_head: str = "regress", affine_passes: int = 1,
                 affine_init: str = "identity", spacing=None, down_kernel: int = 3, affine_weighting: str = "peak",
                 affine_passes_eval: int | None = None, affine_fine_passes: int = 0,
                 checkpoint_activations: bool = False, affine_fine_passes_eval: int | None = None,
                 affine_full_passes: int = 0, affine_full_passes_eval: int | None = None,
                 affine_full_channels=(16, 32, 32), affine_symmetric_passes_eval: int = 0,
                 checkpoint_chunk: int = 0, nonrigid=None):
        super().__init__()
        if n not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {n}")
        if affine_init not in AFFINE_INITS:
            raise ValueError(f"affine_init must be one of {AFFINE_INITS}, got {affine_init!r}")
        self.n = n
        self.affine_init = affine_init
        if affine_symmetric_passes_eval < 0:
            raise ValueError(f"affine_symmetric_passes_eval must be >= 0, got {affine_symmetric_passes_eval}")
        self.affine_symmetric_passes_eval = int(affine_symmetric_passes_eval)
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * n
        self.G = Encoder(n, width, n_res=n_res, down_kernel=down_kernel)
        c = self.G.out_channels
        self.F_ab = Decoder(n, width, n_res=n_res)
        self.F_ba = Decoder(n, width, n_res=n_res)
        for m in (self.G, self.F_ab, self.F_ba):
            m.checkpoint, m.chunk = bool(checkpoint_activations), int(checkpoint_chunk)
        kw = dict(affine_channels=affine_channels, affine_hidden=affine_hidden,
                  diffeomorphic=diffeomorphic, integration_steps=integration_steps, affine_head=affine_head,
                  affine_passes=affine_passes, affine_weighting=affine_weighting, affine_passes_eval=affine_passes_eval,
                  affine_fine_passes=affine_fine_passes, fine_channels=2 * width,
                  affine_fine_passes_eval=affine_fine_passes_eval, affine_full_passes=affine_full_passes,
                  affine_full_passes_eval=affine_full_passes_eval, full_channels=width,
                  affine_full_channels=tuple(affine_full_channels), nonrigid=nonrigid)
        self.T_ab = TransformationNet(n, c, **kw)
        self.T_ba = TransformationNet(n, c, **kw)
        self.D_a = Discriminator(n, disc_width) if adversarial else None
        self.D_b = Discriminator(n, disc_width) if adversarial else None

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimiser (§3.8): T_af, T_nr, G+F (and D when adversarial)."""
        groups = {
            "T_af": [*self.T_ab.affine_parameters(), *self.T_ba.affine_parameters()],
            "T_nr": [*self.T_ab.nonrigid.parameters(), *self.T_ba.nonrigid.parameters()],
            "G_F": [*self.G.parameters(), *self.F_ab.parameters(), *self.F_ba.parameters()],
        }
        if self.D_a is not None:
            groups["D_A"] = list(self.D_a.parameters())
            groups["D_B"] = list(self.D_b.parameters())
        return groups

    def initial_affine(self, x_moving: torch.Tensor | None, x_fixed: torch.Tensor | None) -> torch.Tensor | None:
        """The affine T_af starts from: None (the identity, the paper) or the images' moments
        (:func:`spatial.moments_affine`, no gradient)."""
        if self.affine_init == "identity":
            return None
        if x_moving is None or x_fixed is None:
            raise ValueError(f"affine_init={self.affine_init!r} needs the images, not only their encodings")
        return spatial.moments_affine(x_moving, x_fixed, self.spacing, self.affine_init)

    @property
    def n_finer(self) -> int:
        """How many of G's finer levels (S/2, S/1) the affine stage reads (``model.affine_fine_passes``,
        ``model.affine_full_passes``)."""
        return self.T_ab.n_finer

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(G(x) (B, 4w, *S/4), finer)`` from one pass of G, ``finer`` the finer feature maps the
        affine stage reads, coarse to fine (:meth:`Encoder.finer`; empty without finer levels)."""
        return self.G.pyramid(x, self.n_finer)

    def encode_pair(self, x_moving: torch.Tensor, x_fixed: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, FinerFeatures | None]:
        """G on both images in one batch (instance norm is per sample: the values of two calls, in
        half the calls): ``(G(x_moving), G(x_fixed), fine)``, ``fine`` one ``(moving, fixed)`` pair per
        finer level, or None without finer levels."""
        b = x_moving.shape[0]
        g, finer = self.encode(torch.cat([x_moving, x_fixed]))
        g_m, g_f = g.split(b)
        return g_m, g_f, (tuple((h[:b], h[b:]) for h in finer) or None)

    def fine_features(self, x_moving: torch.Tensor | None, x_fixed: torch.Tensor | None) -> FinerFeatures | None:
        """G's finer features of a pair for the affine stage's finer levels, or None without any,
        recomputed from the images (callers that ran :meth:`encode_pair` pass its features instead)."""
        if not self.n_finer:
            return None
        if x_moving is None or x_fixed is None:
            raise ValueError("model.affine_fine_passes needs the images, not only their encodings")
        b = x_moving.shape[0]
        return tuple((h[:b], h[b:]) for h in self.G.finer(torch.cat([x_moving, x_fixed]), self.n_finer))

    def affine_theta(self, direction: str, g_moving: torch.Tensor, g_fixed: torch.Tensor,
                     x_moving: torch.Tensor | None = None, x_fixed: torch.Tensor | None = None,
                     fine: FinerFeatures | None = None) -> torch.Tensor:
        """phi_af alone ``(B, n, n+1)`` of :meth:`transform` (no T_nr)."""
        t = self._net(direction)
        fine = fine if fine is not None else self.fine_features(x_moving, x_fixed)
        return t.affine_theta(g_moving, g_fixed, self.initial_affine(x_moving, x_fixed), fine)

    def _net(self, direction: str) -> TransformationNet:
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        return self.T_ab if direction == "AtoB" else self.T_ba

    def transform(self, direction: str, g_moving: torch.Tensor, g_fixed: torch.Tensor,
                  x_moving: torch.Tensor | None = None, x_fixed: torch.Tensor | None = None,
                  fine: FinerFeatures | None = None) -> Transform:
        """T^{A→B}(G_A, G_B) (``direction="AtoB"``, moving = A) or T^{B→A}(G_B, G_A) (``"BtoA"``, moving = B).

        Args:
            g_moving, g_fixed: ``(B, C, *S/4)`` encodings; x_moving, x_fixed: ``(B, 1, *S)`` the images they
                encode (needed when ``affine_init`` is not the identity, there is a fine level, or T_nr reads
                the images).
            fine: G's finer features from :meth:`encode_pair` (finer levels only; recomputed from the
                images when not given).
        """
        fine = fine if fine is not None else self.fine_features(x_moving, x_fixed)
        t, theta0 = self._net(direction), self.initial_affine(x_moving, x_fixed)
        images = (x_moving, x_fixed)
        if self.training or not self.affine_symmetric_passes_eval:
            return t(g_moving, g_fixed, theta0, fine, images=images)
        theta = self.symmetric_affine(direction, t.affine_theta(g_moving, g_fixed, theta0, fine), g_moving, g_fixed, fine)
        return t(g_moving, g_fixed, fine=fine, theta=theta, images=images)

    def symmetric_affine(self, direction: str, theta: torch.Tensor, g_moving: torch.Tensor, g_fixed: torch.Tensor,
                         fine: FinerFeatures | None) -> torch.Tensor:
        """``direction``'s affine ``theta (B, n, n+1)`` made symmetric (``model.affine_symmetric_passes_eval``
        K > 0, inference): the opposite direction's network runs K passes of its finest affine level
        from ``theta``'s inverse, and phi_af is the mean of ``theta`` and the inverse of what it reaches.

        FIRE trains T^{A→B} and T^{B→A} to be each other's inverse (8); at inference the two
        networks' finest heads are two estimates of the same transform whose errors are partly
        their own, and the mean averages out part of what is not shared (the backward cascade starts
        from the forward answer: its coarse levels would only repeat it). The arithmetic mean of
        the two matrices: they differ by about a percent, where it equals their geodesic mean to
        second order. (SyN is symmetric in the same sense.)"""
        other = self._net("BtoA" if direction == "AtoB" else "AtoB")
        swapped = None if fine is None else tuple((f, m) for m, f in fine)
        head, f_moving, f_fixed = other.finest_level(g_fixed, g_moving, swapped)
        back = other._cascade(head, f_moving, f_fixed, spatial.invert_affine(theta), self.affine_symmetric_passes_eval)
        return 0.5 * (theta + spatial.invert_affine(back))

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> Transform:
        """Register ``x_a`` (moving, ``(B,1,*S)``) to ``x_b`` (fixed): phi^{A→B}."""
        g_a, g_b, fine = self.encode_pair(x_a, x_b)
        return self.transform("AtoB", g_a, g_b, x_a, x_b, fine)
