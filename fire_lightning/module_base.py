"""What every training module of the project shares: manual optimisation with one Adam per parameter
group, the learning-rate schedule, skipped non-finite steps, the iteration count, and the validation
metrics of a registration (:class:`RegistrationModule`). FIRE's module is :mod:`.module`, the MI-CNN's
:mod:`.micnn_module`."""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from omegaconf import DictConfig, OmegaConf

from . import metrics
from .inference import LABEL_NAMES, Registers, build_net, model_spacing
from .schema import Config, rename_old_keys
from .truth import affine_error, affine_parameters, single_resampling_labels, slope_and_correlation

log = logging.getLogger(__name__)

# Devices whose Adam has a fused kernel in every torch this project supports (since 2.4); others
# (MPS, XPU: newer) get torch's default implementation.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def lr_factor(iteration: int, warmup: int, max_steps: int, decay: str = "none", ramp: int = 0) -> float:
    """The factor on every learning rate at ``iteration`` (0-based): 1 during the affine warm-up; after it,
    ``ramp`` iterations climbing linearly to 1 (``k / ramp`` at the k-th, 1-based; 0 = no ramp) times the
    decay: 1 for ``decay="none"``, ``(1 + cos(pi t)) / 2`` for ``"cosine"`` with ``t`` the fraction of the
    iterations after the warm-up done (1 at the first, 0 after the last)."""
    if iteration < warmup:
        return 1.0
    if decay not in ("none", "cosine"):
        raise ValueError(f"lr_decay must be 'none' or 'cosine', got {decay!r}")
    factor = min(1.0, (iteration - warmup + 1) / ramp) if ramp > 0 else 1.0
    if decay == "none":
        return factor
    t = min(1.0, (iteration - warmup) / max(1, max_steps - warmup))
    return factor * 0.5 * (1.0 + math.cos(math.pi * t))


