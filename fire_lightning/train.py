"""``train(cfg)``: a plain function (tests call it), separate from the CLI."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from callbacks.gradcam import GradCAMCallback
from callbacks.image_logging import ValidationImages
from callbacks.interrupt import SaveOnInterrupt

from .config import CONFIG_NAME, ConfigError, load_config, load_run_config, to_yaml  # noqa: F401 (re-exported)
from .datasets import make_datamodule  # noqa: F401  (re-exported: the data module of a config)
from .distributed import global_rank
from .errors import Preempted
from .explain import ExplainSettings
from .io import describe_error
from .module import build_module
from .wandb_report import finish_training, make_logger

log = logging.getLogger(__name__)

#: the run folder's record of the last training: iterations and seconds (the ablation's time column)
TRAINING_NAME = "training.json"


#: set by rank 0 before fitting; the processes Lightning launches for the other ranks inherit it
RUN_DIR_ENV = "FIRE_RUN_DIR"


def new_run_dir(cfg: DictConfig) -> Path:
    """``run.root/run.name``; without a name, ``<experiment>-<timestamp>`` (``-1``, ``-2`` … if taken),
    or ``<experiment>-<SLURM job id>`` under SLURM, so that every task of a job and its requeued
    restarts agree on one folder. A process that Lightning launched for another rank gets rank 0's."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and global_rank() > 0:
        return Path(inherited)
    job = os.environ.get("SLURM_JOB_ID") if SLURMEnvironment.detect() else None
    if cfg.run.name is None and not job and int(cfg.trainer.num_nodes) > 1:
        raise ConfigError("trainer.num_nodes > 1 outside SLURM: set run.name, so that every node writes to one run "
                          "folder")
    if cfg.run.name is None and job:
        run_dir = Path(cfg.run.root) / f"{cfg.experiment}-{job}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    name = cfg.run.name or f"{cfg.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.root) / name
    i = 1
    while run_dir.exists() and cfg.run.name is None:
        run_dir = Path(cfg.run.root) / f"{name}-{i}"
        i += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def latest_run_dir(cfg: DictConfig) -> Path:
    """The newest run folder of ``cfg.experiment`` under ``cfg.run.root`` that has ``last.ckpt``."""
    root = Path(cfg.run.root)
    if cfg.run.name:
        return root / cfg.run.name
    cands = sorted((p for p in root.glob(f"{cfg.experiment}-*") if (p / "checkpoints" / "last.ckpt").is_file()),
                   key=lambda p: p.stat().st_mtime)
    if not cands:
        raise FileNotFoundError(f"--resume: no run of '{cfg.experiment}' with checkpoints/last.ckpt under {root}/")
    return cands[-1]


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one appends to it (under the
    union of both headers), so that a resumed run keeps the rows logged before it stopped."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))


class ResumableCSVLogger(CSVLogger):
    """``csv/metrics.csv`` of a run, continued (not overwritten) by ``--resume``."""

    @property
    def experiment(self):
        if self._experiment is None and global_rank() == 0:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return super().experiment


def _loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = []
    if cfg.logger.csv:
        loggers.append(ResumableCSVLogger(str(run_dir), name="csv", version=""))
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False))
    if cfg.logger.wandb:
        loggers.append(make_logger(cfg, run_dir))
    return loggers


def strategy_for(t: DictConfig):
    """Lightning's strategy for the ``trainer`` config. ``ddp`` / ``ddp_spawn`` (and ``auto`` on more than
    one process) become DistributedDataParallel with ``find_unused_parameters``: FIRE's manual steps
    backpropagate losses that reach only some sub-networks (the affine warm-up: G and T_af; the
    generator step: not D^A, D^B; the discriminator step: only them), and Lightning prepares the
    reducer before each of those backward passes from the graph of its loss. Gradients are averaged
    over ranks before clipping and the optimiser steps, so every rank takes the same step."""
    world = int(t.devices) * int(t.num_nodes)
    name = str(t.strategy)
    if name in ("ddp", "ddp_spawn") or (name == "auto" and world > 1):
        return DDPStrategy(find_unused_parameters=True, start_method="spawn" if name == "ddp_spawn" else "popen")
    return name


def build_trainer(cfg: DictConfig, run_dir: Path, n_optimizers: int, extra_callbacks=()) -> L.Trainer:
    """A Trainer whose step counts are in training iterations (see :class:`module_base.RegistrationModule`).
    Grad-CAM explains FIRE's components: the MI-CNN's runs have no Grad-CAM callback."""
    t = cfg.trainer
    ckpt = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="iter{train/iteration:.0f}",
                           auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every_n_steps * n_optimizers,
                           save_top_k=-1, save_last=True)
    gradcam = [GradCAMCallback(ExplainSettings.from_config(cfg), cfg.explain.every_n_epochs, cfg.explain.n_pairs,
                               out_dir=run_dir / "gradcam")] if cfg.model.name == "fire" else []
    callbacks = [ckpt, SaveOnInterrupt(run_dir / "checkpoints"),
                 ValidationImages(cfg.logger.image_every_n_val, out_dir=run_dir / "images"), *gradcam, *extra_callbacks]
    loggers = _loggers(cfg, run_dir)  # learning rates: the module logs lr/<sub-network> itself
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_steps=t.max_steps * n_optimizers,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy_for(t),
        precision=t.precision,
        val_check_interval=t.val_every_n_steps,  # batches, counted across epochs
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps,
        limit_val_batches=t.limit_val_batches,
        fast_dev_run=t.fast_dev_run,
        deterministic=t.deterministic,
        logger=loggers or False,
        callbacks=callbacks,
        enable_progress_bar=t.progress_bar,
        num_sanity_val_steps=0,
    )


