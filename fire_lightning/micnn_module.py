"""The MI-CNN's LightningModule (``model.name: micnn``): the U-Net of :class:`nets.micnn.MICNNNet` trained
unsupervised on ``similarity(x_m ∘ phi, x_f) + λ ||∇u||²`` with one Adam (``optim.lr_nonrigid``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from omegaconf import DictConfig

from . import spatial
from .losses import gradient_smoothness, make_similarity
from .module_base import RegistrationModule
from .nets.transformation import Transform
from .schema import ConfigError


class MICNNOutputs(NamedTuple):
    """One forward of the training graph: the transform, the full field ``u_ab`` ``(B, n, *S)`` (its affine
    part ``af_ab``), the warped moving image ``warped_a`` ``(B, 1, *S)`` and the pre-aligned one ``affine_a``."""

    t_ab: Transform
    u_ab: torch.Tensor
    af_ab: torch.Tensor
    warped_a: torch.Tensor
    affine_a: torch.Tensor


class MICNNLoss(NamedTuple):
    """The loss and its parts (scalars): ``total = similarity + smooth_weight × smooth``."""

    total: torch.Tensor
    similarity: torch.Tensor
    smooth: torch.Tensor


class MICNNModule(RegistrationModule):
    """Trains :class:`nets.micnn.MICNNNet` on batches ``{"moving", "fixed", "moving_label", "fixed_label"}``.

    One training iteration: the pair pre-aligned (no gradient), the U-Net's field, the moving image warped
    by it, ``model.loss.similarity`` (MI for multi-modal pairs; ``lncc`` or ``mse`` for mono-modal ones)
    between the warped and the fixed image plus ``model.micnn.smooth_weight`` × the gradient term
    (:func:`losses.gradient_smoothness`), one backward, clip (``optim.grad_clip``), one Adam step at
    ``optim.lr_nonrigid`` (scheduled by ``optim.lr_decay``). A non-finite loss skips the step.
    """

    def __init__(self, cfg: DictConfig | dict, label_names: dict | None = None, spacing=None):
        super().__init__(cfg, label_names, spacing)
        cfg = self.cfg
        if cfg.model.name != "micnn":
            raise ConfigError(f"MICNNModule trains model.name=micnn, got '{cfg.model.name}'")
        loss = cfg.model.loss
        self.similarity = make_similarity(loss.similarity, int(cfg.data.spatial_dims), loss.mi_bins,
                                          loss.mi_sigma_ratio, loss.ncc_kernel)
        self.smooth_weight = float(cfg.model.micnn.smooth_weight)

    def base_lrs(self) -> dict[str, float]:
        """The one optimiser's rate: the U-Net's, ``optim.lr_nonrigid``."""
        return {"T_nr": float(self.cfg.optim.lr_nonrigid)}

    def _forward_loss(self, batch) -> tuple[MICNNOutputs, MICNNLoss]:
        """The forward and the loss of a batch ``(B, 1, *S)``."""
        moving, fixed = batch["moving"], batch["fixed"]
        shape = moving.shape[2:]
        t = self.net(moving, fixed)
        u = t.field(shape)
        af = t.affine_field(shape)
        warped = spatial.warp(moving, u)
        sim = self.similarity(warped, fixed)
        smooth = gradient_smoothness(t.disp_nr, shape)
        out = MICNNOutputs(t, u, af, warped, t.feat_affine)
        return out, MICNNLoss(sim + self.smooth_weight * smooth, sim, smooth)

    def training_step(self, batch, batch_idx):
        bs = batch["moving"].shape[0]
        opts = self._optimizers_by_name()
        self._schedule_lrs(opts)
        _, loss = self._forward_loss(batch)
        if not self._finite_everywhere(loss.total):
            self._count_skipped("loss", loss.total)
            self.log("train/skipped_steps", self.skipped_steps.float(), on_step=True, batch_size=bs)
            return None
        self._step(list(opts.values()), loss.total)
        self._log_loss(loss, "train", bs)
        self.log("train/skipped_steps", self.skipped_steps.float(), on_step=True, batch_size=bs)
        self._log_progress(opts, bs)
        return loss.total.detach()

    def _registration(self, out: MICNNOutputs, batch) -> tuple[torch.Tensor, ...]:
        """``(u_ab, af_ab, u_ba, theta)``; ``u_ba`` from the same network on the swapped pair."""
        back = self.net.transform("BtoA", batch["fixed"], batch["moving"])
        return out.u_ab, out.af_ab, back.field(batch["moving"].shape[2:]), out.t_ab.theta
