"""FIRENet: every FIRE network (G, both F, both T, and D^A, D^B when adversarial) built from ``model``,
one code path for 2D and 3D; and the caches the networks share."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from .. import spatial
from ..schema import ModelConfig
from . import cost_volume
from .discriminator import Discriminator
from .synthesis import Decoder, Encoder
from .transformation import FinerFeatures, Transform, TransformationNet

AFFINE_INITS = ("identity",) + spatial.MOMENT_MODES
#: ``model.affine.encoder``: what the affine stage reads (:meth:`FIRENet.affine_features`)
AFFINE_ENCODERS = ("shared", "frozen")
#: the affine stage's ``(moving, fixed, fine)`` features (:meth:`FIRENet.affine_features`)
AffineInputs = tuple[torch.Tensor, torch.Tensor, FinerFeatures | None]


class FIRENet(nn.Module):
    """All FIRE networks: G, F^{A→B}, F^{B→A}, T^{A→B}, T^{B→A} (and D^A, D^B when adversarial).

    ``forward`` is inference only (§3.4): ``(x_a, x_b) -> Transform`` of T^{A→B}.
    Training uses the parts directly (see :mod:`fire_lightning.losses`); every use of T goes through
    :meth:`transform`, which adds the images' initial affine when ``model.affine.init`` asks for one.
    """

    #: the benchmark's row name
    NAME = "FIRE"

    def __init__(self, n: int, model: ModelConfig | None = None, spacing=None):
        """``n``: 2 or 3 spatial dimensions; ``model``: the ``model`` section (:class:`schema.ModelConfig`,
        or its OmegaConf config; None: the defaults); ``spacing``: voxel size per axis (mm), for the
        moments initialisation (None: 1 mm)."""
        super().__init__()
        m = model if model is not None else ModelConfig()
        s, a = m.synthesis, m.affine
        self.n = n
        self.affine_init = str(a.init)
        self.affine_symmetric_passes_eval = int(a.symmetric_passes_eval)
        self.nonrigid_symmetric_passes_eval = int(m.nonrigid.symmetric_passes_eval)
        self.spacing = tuple(float(v) for v in spacing) if spacing is not None else (1.0,) * n
        self.G = Encoder(n, s.width, n_res=s.n_res, down_kernel=s.down_kernel, outer_kernel=s.outer_kernel)
        self.F_ab = Decoder(n, s.width, n_res=s.n_res, outer_kernel=s.outer_kernel)
        self.F_ba = Decoder(n, s.width, n_res=s.n_res, outer_kernel=s.outer_kernel)
        for net in (self.G, self.F_ab, self.F_ba):
            net.checkpoint, net.chunk = bool(s.checkpoint_activations), int(s.checkpoint_chunk)
        # model.affine.encoder='frozen': G_affine, a copy of G that never trains, is what T_af reads once
        # :meth:`freeze_affine_encoder` has copied G into it, which a buffer records for resuming and loading.
        # Both exist only with that setting, so a model without it keeps the state dict it always had.
        self.G_affine = copy.deepcopy(self.G).requires_grad_(False) if a.encoder == "frozen" else None
        if self.G_affine is not None:
            self.G_affine.checkpoint = False  # it stores no activations for a backward of its own
            self.register_buffer("affine_encoder_frozen", torch.tensor(False))
        self.T_ab = TransformationNet(n, self.G.level_channels, a, m.nonrigid)
        self.T_ba = TransformationNet(n, self.G.level_channels, a, m.nonrigid)
        self.D_a = Discriminator(n, m.disc_width) if m.adversarial else None
        self.D_b = Discriminator(n, m.disc_width) if m.adversarial else None

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

    def nonrigid_heads(self) -> list[nn.Module]:
        """T_nr of both directions (a U-Net's cascade: ``model.nonrigid.passes_eval``)."""
        return [self.T_ab.nonrigid, self.T_ba.nonrigid]

    def displacement(self, raw: torch.Tensor) -> torch.Tensor:
        """phi_nr from T_nr's raw output (:meth:`TransformationNet.displacement`)."""
        return self.T_ab.displacement(raw)

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
        """How many of G's finer levels (S/2, S/1) the affine stage reads (``model.affine.fine_passes``,
        ``model.affine.full_passes``)."""
        return self.T_ab.n_finer

    def encode(self, x: torch.Tensor, encoder: Encoder | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(G(x) (B, 4w, *S/4), finer)`` from one pass of G (or ``encoder``), ``finer`` the finer feature maps
        the affine stage reads, coarse to fine (:meth:`Encoder.finer`; empty without finer levels)."""
        return (encoder or self.G).pyramid(x, self.n_finer)

    def encode_pair(self, x_moving: torch.Tensor, x_fixed: torch.Tensor, encoder: Encoder | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, FinerFeatures | None]:
        """G (or ``encoder``) on both images in one batch (instance norm is per sample: the values of two
        calls, in half the calls): ``(G(x_moving), G(x_fixed), fine)``, ``fine`` one ``(moving, fixed)`` pair per
        finer level, or None without finer levels."""
        b = x_moving.shape[0]
        g, finer = self.encode(torch.cat([x_moving, x_fixed]), encoder)
        g_m, g_f = g.split(b)
        return g_m, g_f, (tuple((h[:b], h[b:]) for h in finer) or None)

    def fine_features(self, x_moving: torch.Tensor | None, x_fixed: torch.Tensor | None) -> FinerFeatures | None:
        """G's finer features of a pair for the affine stage's finer levels, or None without any,
        recomputed from the images (callers that ran :meth:`encode_pair` pass its features instead)."""
        if not self.n_finer:
            return None
        if x_moving is None or x_fixed is None:
            raise ValueError("model.affine.fine_passes needs the images, not only their encodings")
        b = x_moving.shape[0]
        return tuple((h[:b], h[b:]) for h in self.G.finer(torch.cat([x_moving, x_fixed]), self.n_finer))

    @property
    def reads_affine_copy(self) -> bool:
        """Whether the affine stage reads G_affine (``model.affine.encoder='frozen'``, once it is copied)."""
        return self.G_affine is not None and bool(self.affine_encoder_frozen)

    def freeze_affine_encoder(self) -> None:
        """Copy G into G_affine (``model.affine.encoder='frozen'``; the module calls it when the affine warm-up
        ends): from then on T_af reads features that the synthesis and registration losses no longer move."""
        if self.G_affine is None:
            raise RuntimeError("freeze_affine_encoder needs model.affine.encoder='frozen'")
        self.G_affine.load_state_dict(self.G.state_dict())
        self.affine_encoder_frozen.fill_(True)

    def affine_features(self, g_moving: torch.Tensor, g_fixed: torch.Tensor, x_moving: torch.Tensor | None,
                        x_fixed: torch.Tensor | None, fine: FinerFeatures | None
                        ) -> tuple[torch.Tensor, torch.Tensor, FinerFeatures | None]:
        """What the affine stage reads: ``(g_moving, g_fixed, fine)`` as given (G's), or, once G_affine is
        frozen, G_affine's of the images, shaped as :meth:`encode_pair`'s. G_affine's parameters take no gradient
        (nothing is recorded for it in training); Grad-CAM, whose inputs require one, reaches its layers."""
        if not self.reads_affine_copy:
            return g_moving, g_fixed, fine if fine is not None else self.fine_features(x_moving, x_fixed)
        if x_moving is None or x_fixed is None:
            raise ValueError("model.affine.encoder='frozen' needs the images, not only their encodings")
        return self.encode_pair(x_moving, x_fixed, self.G_affine)

    def registration_encodings(self, x_moving: torch.Tensor, x_fixed: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, FinerFeatures | None, AffineInputs | None]:
        """What registering a pair encodes, each once: ``(g_moving, g_fixed, fine, affine)`` for
        :meth:`transform`, ``affine`` the affine stage's features when they are not G's (G_affine's), else None.
        When nothing at inference reads G's own features (G_affine feeds the affine stage and T_nr reads the
        images), G is not run: the copy's features stand for both, and only the transform's ``feat_affine``
        (which F reads in training) is then the copy's."""
        if not self.reads_affine_copy:
            return *self.encode_pair(x_moving, x_fixed), None
        affine = self.affine_features(None, None, x_moving, x_fixed, None)
        if self.T_ab.nonrigid.needs_images and not self.training:
            return *affine, affine
        return *self.encode_pair(x_moving, x_fixed), affine

    def affine_theta(self, direction: str, g_moving: torch.Tensor, g_fixed: torch.Tensor,
                     x_moving: torch.Tensor | None = None, x_fixed: torch.Tensor | None = None,
                     fine: FinerFeatures | None = None) -> torch.Tensor:
        """phi_af alone ``(B, n, n+1)`` of :meth:`transform` (no T_nr)."""
        g_moving, g_fixed, fine = self.affine_features(g_moving, g_fixed, x_moving, x_fixed, fine)
        return self._net(direction).affine_theta(g_moving, g_fixed, self.initial_affine(x_moving, x_fixed), fine)

    def _net(self, direction: str) -> TransformationNet:
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        return self.T_ab if direction == "AtoB" else self.T_ba

    def transform(self, direction: str, g_moving: torch.Tensor, g_fixed: torch.Tensor,
                  x_moving: torch.Tensor | None = None, x_fixed: torch.Tensor | None = None,
                  fine: FinerFeatures | None = None, affine: AffineInputs | None = None) -> Transform:
        """T^{A→B}(G_A, G_B) (``direction="AtoB"``, moving = A) or T^{B→A}(G_B, G_A) (``"BtoA"``, moving = B).

        Args:
            g_moving, g_fixed: ``(B, C, *S/4)`` encodings; x_moving, x_fixed: ``(B, 1, *S)`` the images they
                encode (needed when ``model.affine.init`` is not the identity, there is a fine level, or T_nr reads
                the images).
            fine: G's finer features from :meth:`encode_pair` (finer levels only; recomputed from the
                images when not given).
            affine: the affine stage's ``(moving, fixed, fine)`` features, already computed
                (:meth:`registration_encodings`); None: :meth:`affine_features`.
        """
        t, theta0 = self._net(direction), self.initial_affine(x_moving, x_fixed)
        if affine is None:
            affine = self.affine_features(g_moving, g_fixed, x_moving, x_fixed, fine)
        a_moving, a_fixed, fine = affine
        theta = t.affine_theta(a_moving, a_fixed, theta0, fine)
        if not self.training and self.affine_symmetric_passes_eval:
            theta = self.symmetric_affine(direction, theta, a_moving, a_fixed, fine)
        out = t(g_moving, g_fixed, theta=theta, images=(x_moving, x_fixed))
        if not self.training and self.nonrigid_symmetric_passes_eval:
            out = self.symmetric_nonrigid(direction, out, x_moving, x_fixed)
        return out

    def symmetric_affine(self, direction: str, theta: torch.Tensor, g_moving: torch.Tensor, g_fixed: torch.Tensor,
                         fine: FinerFeatures | None) -> torch.Tensor:
        """``direction``'s affine ``theta (B, n, n+1)`` made symmetric (``model.affine.symmetric_passes_eval``
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

    def symmetric_nonrigid(self, direction: str, out: Transform, x_moving: torch.Tensor, x_fixed: torch.Tensor
                           ) -> Transform:
        """``direction``'s transform ``out`` with phi_nr made symmetric (``model.nonrigid.symmetric_passes_eval`` K > 0,
        inference; a U-Net T_nr): the opposite direction's T_nr runs K passes from the identity that register the
        fixed image ``x_fixed (B, 1, *S)`` to the moving one ``x_moving`` as phi_af aligns it (both on the fixed
        grid); what it reaches, v', is an estimate of -v for ``out``'s velocity v, and phi_nr's velocity is the
        mean (v - v') / 2, the arithmetic mean in the log domain of two estimates whose errors are partly their
        own (the non-rigid counterpart of :meth:`symmetric_affine`, which instead starts the opposite network
        from this direction's answer: for T_nr that did worse, docs/3d.md)."""
        other = self._net("BtoA" if direction == "AtoB" else "AtoB")
        moving_af = spatial.warp(x_moving, spatial.affine_to_displacement(out.theta, x_moving.shape[2:]))
        ident = spatial.identity_affine(out.theta.shape[0], self.n, out.theta.device, out.theta.dtype)
        back = other.nonrigid(x_fixed, moving_af, ident, other.displacement, passes=self.nonrigid_symmetric_passes_eval)
        raw = 0.5 * (out.nr_feat - back)
        return Transform(theta=out.theta, nr_feat=raw, disp_nr=other.displacement(raw), feat_affine=out.feat_affine)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> Transform:
        """Register ``x_a`` (moving, ``(B,1,*S)``) to ``x_b`` (fixed): phi^{A→B}."""
        g_a, g_b, fine, affine = self.registration_encodings(x_a, x_b)
        return self.transform("AtoB", g_a, g_b, x_a, x_b, fine, affine)


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
    spatial.clear_grid_cache()
    cost_volume.clear_caches()

