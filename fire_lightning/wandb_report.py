"""Weights & Biases: one W&B run per run folder, with what a user opening it expects.

During training Lightning's ``WandbLogger`` sends the config, every loss part, each optimiser's
learning rate (``lr/T_af`` …), the validation metrics and the image and Grad-CAM panels
(``callbacks/``). This module adds what Lightning does not: the run's id kept in the run folder, so
that ``--resume`` continues the same W&B run and ``fire benchmark`` / ``fire evaluate`` later add to it
(Table 2 / Table 4 as ``wandb.Table``, the benchmark figures, the means in the summary); the final
checkpoint as a ``model`` artifact (``logger.wandb_log_model``); and the group and tags that a sweep
sets. Offline by default (``logger.wandb_mode``): ``wandb sync RUN/wandb/offline-run-*`` uploads it.

wandb is imported only when a config has ``logger.wandb`` on.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .distributed import global_rank

log = logging.getLogger(__name__)

ID_FILE = "wandb_run_id"  # in the run folder


def run_id(run_dir: str | Path) -> str | None:
    """The W&B run id of a run folder, or None if it never logged to W&B."""
    path = Path(run_dir) / ID_FILE
    return path.read_text().strip() if path.is_file() else None


def init_kwargs(cfg: DictConfig, run_dir: Path) -> dict:
    """Arguments for ``wandb.init`` / ``WandbLogger`` of ``cfg``'s run in ``run_dir``: project, name,
    group, tags, folder, config, mode; the run's id when it has one (resume: the same W&B run)."""
    lg = cfg.logger
    os.environ.setdefault("WANDB_SILENT", "true")
    kwargs = {"project": lg.wandb_project, "name": run_dir.name, "dir": str(run_dir), "mode": lg.wandb_mode,
              "group": lg.wandb_group, "tags": list(lg.wandb_tags) or None,
              "config": OmegaConf.to_container(cfg, resolve=True)}
    rid = run_id(run_dir)
    if rid:
        kwargs.update(id=rid, resume="allow")
    return kwargs


def make_logger(cfg: DictConfig, run_dir: Path):
    """Lightning's ``WandbLogger`` for the run; its id is written to ``run_dir/wandb_run_id``."""
    from lightning.pytorch.loggers import WandbLogger

    kwargs = init_kwargs(cfg, run_dir)
    save_dir = kwargs.pop("dir")
    logger = WandbLogger(save_dir=save_dir, offline=kwargs.pop("mode") == "offline", log_model=False, **kwargs)
    if global_rank() == 0:  # other ranks have a dummy experiment
        (run_dir / ID_FILE).write_text(logger.experiment.id + "\n")
    return logger


def finish_training(trainer, cfg: DictConfig, checkpoint: Path | None) -> None:
    """At the end of ``train``: the final checkpoint as an artifact (``logger.wandb_log_model``; None: the
    training did not finish, no artifact), then the W&B run is finished, so that the next run in this
    process (a sweep's next trial) gets its own."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger):
            continue
        try:
            run = lg.experiment
            keep = cfg.logger.wandb_log_model and checkpoint is not None and checkpoint.is_file()
            if keep and trainer.is_global_zero:
                import wandb

                art = wandb.Artifact(f"model-{run.id}", type="model",
                                     metadata={"iteration": int(trainer.lightning_module.iteration)})
                art.add_file(str(checkpoint), name="last.ckpt")
                run.log_artifact(art, aliases=["latest", f"iter{trainer.lightning_module.iteration}"])
            run.finish()
        except Exception as e:  # W&B failing must not lose the training
            log.warning("W&B: could not finish the run: %s", e)


@contextlib.contextmanager
def attached_run(run_dir: str | Path, cfg: DictConfig):
    """The W&B run of ``run_dir`` (resumed by its id; a new one if it has none), finished on exit.
    Offline, the resumed part is a further ``offline-run-*`` folder with the same id; ``wandb sync``
    merges them."""
    import wandb

    run = wandb.init(**init_kwargs(cfg, Path(run_dir)), reinit="finish_previous")
    if not run_id(run_dir):
        (Path(run_dir) / ID_FILE).write_text(run.id + "\n")
    try:
        yield run
    finally:
        run.finish()


def log_evaluation(run_dir: str | Path, cfg: DictConfig, results: dict, out_dir: Path, split: str = "test") -> None:
    """Table 2, the affine-error table and Table 4 as ``wandb.Table`` (``<split>/table2`` …), the
    report's figures as images (``<split>/figures/<name>``) and each method's means in the summary
    (``<split>/<method>/<metric>``), in the run's W&B run. Nothing when W&B is off."""
    if not cfg.logger.wandb:
        return
    from .evaluate import affine_rows, table2_rows, table4_rows

    try:
        import wandb

        with attached_run(run_dir, cfg) as run:
            payload = {}
            for name, rows in (("table2", table2_rows), ("affine", affine_rows), ("table4", table4_rows)):
                header, body = rows(results)
                if body:
                    payload[f"{split}/{name}"] = wandb.Table(columns=header, data=body)
            for png in sorted(Path(out_dir).glob("*.png")):
                payload[f"{split}/figures/{png.stem}"] = wandb.Image(str(png))
            run.log(payload)
            for method, metrics in results.get("methods", {}).items():
                for metric, entry in metrics.items():
                    if isinstance(entry, dict) and entry.get("mean") is not None:
                        run.summary[f"{split}/{method}/{metric}"] = entry["mean"]
        log.info("W&B: %s tables, figures and means logged to run %s", split, run_id(run_dir))
    except Exception as e:  # the reports are on disk already; W&B failing must not lose them
        log.warning("W&B: could not log the %s results: %s", split, e)
