"""Grad-CAM maps of every FIRE component on fixed validation pairs, logged during training (ExFIRE)."""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch

from callbacks.image_logging import log_figure
from fire_lightning.explain import ExplainSettings, explain_pair
from fire_lightning.viz import gradcam_panel

log = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved_state(module: torch.nn.Module):
    """Restore, on exit, every random generator (torch CPU and CUDA, NumPy, ``random``) and each
    submodule's train/eval flag as they were on entry, whatever happened inside (Lightning's
    ``isolate_rng`` restores no mode and nothing after an exception). CUDA's generators only
    when CUDA is already initialised: querying them would start it on every visible GPU."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_state, py_state = np.random.get_state(), random.getstate()
    modes = {name: m.training for name, m in module.named_modules()}
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)
        for name, m in module.named_modules():
            m.training = modes[name]


class GradCAMCallback(L.Callback):
    """Every ``every_n_epochs`` training epochs, and at the end of training, the Grad-CAM maps of
    ``n_pairs`` fixed validation pairs.

    One figure per pair laid out like ExFIRE Figs 2–4 (:func:`fire_lightning.viz.gradcam_panel`),
    tagged ``gradcam/<pair id>``, sent to W&B / TensorBoard when active and saved as PNG in
    ``out_dir``. Runs on rank zero only. The pairs are the first ``n_pairs`` of the validation
    loader, read once and kept. The model's weights, their gradients, the optimisers, the
    train/eval mode of every submodule and every random generator are left exactly as they were
    (:func:`preserved_state`; Captum differentiates with respect to activations only).
    """

    def __init__(self, settings: ExplainSettings = ExplainSettings(), every_n_epochs: int = 1, n_pairs: int = 2,
                 out_dir: str | Path | None = None):
        self.settings = settings
        self.every_n_epochs = int(every_n_epochs)
        self.n_pairs = int(n_pairs)
        self.out_dir = Path(out_dir) if out_dir else None
        self._pairs: dict | None = None
        self._last_step: int | None = None

    def _fixed_pairs(self, trainer: L.Trainer) -> dict | None:
        if self._pairs is None:
            dm = trainer.datamodule
            if dm is None or not callable(getattr(dm, "val_dataloader", None)):
                return None
            parts: list[dict] = []
            count = 0
            for batch in dm.val_dataloader():
                parts.append(batch)
                count += batch["moving"].shape[0]
                if count >= self.n_pairs:
                    break
            if not parts:
                return None
            k = self.n_pairs
            self._pairs = {key: torch.cat([p[key] for p in parts])[:k]
                           for key in ("moving", "fixed", "moving_label", "fixed_label")}
            self._pairs["id"] = [i for p in parts for i in p["id"]][:k]
        return self._pairs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.every_n_epochs <= 0 or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._explain(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        """The trained model's maps too, unless the last epoch's already are."""
        if self.every_n_epochs > 0 and trainer.is_global_zero and self._last_step != _step(trainer, pl_module):
            self._explain(trainer, pl_module)

    def _explain(self, trainer: L.Trainer, pl_module) -> None:
        step = _step(trainer, pl_module)
        self._last_step = step
        net = pl_module.net
        with preserved_state(pl_module):
            try:
                pairs = self._fixed_pairs(trainer)
                if pairs is None:
                    log.warning("Grad-CAM callback: no validation pairs; nothing logged")
                    return
                net.eval()
                param = next(net.parameters())  # the model's device and dtype (half-precision runs too)
                x_a, x_b = (pairs[k].to(param.device, param.dtype) for k in ("moving", "fixed"))
                maps = explain_pair(net, x_a, x_b, self.settings, fixed_label=pairs["fixed_label"].to(param.device),
                                    moving_label=pairs["moving_label"].to(param.device))
                for i, pair_id in enumerate(pairs["id"]):
                    fig = gradcam_panel(maps, i, title=f"{pair_id}, iteration {step}")
                    log_figure(trainer, fig, f"gradcam/{pair_id}", self.out_dir, step=step)
            except Exception as e:  # explaining must never stop training
                log.warning("Grad-CAM callback failed at iteration %d (training goes on): %s", step, e)


def _step(trainer: L.Trainer, pl_module) -> int:
    return int(getattr(pl_module, "iteration", trainer.global_step))
