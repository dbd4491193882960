"""The FIRE LightningModule: manual optimisation with one Adam per sub-network (§3.8). What it shares
with the MI-CNN's module (the optimisers' steps, the schedule, the validation metrics) is
:class:`.module_base.RegistrationModule`; :func:`build_module` and :func:`load_module` pick the module of
``model.name``."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from omegaconf import DictConfig
from torch import nn

from .inference import LABEL_NAMES, Registers, build_net, model_spacing, read_checkpoint  # noqa: F401 (re-exported)
from .io import describe_error
from .losses import (
    FIRELoss,
    FIREOutputs,
    adversarial_images,
    affine_warmup_loss,
    discriminators,
    fire_forward,
    fire_loss,
    generator_adversarial_loss,
    lsgan_discriminator_loss,
    make_similarity,
)
from .module_base import FUSED_ADAM_DEVICES, RegistrationModule, lr_factor  # noqa: F401 (re-exported)
from .schema import ConfigError

# Optimiser names (FIRENet.parameter_groups, in configure_optimizers' order): the ones that
# minimise L (§3.8), then ExFIRE's discriminators.
GENERATOR_GROUPS = ("T_af", "T_nr", "G_F")
DISCRIMINATOR_GROUPS = ("D_A", "D_B")


@contextmanager
def frozen(*modules: nn.Module):
    """Inside the block the parameters of ``modules`` do not require grad; their previous
    flags come back on exit, also on an exception."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class FIREModule(RegistrationModule):
    """Trains :class:`FIRENet` on batches ``{"moving", "fixed", "moving_label", "fixed_label"}``.

    * Optimisers, in order: T_af (both directions), T_nr (both), G + both F; then D^A, D^B
      when ``model.adversarial`` (ExFIRE).
    * One training iteration: (1) generator step: one forward, L of (1) (plus
      ``model.adv_weight`` × the LSGAN generator term when adversarial, with D^A, D^B frozen),
      one backward, clip and step T_af, T_nr, G_F; (2) when adversarial, discriminator step on
      the same forward's images, detached: the sum of both LSGAN discriminator losses, one
      backward, clip each, step D_A then D_B.
    * Lightning counts every optimiser step in ``global_step``; :attr:`iteration` is the number
      of training iterations (batches that stepped), which is what configs count. So every
      iteration steps every optimiser once.
    * An iteration whose L is not finite is skipped (no parameter changes, no step counted);
      a non-finite discriminator loss skips only the discriminator update. Both are counted in
      ``train/skipped_steps``.
    """

    def __init__(self, cfg: DictConfig | dict, label_names: dict | None = None, spacing=None):
        super().__init__(cfg, label_names, spacing)
        cfg = self.cfg
        if cfg.model.name != "fire":
            raise ConfigError(f"FIREModule trains model.name=fire, got '{cfg.model.name}' (build_module picks the "
                              "module of a config)")
        n = int(cfg.data.spatial_dims)
        m, loss = cfg.model, cfg.model.loss
        self.similarity = make_similarity(loss.similarity, n, loss.mi_bins, loss.mi_sigma_ratio, loss.ncc_kernel)
        wants_mi = m.affine.mi_weight > 0 or cfg.optim.affine_warmup_steps > 0
        self.affine_similarity = make_similarity("mi", n, loss.mi_bins, loss.mi_sigma_ratio) if wants_mi else None
        # the loss's settings as plain values: the step reads no config object, so torch.compile (dynamo)
        # traces the forward and the loss as one graph
        self._loss_settings = {"similarity_input": str(loss.similarity_input), "smooth_units": str(loss.smooth_units),
                               "affine_weight": float(m.affine.mi_weight)}
        self._adv_weight = float(m.adv_weight)
        t = cfg.trainer
        if t.compile:  # dynamo traces through the caches of grids and constants (pure builders): not news
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`-wrapped")
        self._train_forward_loss = self._forward_loss if not t.compile else torch.compile(
            self._forward_loss, mode=None if t.compile_mode == "default" else str(t.compile_mode),
            backend=str(t.compile_backend))
        expected = GENERATOR_GROUPS + (DISCRIMINATOR_GROUPS if self.net.D_a is not None else ())
        if self._group_names != expected:
            raise RuntimeError(f"FIRENet.parameter_groups() gives {self._group_names}; "
                               f"training_step expects {expected}")

    # ------------------------------------------------------------------ shared step
    def _forward_loss(self, batch) -> tuple[FIREOutputs, FIRELoss]:
        """The training graph and L (1); with ExFIRE on, L includes ``adv_weight`` × the
        generators' LSGAN term (gradients reach D's parameters unless they are frozen)."""
        x_a, x_b = batch["moving"], batch["fixed"]
        out = fire_forward(self.net, x_a, x_b)
        adv = None
        if self.net.D_a is not None:  # ExFIRE §3: G, F, T learn to confuse D^A and D^B
            adv = self._adv_weight * generator_adversarial_loss(self.net, adversarial_images(out, x_a, x_b))
        return out, fire_loss(out, x_a, x_b, self.similarity, adversarial=adv, affine_similarity=self.affine_similarity,
                              **self._loss_settings)

    def training_step(self, batch, batch_idx):
        bs = batch["moving"].shape[0]
        opts = self._optimizers_by_name()
        self._schedule_lrs(opts)
        if self.iteration < self.cfg.optim.affine_warmup_steps:
            return self._warmup_step(batch, opts, bs)
        if self.net.G_affine is not None and not self.net.reads_affine_copy:
            self.net.freeze_affine_encoder()  # model.affine.encoder='frozen': T_af reads G as the warm-up left it
        # Generator step: D^A, D^B are frozen, so L (adversarial term included) trains T, G, F only.
        with frozen(*discriminators(self.net).values()):
            out, loss = self._train_forward_loss(batch)
            if not self._finite_everywhere(loss.total):
                self._count_skipped("loss", loss.total)
                self.log("train/skipped_steps", self.skipped_steps.float(), on_step=True, batch_size=bs)
                return None
            self._step([opts[k] for k in GENERATOR_GROUPS], loss.total)
        if self.net.D_a is not None:
            self._discriminator_step(out, batch, [opts[k] for k in DISCRIMINATOR_GROUPS], bs)
        self._log_loss(loss, "train", bs)
        self.log("train/skipped_steps", self.skipped_steps.float(), on_step=True, batch_size=bs)
        self._log_progress(opts, bs)
        return loss.total.detach()

    def _warmup_step(self, batch, opts: dict[str, LightningOptimizer], bs: int):
        """Affine warm-up (``optim.affine_warmup_steps``, beyond the paper): G and T_af learn the affine
        from MI between the affinely warped and the fixed image alone (:func:`losses.affine_warmup_loss`),
        without the decoders, for a fraction of a FIRE iteration's cost. Every optimiser is stepped
        (those without gradients change nothing), so :attr:`iteration` keeps counting."""
        loss = affine_warmup_loss(self.net, batch["moving"], batch["fixed"], self.affine_similarity)
        if not self._finite_everywhere(loss):
            self._count_skipped("warm-up loss", loss)
            return None
        others = [o for k, o in opts.items() if k not in ("T_af", "G_F")]
        for opt in others:
            opt.zero_grad(set_to_none=True)
        self._step([opts["T_af"], opts["G_F"]], loss)
        for opt in others:
            opt.step()
        self.log("train/loss_warmup", loss.detach(), on_step=True, batch_size=bs, prog_bar=True)
        self._log_progress(opts, bs)
        return loss.detach()

    def _discriminator_step(self, out: FIREOutputs, batch, opts: list[LightningOptimizer], bs: int) -> None:
        """ExFIRE §3: D^A, D^B learn real (inputs and warped inputs) from synthesised, on the
        generator step's images (detached). ``opts``: D_A's then D_B's optimiser.

        A non-finite loss updates nothing, but both optimisers are still stepped (without
        gradients, which Adam leaves alone): Lightning's ``global_step`` must count
        ``n_optimizers`` steps in every iteration that the generators stepped (:attr:`iteration`).
        """
        images = adversarial_images(out, batch["moving"], batch["fixed"])
        losses = []
        for name, disc in discriminators(self.net).items():
            loss, real, fake = lsgan_discriminator_loss(disc, images[name].real, images[name].fake)
            self.log_dict({f"train/loss_disc_{name}": loss.detach(), f"train/d_real_{name}": real,
                           f"train/d_fake_{name}": fake}, on_step=True, batch_size=bs)
            losses.append(loss)
        total = sum(losses)
        if self._finite_everywhere(total):
            self._step(opts, total)
            return
        self._count_skipped("discriminator loss", total)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
            opt.step()

    def _registration(self, out: FIREOutputs, batch) -> tuple[torch.Tensor, ...]:
        """What validation scores: ``(u_ab, af_ab, u_ba, theta)`` of the training graph."""
        return out.u_ab, out.af_ab, out.u_ba, out.t_ab.theta


def module_class(name: str) -> type[RegistrationModule]:
    """The training module of ``model.name``: :class:`FIREModule` (``fire``) or the MI-CNN's (``micnn``)."""
    if name == "fire":
        return FIREModule
    if name == "micnn":
        from .micnn_module import MICNNModule

        return MICNNModule
    raise ConfigError(f"model.name must be 'fire' or 'micnn', got '{name}'")


def build_module(cfg: DictConfig, label_names: dict | None = None, spacing=None) -> RegistrationModule:
    """The training module for ``cfg`` (its ``model.name``)."""
    return module_class(str(cfg.model.name))(cfg, label_names=label_names, spacing=spacing)


def load_module(checkpoint: str | Path, map_location: str = "cpu") -> RegistrationModule:
    """Load a training module (FIRE's or the MI-CNN's, by the checkpoint's ``model.name``) from a Lightning
    checkpoint, with a clear error if it is not one."""
    path = Path(checkpoint)
    hp = read_checkpoint(path, map_location)["hyper_parameters"]
    name = str(hp["cfg"].get("model", {}).get("name", "fire"))
    try:
        return module_class(name).load_from_checkpoint(str(path), map_location=map_location)
    except Exception as e:
        raise ValueError(f"{path}: not a readable fire-lightning checkpoint ({describe_error(e)})") from None
