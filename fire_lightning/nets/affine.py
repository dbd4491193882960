"""T_af's heads (FIRE §3.3 and beyond): features of a pair → the affine theta ``(B, n, n+1)``.

``regress`` (:class:`AffineNet`, the paper's), ``dense`` (:class:`DenseAffineNet`), ``keypoints``
(:class:`KeypointAffineNet`) and ``match`` (:class:`MatchAffineNet`), chosen by ``model.affine.head``
(:func:`build_affine_head`); every head starts at exactly the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import spatial
from . import cost_volume as cv
from .blocks import ConvBlock, conv, zero_conv


class AffineNet(nn.Module):
    """T_af: ``[G(x^A), G(x^B)] (B, 8w, *S/4) -> theta (B, n, n+1)``.

    Three strided conv blocks (conv + instance norm + LeakyReLU; the last without the norm, see
    below), global average pooling, two fully connected layers. The paper's layer sizes
    ("1×8, 7", "8×10, 5", "16×20, 2") are not self-consistent; we use kernels 7, 5, 3 with ``channels``
    outputs (config). The last layer is zero-initialised with an identity bias, so the output is exactly the identity.
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
                layers.append(nn.Sequential(conv(n, cin, c, k, stride=2, padding=k // 2),
                                            nn.LeakyReLU(0.2, inplace=True)))
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
    """T_af by a closed-form fit (``model.affine.head = "dense"``): ``(G(x^A), G(x^B)) -> theta (B, n, n+1)``.

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
    """T_af by keypoints (``model.affine.head = "keypoints"``, after KeyMorph): ``(G(x^A), G(x^B)) -> theta``.

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
    """T_af by local matching (``model.affine.head = "match"``): ``(G(x^A), G(x^B)) -> theta``.

    Both encodings go through one learned projection (unit-length descriptors, the same function
    for both images); at every feature point the fixed descriptor is correlated with the moving
    descriptors within ``radius`` points, and the displacement is the soft-argmax of those
    correlations (sub-point precise). theta is the weighted least-squares affine through these
    correspondences (:func:`spatial.fit_affine`). A cost volume, as optical-flow networks match, with
    an affine fit on top; in a cascade (``model.affine.passes``) each pass matches what the previous one left.

    ``weighting`` (``model.affine.weighting``) says how much each correspondence counts:

    * ``"peak"``: a scalar, the soft-argmax's peak probability;
    * ``"aperture"``: a matrix, the inverse of the match distribution's covariance (floored at
      ``floor`` points). On an edge the distribution spreads along the edge, where the soft-argmax
      mean is pulled towards zero displacement (the aperture problem), so only the component across
      the edge is trusted. A rotation moves the brain's outline mostly along itself: scalar weights
      see it shortened; these do not.
    """

    WEIGHTINGS = ("peak", "aperture")  # model.affine.weighting

    def __init__(self, n: int, in_channels: int, channels: tuple[int, ...] = (32, 64, 64), ridge: float = 1e-3,
                 radius: int = 2, temperature: float = 0.1, weighting: str = "peak", floor: float = 0.5):
        super().__init__()
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

    #: the cost volume's displacements (:func:`cost_volume.offsets`) and the volume itself
    offsets = staticmethod(cv.offsets)
    cost_volume = staticmethod(cv.cost_volume)

    def correspondences(self, fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u (B, n, *S)`` normalised displacement and weights: ``(B, *S)`` summing to 1 (``"peak"``), or
        ``(B, n, n, *S)`` matrices in normalised units, scaled so that in points their traces sum to n, as
        unit-sum scalar weights would (``"aperture"``)."""
        return self._match(self.project(fa), self.descriptors(fb), self.log_temperature)

    def descriptors(self, f: torch.Tensor) -> torch.Tensor:
        """``(B, d, *S)`` unit-length descriptors of features ``f`` (normalised in float32 also under
        mixed precision, as :meth:`_match` normalises the moving ones)."""
        return _unit_length(self.project(f))

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


@spatial.float32
def _unit_length(e: torch.Tensor) -> torch.Tensor:
    """``(B, d, *S)`` descriptors scaled to unit length along d."""
    return nn.functional.normalize(e, dim=1)


WEIGHTINGS = MatchAffineNet.WEIGHTINGS
#: ``model.affine.head`` → the head's class
HEADS = {"regress": AffineNet, "dense": DenseAffineNet, "keypoints": KeypointAffineNet, "match": MatchAffineNet}
AFFINE_HEADS = tuple(HEADS)


def build_affine_head(n: int, feat_channels: int, cfg) -> nn.Module:
    """T_af's head for ``model.affine`` (:class:`schema.AffineConfig`) on G's ``feat_channels``-channel features.
    The ``regress`` and ``dense`` heads read the pair's features concatenated; the others each image's apart."""
    channels = tuple(cfg.channels)
    if cfg.head == "regress":
        return AffineNet(n, 2 * feat_channels, channels, cfg.hidden)
    if cfg.head == "dense":
        return DenseAffineNet(n, 2 * feat_channels, channels)
    if cfg.head == "keypoints":
        return KeypointAffineNet(n, feat_channels, channels)
    return MatchAffineNet(n, feat_channels, channels, radius=cfg.radius, weighting=cfg.weighting)
