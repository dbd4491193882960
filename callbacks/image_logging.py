"""Logs validation image grids (moving, fixed, warped, synthesised, deformation grid)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt

from fire_lightning.viz import registration_panel

log = logging.getLogger(__name__)


def log_figure(trainer: L.Trainer, fig, tag: str, out_dir: Path | None, step: int | None = None) -> None:
    """Send a matplotlib figure to every active logger that takes images, and save it as PNG.

    ``step`` defaults to the trainer's ``global_step``; FIRE passes its iteration count.
    """
    step = trainer.global_step if step is None else int(step)
    for lg in trainer.loggers:
        exp = getattr(lg, "experiment", None)
        name = type(lg).__name__
        try:
            if name == "TensorBoardLogger":
                exp.add_figure(tag, fig, global_step=step, close=False)
            elif name == "WandbLogger":
                import wandb

                lg.log_image(key=tag, images=[wandb.Image(fig)], step=step)
        except Exception as e:  # a logger failing must not stop training
            log.warning("could not log figure %s to %s: %s", tag, name, e)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_dir / f"{tag.replace('/', '_')}_iter{step:07d}.png", dpi=80)
    plt.close(fig)


class ValidationImages(L.Callback):
    """After every ``every_n``-th validation, draw up to ``max_rows`` pairs of the first validation batch.

    Rank zero only; uses what the validation step already computed (no extra forward pass).
    """

    def __init__(self, every_n: int = 1, max_rows: int = 3, out_dir: str | Path | None = None):
        self.every_n = every_n
        self.max_rows = max_rows
        self.out_dir = Path(out_dir) if out_dir else None
        self._count = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.every_n <= 0:
            return
        self._count += 1
        ex = getattr(pl_module, "val_examples", None)
        if ex is None or (self._count - 1) % self.every_n:
            return
        b, out = ex["batch"], ex["out"]
        synth = getattr(out, "xhat_t_b", None)  # FIRE's synthesised image (the MI-CNN has none)
        rows = []
        for i in range(min(self.max_rows, b["moving"].shape[0])):
            rows.append({"moving": b["moving"][i], "fixed": b["fixed"][i], "warped": out.warped_a[i],
                         "warped_affine": out.affine_a[i], "field": out.u_ab[i], "fixed_label": b["fixed_label"][i],
                         **({"synth": synth[i]} if synth is not None else {})})
        fig = registration_panel(rows, titles=[str(t) for t in b["id"][: len(rows)]], method=ex.get("name", "FIRE"))
        log_figure(trainer, fig, "val/registration", self.out_dir, step=getattr(pl_module, "iteration", None))
        pl_module.val_examples = None