@contextlib.contextmanager
def _sigusr1_as_sigterm():
    """Outside SLURM, SIGUSR1 (what schedulers send before a time limit) stops training like SIGTERM:
    Lightning handles SIGTERM (stop after the current iteration, then ``on_exception``). Under SLURM
    Lightning's own SIGUSR1 handler (checkpoint and requeue) is left in place."""
    if SLURMEnvironment.detect() or not hasattr(signal, "SIGUSR1") or threading.current_thread() is not \
            threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def good_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The periodic checkpoints of a run (``iter*.ckpt``), newest first."""
    return sorted(Path(ckpt_dir).glob("iter*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)


def resumable_checkpoint(path: Path) -> dict:
    """``path``'s contents, or a one-line error that says it is corrupt (a half-written file after a
    crash) and which earlier checkpoint of the run to resume from instead."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
            raise ValueError("not a training checkpoint (no state_dict / loops)")
        return ckpt
    except Exception as e:
        others = [p for p in good_checkpoints(path.parent) if p != path]
        offer = (f"; the newest periodic checkpoint is {others[0]}: `cp {others[0]} {path}` and resume again"
                 if others else "; the run has no other checkpoint")
        raise ValueError(f"{path}: unreadable, cannot resume ({describe_error(e)}){offer}") from None


def _save_after_fit(trainer: L.Trainer, path: Path) -> None:
    """Save after ``fit`` as if inside the last batch's end, where Lightning writes its own checkpoints: it
    counts a batch for the loggers (``_batches_that_stepped``) after that point and adds it back when it
    restores. Saved as is, a resumed run would log its curve one step to the right of an uninterrupted one."""
    loop = trainer.fit_loop.epoch_loop
    loop._batches_that_stepped -= 1
    try:
        trainer.save_checkpoint(str(path))
    finally:
        loop._batches_that_stepped += 1


def train(cfg: DictConfig, resume_dir: str | Path | None = None, callbacks=()) -> dict:
    """Train ``cfg``'s model (FIRE or the MI-CNN, ``model.name``); returns ``{"run_dir", "checkpoint",
    "iterations", "metrics"}``.

    ``callbacks``: more Lightning callbacks (a sweep's pruning / reporting callback).

    With ``resume_dir``, continues that run from its ``checkpoints/last.ckpt`` (step counts,
    optimiser states and loggers continue); ``cfg`` is then normally that run's saved config.
    """
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed = cfg.seed
    ckpt_path = None
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        ckpt_path = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"{ckpt_path}: nothing to resume from")
        # Checkpoints hold no RNG state: reseed by progress so a resumed run draws new
        # training pairs instead of replaying those of its first iterations.
        seed = cfg.seed + int(resumable_checkpoint(ckpt_path).get("global_step", 0))
        log.info("resuming %s from %s", run_dir, ckpt_path)
    else:
        run_dir = new_run_dir(cfg)
    # Every rank starts from the same seed (same initial weights; DDP also broadcasts rank 0's); the
    # training pairs differ per rank (data_modules.loading.train_rng).
    L.seed_everything(seed, workers=True, verbose=False)
    rank0 = global_rank() == 0
    if rank0:
        (run_dir / CONFIG_NAME).write_text(to_yaml(cfg))
        os.environ[RUN_DIR_ENV] = str(run_dir)
    log.info("run folder: %s", run_dir)

    dm = make_datamodule(cfg)
    if rank0 and callable(getattr(dm, "describe", None)):  # real datasets: which subjects went where
        split_path = run_dir / "data_split.json"
        tmp = split_path.with_name(f".{split_path.name}.tmp")
        tmp.write_text(json.dumps(dm.describe(), indent=2))
        os.replace(tmp, split_path)
    model = build_module(cfg, label_names=getattr(dm, "label_names", None), spacing=getattr(dm, "spacing", None))
    trainer = build_trainer(cfg, run_dir, model.n_optimizers, callbacks)
    start = time.time()
    last = run_dir / "checkpoints" / "last.ckpt"
    finished = False
    try:
        with _sigusr1_as_sigterm():
            trainer.fit(model, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
        # The periodic checkpoints need not fall on the last iteration: always leave the final state.
        _save_after_fit(trainer, last)
        finished = True
    except SIGTERMException:  # SaveOnInterrupt has written last.ckpt after the current iteration
        raise Preempted(run_dir, model.iteration) from None
    finally:
        if cfg.logger.wandb:
            finish_training(trainer, cfg, last if finished else None)
    elapsed = time.time() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    log.info("trained %d iterations in %.1f s", model.iteration, elapsed)
    if rank0:  # what the ablation table reports as the training time
        (run_dir / TRAINING_NAME).write_text(json.dumps({"iterations": model.iteration, "seconds": round(elapsed, 1),
                                                         "resumed": resume_dir is not None}, indent=1))
    return {"run_dir": run_dir, "checkpoint": last, "iterations": model.iteration, "metrics": metrics,
            "seconds": elapsed, "model": model, "datamodule": dm}
