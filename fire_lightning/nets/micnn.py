"""The MI-CNN (``model.name: micnn``): an unsupervised U-Net that predicts a deformation field from an
affinely pre-aligned image pair, trained with a Parzen-window mutual information and a smoothness term.

How it maps to the method (docs/micnn.md):

* **The network** is :class:`~.nonrigid.UNetNonRigid` on the pair ``(x_m ∘ phi_af, x_f)``: an encoder of
  stride-2 3×3(×3) convolutions, a decoder that upsamples and convolves with skip connections from every
  encoder level, LeakyReLU after each convolution, a last convolution to an ``n``-channel field. Its
  ``model.nonrigid`` keys give the levels (``channels``), the field's grid (``out_level`` 0: the image's,
  as the MI-CNN restores the full resolution) and, beyond the method, a velocity integrated by scaling
  and squaring (``diffeomorphic``) and a cascade (``passes``). The last convolution is zero-initialised,
  so training starts at the identity.
* **The spatial transformer** is :func:`spatial.warp` of the moving image by ``phi = phi_af ∘ u``.
* **The affine pre-alignment** the method assumes is done here, per pair, with no learned parameter: the
  images' foreground moments (``model.affine.init``, the same start FIRE uses), then
  ``model.micnn.affine_steps`` steps of Adam on the affine alone maximising the images' Parzen MI at half
  resolution (:func:`fire_lightning.refine.optimise_affine`). It runs at training and at inference alike,
  and is part of every timed registration.

The network is one-directional: ``transform("BtoA", ...)`` is the same network on the swapped pair.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import spatial
from ..losses.similarity import MutualInformation
from ..refine import optimise_affine
from ..schema import ModelConfig
from .nonrigid import UNetNonRigid
from .transformation import Transform


class MICNNNet(nn.Module):
    """The MI-CNN: ``(x_moving, x_fixed) (B, 1, *S) -> Transform`` with ``theta`` the pre-alignment
    ``(B, n, n+1)``, ``nr_feat`` the U-Net's raw output and ``disp_nr`` the field ``u`` ``(B, n, *S_u)``
    (``S_u = S / 2^out_level``), ``feat_affine`` the pre-aligned moving image ``(B, 1, *S)``.

    It has the inference interface of :class:`~.fire.FIRENet` (``encode_pair``, ``registration_encodings``,
    ``transform``, ``displacement``, ``parameter_groups``), so that registration, refinement and the benchmark
    treat both alike; having no encoder, its "encodings" are the images themselves.
    """

    #: the benchmark's row name
    NAME = "MI-CNN"
    #: the pre-alignment's MI is taken on the images averaged over this many voxels per axis
    AFFINE_SHRINK = 2

    def __init__(self, n: int, model: ModelConfig | None = None, spacing=None):
        """``n``: 2 or 3; ``model``: the ``model`` section (None: the defaults); ``spacing``: voxel size per
        axis (mm), for the moments start (None: 1 mm)."""
        super().__init__()
        m = model if model is not None else ModelConfig()
        nr = m.nonrigid
        self.n = n
        self.spacing = tuple(float(v) for v in spacing) if spacing is not None else (1.0,) * n
        self.affine_init = str(m.affine.init)
        self.affine_steps, self.affine_lr = int(m.micnn.affine_steps), float(m.micnn.affine_lr)
        self.mi = MutualInformation(m.loss.mi_bins, m.loss.mi_sigma_ratio)  # the pre-alignment's (no parameters)
        self.diffeomorphic, self.integration_steps = bool(nr.diffeomorphic), int(nr.integration_steps)
        self.unet = UNetNonRigid(n, tuple(nr.channels), nr.out_level, nr.passes, nr.passes_eval)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One optimiser: the U-Net (``optim.lr_nonrigid``)."""
        return {"T_nr": list(self.unet.parameters())}

    def nonrigid_heads(self) -> list[nn.Module]:
        """The network(s) with a cascade (``model.nonrigid.passes_eval``)."""
        return [self.unet]

    def displacement(self, raw: torch.Tensor) -> torch.Tensor:
        """The field ``u`` from the network's raw output: integrated when ``diffeomorphic``."""
        return spatial.integrate_velocity(raw, self.integration_steps) if self.diffeomorphic else raw

    @torch.no_grad()
    def prealign(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The affine pre-alignment ``(B, n, n+1)``, fixed → moving, no gradient: the moments start (or
        the identity), then ``affine_steps`` steps of MI affine optimisation on each pair."""
        b = moving.shape[0]
        if self.affine_init == "identity":
            theta = spatial.identity_affine(b, self.n, moving.device)
        else:
            theta = spatial.moments_affine(moving, fixed, self.spacing, self.affine_init).float()
        if self.affine_steps:
            theta = optimise_affine(moving, fixed, theta, self.affine_steps, self.affine_lr, self.mi,
                                    self.AFFINE_SHRINK)
        return theta

    def encode_pair(self, x_moving: torch.Tensor, x_fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """No encoder: ``(x_moving, x_fixed, None)``, so that :meth:`transform` reads the images."""
        return x_moving, x_fixed, None

    def registration_encodings(self, x_moving: torch.Tensor, x_fixed: torch.Tensor) -> tuple:
        """:meth:`encode_pair`'s images, with no separate affine features: ``(x_moving, x_fixed, None, None)``."""
        return x_moving, x_fixed, None, None

    def transform(self, direction: str, g_moving: torch.Tensor, g_fixed: torch.Tensor,
                  x_moving: torch.Tensor | None = None, x_fixed: torch.Tensor | None = None, fine=None,
                  affine=None) -> Transform:
        """The moving image registered to the fixed one; ``direction`` (``AtoB`` / ``BtoA``) only names
        which image is moving: one network serves both. ``g_*`` are the images (:meth:`encode_pair`);
        ``fine`` and ``affine`` (FIRE's finer and affine-stage features) are not read."""
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        moving = g_moving if x_moving is None else x_moving
        fixed = g_fixed if x_fixed is None else x_fixed
        theta = self.prealign(moving, fixed)
        raw = self.unet(moving, fixed, theta, self.displacement)
        pre = spatial.warp(moving, spatial.affine_to_displacement(theta, moving.shape[2:]))
        return Transform(theta=theta, nr_feat=raw, disp_nr=self.displacement(raw), feat_affine=pre)

    def forward(self, x_moving: torch.Tensor, x_fixed: torch.Tensor) -> Transform:
        """Register ``x_moving`` ``(B, 1, *S)`` to ``x_fixed``."""
        return self.transform("AtoB", x_moving, x_fixed)
