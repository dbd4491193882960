"""FIRE networks (FIRE §3.1–3.3, METHOD.md "Networks"), one code path for 2D and 3D.

``w`` is the configurable width (paper: 64). Shapes below use ``S`` for the image grid and
``S/4`` for the feature grid of G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import spatial


def conv(n: int, *args, **kwargs) -> nn.Module:
    return getattr(nn, f"Conv{n}d")(*args, **kwargs)


def inorm(n: int, ch: int) -> nn.Module:
    return getattr(nn, f"InstanceNorm{n}d")(ch, affine=True)


class ConvBlock(nn.Sequential):
    """conv → instance norm → activation (ReLU or LeakyReLU(0.2))."""

    def __init__(self, n: int, cin: int, cout: int, k: int, stride: int = 1, leaky: bool = False):
        super().__init__(
            conv(n, cin, cout, k, stride=stride, padding=k // 2),
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


class Encoder(nn.Module):
    """G: ``(B, 1, *S) -> (B, 4w, *S/4)``; conv7(w) → conv3 s2 (2w) → conv3 s2 (4w) → 4 ResBlocks."""

    def __init__(self, n: int, width: int, in_channels: int = 1, n_res: int = 4):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            ConvBlock(n, in_channels, w, 7),
            ConvBlock(n, w, 2 * w, 3, stride=2),
            ConvBlock(n, 2 * w, 4 * w, 3, stride=2),
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
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

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


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


class NonRigidNet(nn.Module):
    """T_nr: ``(G(x^A) ∘ phi_af, G(x^B)) -> u (B, n, *S/4)`` normalised displacement (or velocity).

    Each input through its own conv block (parallel), concatenated → ResBlock (IN + LeakyReLU)
    → conv3 → tanh. The last conv is zero-initialised: the output starts at exactly 0.
    """

    def __init__(self, n: int, in_channels: int, hidden: int):
        super().__init__()
        self.branch_a = ConvBlock(n, in_channels, hidden, 3, leaky=True)
        self.branch_b = ConvBlock(n, in_channels, hidden, 3, leaky=True)
        self.res = ResBlock(n, 2 * hidden, leaky=True)
        self.head = conv(n, 2 * hidden, n, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

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


@dataclass
class Transform:
    """One direction's transform, all fields normalised.

    Attributes:
        theta: ``(B, n, n+1)`` affine part phi_af.
        nr_feat: ``(B, n, *S/4)`` non-rigid displacement phi_nr at feature resolution
            (the network's raw output; a velocity when ``diffeomorphic``).
        disp_nr: ``(B, n, *S/4)`` non-rigid displacement (integrated if diffeomorphic).
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
    """T = T_af then T_nr; returns :class:`Transform` with phi = phi_af ∘ phi_nr."""

    def __init__(self, n: int, feat_channels: int, affine_channels=(32, 64, 64), affine_hidden: int = 64,
                 diffeomorphic: bool = False, integration_steps: int = 7):
        super().__init__()
        self.affine = AffineNet(n, 2 * feat_channels, tuple(affine_channels), affine_hidden)
        self.nonrigid = NonRigidNet(n, feat_channels, feat_channels // 2)
        self.diffeomorphic = diffeomorphic
        self.integration_steps = integration_steps

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> Transform:
        theta = self.affine(fa, fb)
        fa_af = spatial.warp(fa, spatial.affine_to_displacement(theta, fa.shape[2:]))
        raw = self.nonrigid(fa_af, fb)
        disp = spatial.integrate_velocity(raw, self.integration_steps) if self.diffeomorphic else raw
        return Transform(theta=theta, nr_feat=raw, disp_nr=disp, feat_affine=fa_af)


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
    Training uses the parts directly (see :mod:`fire_lightning.losses`).
    """

    def __init__(self, n: int, width: int = 16, affine_channels=(32, 64, 64), affine_hidden: int = 64,
                 diffeomorphic: bool = False, integration_steps: int = 7, adversarial: bool = False,
                 disc_width: int = 16, n_res: int = 4):
        super().__init__()
        if n not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {n}")
        self.n = n
        self.G = Encoder(n, width, n_res=n_res)
        c = self.G.out_channels
        self.F_ab = Decoder(n, width, n_res=n_res)
        self.F_ba = Decoder(n, width, n_res=n_res)
        kw = dict(affine_channels=affine_channels, affine_hidden=affine_hidden,
                  diffeomorphic=diffeomorphic, integration_steps=integration_steps)
        self.T_ab = TransformationNet(n, c, **kw)
        self.T_ba = TransformationNet(n, c, **kw)
        self.D_a = Discriminator(n, disc_width) if adversarial else None
        self.D_b = Discriminator(n, disc_width) if adversarial else None

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimiser (§3.8): T_af, T_nr, G+F (and D when adversarial)."""
        groups = {
            "T_af": [*self.T_ab.affine.parameters(), *self.T_ba.affine.parameters()],
            "T_nr": [*self.T_ab.nonrigid.parameters(), *self.T_ba.nonrigid.parameters()],
            "G_F": [*self.G.parameters(), *self.F_ab.parameters(), *self.F_ba.parameters()],
        }
        if self.D_a is not None:
            groups["D_A"] = list(self.D_a.parameters())
            groups["D_B"] = list(self.D_b.parameters())
        return groups

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> Transform:
        """Register ``x_a`` (moving, ``(B,1,*S)``) to ``x_b`` (fixed): phi^{A→B}."""
        return self.T_ab(self.G(x_a), self.G(x_b))