class RegistrationModule(Registers, L.LightningModule):
    """A registration network ``self.net`` (built from ``cfg.model`` by :func:`inference.build_net`) trained
    with Lightning's manual optimisation: one Adam per ``net.parameter_groups()`` entry, each at its rate of
    :meth:`base_lrs`. Subclasses write ``training_step`` (with :meth:`_step`), ``_forward_loss(batch) ->
    (out, loss)`` (``loss`` a NamedTuple of scalars, ``total`` among them) and ``_registration(out, batch)``.

    * Lightning counts every optimiser step in ``global_step``; :attr:`iteration` counts training iterations
      (batches that stepped), which is what configs count: every iteration steps every optimiser once.
    * A non-finite loss skips the iteration (no parameter changes, no step counted), counted in
      ``train/skipped_steps``.
    """

    def __init__(self, cfg: DictConfig | dict, label_names: dict | None = None, spacing=None):
        super().__init__()
        # Onto the schema (a checkpoint saved before the model's sections: its keys renamed, silently);
        # the voxel size per axis: the data module's (anisotropic for ACDC 3D).
        if not isinstance(cfg, DictConfig):
            cfg = rename_old_keys(cfg)
        cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        spacing = model_spacing(cfg, spacing)
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True),
                                   "label_names": dict(label_names or LABEL_NAMES), "spacing": list(spacing)})
        self.cfg = cfg
        self.label_names = {int(k): v for k, v in (label_names or LABEL_NAMES).items()}
        self.automatic_optimization = False
        self.net = build_net(cfg, spacing)
        self.spacing = spacing
        self._group_names = tuple(self.net.parameter_groups())
        self._n_optimizers = len(self._group_names)
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self.val_examples: dict | None = None
        self._val_thetas: list = []

    # ------------------------------------------------------------------ optimisation
    @property
    def n_optimizers(self) -> int:
        return self._n_optimizers

    @property
    def iteration(self) -> int:
        """Training iterations done (``global_step`` counts each of the optimisers' steps); for a
        module loaded from a checkpoint without a trainer, the checkpoint's."""
        if self._trainer is None:
            return getattr(self, "_checkpoint_iteration", 0)
        return self.global_step // self.n_optimizers

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._checkpoint_iteration = int(checkpoint.get("global_step", 0)) // self.n_optimizers
        # Adam's implementation is this run's (optim.fused), not the checkpoint's: its saved groups carry
        # one, which load_state_dict would keep (the moments and step counts are the same for both)
        fused = self._fused_adam() or None
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group["fused"] = fused

    def base_lrs(self) -> dict[str, float]:
        """Each optimiser's configured learning rate (``optim.lr_*``), by parameter-group name."""
        o = self.cfg.optim
        return {"T_af": o.lr_affine, "T_nr": o.lr_nonrigid, "G_F": o.lr_synthesis, "D_A": o.lr_discriminator,
                "D_B": o.lr_discriminator}

    def configure_optimizers(self):
        """One Adam per parameter group. Lightning calls this with the module on its device; Adam's
        fused implementation (``optim.fused``) where torch has it for that device."""
        lrs, betas, fused = self.base_lrs(), tuple(self.cfg.optim.betas), self._fused_adam() or None
        return [torch.optim.Adam(params, lr=lrs[name], betas=betas, fused=fused)
                for name, params in self.net.parameter_groups().items()]

    def _fused_adam(self) -> bool:
        """``optim.fused``, where the training device has Adam's fused kernel and the precision has no
        gradient scaler (fp16's ``16-mixed``: Lightning refuses to clip for a fused optimiser there, as it
        would unscale the gradients itself). The trainer's device: a checkpoint is loaded
        (:meth:`on_load_checkpoint`) before the module is moved there."""
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        fp16 = str(self.cfg.trainer.precision) in ("16-mixed", "16")
        return bool(self.cfg.optim.fused) and device.type in FUSED_ADAM_DEVICES and not fp16

    def _schedule_lrs(self, opts: dict[str, LightningOptimizer]) -> None:
        """Set this iteration's rates (``optim.lr_decay``): a function of the iteration alone, so a
        resumed run continues the schedule where it stopped."""
        o = self.cfg.optim
        factor = lr_factor(self.iteration, o.affine_warmup_steps, self.cfg.trainer.max_steps, o.lr_decay,
                           o.lr_ramp_steps)
        base = self.base_lrs()
        if "T_af" in base and self.iteration >= o.affine_warmup_steps:
            base["T_af"] *= o.affine_joint_factor  # the joint phase's affine rate (optim.affine_joint_factor)
        for name, opt in opts.items():
            for group in opt.param_groups:
                group["lr"] = base[name] * factor

    def _optimizers_by_name(self) -> dict[str, LightningOptimizer]:
        """Optimiser by parameter-group name (``T_af``, ``T_nr``, ``G_F``[, ``D_A``, ``D_B``])."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return dict(zip(self._group_names, opts, strict=True))

    def _step(self, opts: list[LightningOptimizer], loss: torch.Tensor) -> None:
        """Zero ``opts``' gradients, backpropagate ``loss`` once, clip per optimiser, step each in order."""
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip = float(self.cfg.optim.grad_clip)
        for opt in opts:
            if clip > 0 and opt.defaults.get("fused"):  # Lightning's clip_gradients refuses a fused optimiser
                # under any autocast (for fp16's scaler, which bf16 has not: _fused_adam): its own call, here
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
            elif clip > 0:
                self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            opt.step()

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank. Under DDP a rank that skipped its backward while
        the others ran theirs would hang the gradient all-reduce, so all skip or none do."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return bool(bad.item() == 0)

    def _count_skipped(self, what: str, value: torch.Tensor) -> None:
        self.skipped_steps += 1
        log.warning("iteration %d: non-finite %s (%s); step skipped", self.iteration, what, value.item())

    # ------------------------------------------------------------------ logging
    def _log_loss(self, loss, stage: str, batch_size: int) -> None:
        """Training losses per step, on each rank's batch; validation / test losses per epoch, averaged
        over the ranks' pairs (``sync_dist``)."""
        on_step = stage == "train"
        for k, v in loss._asdict().items():
            self.log(f"{stage}/loss_{k}", v.detach(), on_step=on_step, on_epoch=not on_step, batch_size=batch_size,
                     prog_bar=k == "total", sync_dist=not on_step)

    def _log_progress(self, opts: dict[str, LightningOptimizer], bs: int) -> None:
        """The iteration count and each optimiser's learning rate, by its sub-network (``lr/T_af`` …), as
        tensors filled on the device: ``self.log`` of a Python number copies it from the host, which on
        a GPU waits for every kernel queued before it (``profiling.HostCopies``)."""
        self.log("train/iteration", self._on_device(self.iteration), on_step=True, batch_size=bs)
        self.log_dict({f"lr/{name}": self._on_device(opt.param_groups[0]["lr"]) for name, opt in opts.items()},
                      on_step=True, batch_size=bs)

    def _on_device(self, value: float) -> torch.Tensor:
        """``value`` as a 0-d float32 tensor written on the module's device by a kernel, not copied."""
        return torch.full((), float(value), device=self.device)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch, stage: str):
        bs = batch["moving"].shape[0]
        out, loss = self._forward_loss(batch)
        self._log_loss(loss, stage, bs)
        u_ab, af_ab, u_ba, theta = self._registration(out, batch)
        scores = self.registration_metrics(batch, u_ab, af_ab, u_ba, theta)
        for k, v in scores.items():
            self.log(f"{stage}/{k}", v.mean(), on_step=False, on_epoch=True, batch_size=bs, prog_bar=k == "dice_mean",
                     sync_dist=True)
        return out, theta

    def validation_step(self, batch, batch_idx):
        out, theta = self._eval_step(batch, "val")
        if "true_theta" in batch:  # known transforms: predicted against true affine parameters, at the epoch's end
            self._val_thetas.append((theta.detach().double().cpu(), batch["true_theta"].double().cpu()))
        if batch_idx == 0:
            self.val_examples = {"batch": {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in batch.items()},
                                 "out": out, "name": self.net.NAME}

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._val_thetas = []

    def on_validation_epoch_end(self) -> None:
        """Slope and correlation of the predicted against the true rotation, log-scale and translation
        over the validation pairs (pooled over axes): is each part of the affine being learned?"""
        if not self._val_thetas:
            return
        pred, true = (torch.cat(t) for t in zip(*self._val_thetas))
        self._val_thetas = []
        if self.trainer.world_size > 1:  # every rank's pairs (DistributedSampler pads them to equal counts)
            pred, true = (self.all_gather(t.to(self.device)).flatten(0, 1).cpu() for t in (pred, true))
        shape, spacing = tuple(self.cfg.data.size), self.spacing
        p, t = affine_parameters(pred, shape, spacing), affine_parameters(true, shape, spacing)
        for key, name in (("rotation_deg", "rotation"), ("log_scale", "scale"), ("translation_mm", "translation")):
            slope, corr = slope_and_correlation(p[key], t[key])
            self.log_dict({f"val/affine_{name}_slope": slope, f"val/affine_{name}_corr": corr}, on_epoch=True,
                          sync_dist=True)  # the same on every rank (all pairs gathered)

    def registration_metrics(self, batch, u_ab: torch.Tensor, af_ab: torch.Tensor, u_ba: torch.Tensor,
                             theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample metrics of the moving → fixed registration ``u_ab`` ``(B, n, *S)`` (its affine part
        ``af_ab`` and ``theta`` ``(B, n, n+1)``, the other direction ``u_ba``): Dice per structure (the model
        and its affine part), % folding, inverse-consistency error (mm); with known transforms the
        one-resampling Dice and the affine error."""
        by = metrics.dice_by_method(batch["moving_label"], batch["fixed_label"],
                                    {"model": u_ab, "affine": af_ab, "Unaligned": None}, self.label_names)
        scores = dict(by["model"])
        scores["dice_affine_mean"] = by["affine"]["dice_mean"]
        scores["dice_unaligned_mean"] = by["Unaligned"]["dice_mean"]
        scores["folding_pct"] = metrics.folding_percent(u_ab)
        scores["ice_mm"] = metrics.inverse_consistency_error(u_ab, u_ba, self.spacing)
        if "true_theta" in batch:  # evaluation pairs with a known transform (fire_lightning/truth.py)
            true_theta, elastic, lab_f = batch["true_theta"], batch["true_elastic"], batch["fixed_label"]
            for key, u in (("dice1r_mean", u_ab), ("dice1r_affine_mean", af_ab)):
                once = single_resampling_labels(lab_f, u.detach(), true_theta, elastic)
                scores[key] = metrics.dice_per_label(once, lab_f, list(self.label_names)).nanmean(1)
            scores.update(affine_error(theta.detach(), true_theta, lab_f.shape[2:], self.spacing, region=lab_f > 0))
        return {k: v.float() for k, v in scores.items()}
