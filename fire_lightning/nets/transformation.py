"""T (FIRE §3.3): T_af then T_nr, one direction's transform phi = phi_af ∘ phi_nr."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import spatial
from ..schema import AffineConfig, NonRigidConfig
from .affine import MatchAffineNet, build_affine_head
from .nonrigid import build_nonrigid

#: G's finer features of a pair, one ``(moving, fixed)`` per finer level of the affine stage, coarse to fine
FinerFeatures = tuple[tuple[torch.Tensor, torch.Tensor], ...]


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

    How T_af produces theta (``model.affine``, :class:`schema.AffineConfig`; the paper: ``regress``,
    one pass, no initialisation):

    * ``head``: which head (:func:`affine.build_affine_head`), ``weighting``: how the ``match`` head
      weighs its correspondences (:class:`MatchAffineNet`);
    * ``theta0``: an initial affine handed in by the caller (the images' moments,
      :meth:`FIRENet.initial_affine`); the head then predicts the remaining correction;
    * ``passes`` K: a recursive cascade. Pass k warps the moving features by the current
      theta and the (shared) head predicts a correction, composed on: theta <- theta ∘ delta_k.
      Gradients flow through every pass. ``passes_eval`` passes in eval mode (validation, test,
      ``fire register``): each pass closes only part of what is left (about a third of a rotation),
      so more passes at inference than in training go on converging.
    * ``fine_passes``: coarse to fine. After the cascade on G's S/4 features (one point = 4
      pixels), a second matching head (its own projection, same kind as ``head="match"``)
      corrects theta on G's S/2 features (:meth:`Encoder.finer`), where a point is half as wide;
      ``full_passes``: then a third on G's full-resolution features (its first block, one point =
      one pixel), with ``full_channels`` descriptors. Each level has its passes in training and at
      inference (``*_passes_eval``; None: as in training).

    Args:
        level_channels: G's channels at S/4, S/2 and S (:attr:`Encoder.level_channels`).
        affine, nonrigid: the ``model.affine`` and ``model.nonrigid`` sections (None: the defaults).
    """

    #: the affine stage's levels, coarse to fine: head attribute → its passes' keys in ``model.affine``
    #: (training, inference)
    LEVELS = {"affine": ("passes", "passes_eval"), "affine_fine": ("fine_passes", "fine_passes_eval"),
              "affine_full": ("full_passes", "full_passes_eval")}

    def __init__(self, n: int, level_channels: tuple[int, int, int], affine: AffineConfig | None = None,
                 nonrigid: NonRigidConfig | None = None):
        super().__init__()
        a = affine if affine is not None else AffineConfig()
        nr = nonrigid if nonrigid is not None else NonRigidConfig()
        feat, fine, full = level_channels
        self.affine = build_affine_head(n, feat, a)
        self.affine_fine = MatchAffineNet(n, fine, tuple(a.channels), weighting=a.weighting) if a.fine_passes else None
        self.affine_full = (MatchAffineNet(n, full, tuple(a.full_channels), weighting=a.weighting)
                            if a.full_passes else None)
        #: passes per level (head attribute → passes) in training, and at inference (:meth:`set_passes_eval`)
        self.passes = {head: int(getattr(a, train)) for head, (train, _) in self.LEVELS.items()}
        self.passes_eval = {head: int(getattr(a, train) if getattr(a, ev) is None else getattr(a, ev))
                            for head, (train, ev) in self.LEVELS.items()}
        self.nonrigid = build_nonrigid(n, feat, nr)
        self.diffeomorphic = bool(nr.diffeomorphic)
        self.integration_steps = int(nr.integration_steps)

    def set_passes_eval(self, head: str, passes: int | None) -> None:
        """Passes at inference of the level ``head`` (a key of :attr:`LEVELS`); None: as in training."""
        self.passes_eval[head] = self.passes[head] if passes is None else int(passes)

    def affine_parameters(self) -> list[nn.Parameter]:
        """T_af's parameters: the head's, and the finer levels' when there are any."""
        return [*self.affine.parameters(), *[p for head, _ in self.finer_levels() for p in head.parameters()]]

    def finer_levels(self) -> list[tuple[MatchAffineNet, int]]:
        """The finer levels' ``(head, passes)``, coarse to fine, with the passes of the current mode."""
        passes = self.passes if self.training else self.passes_eval
        return [(getattr(self, head), passes[head]) for head in ("affine_fine", "affine_full")
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
        (:meth:`Encoder.finer`: S/2, then S/1), needed when ``model.affine.fine_passes`` (``full_passes``).
        """
        theta = self._cascade(self.affine, fa, fb, theta0,
                              (self.passes if self.training else self.passes_eval)["affine"])
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
