"""Save ``last.ckpt`` when training stops on an exception (Ctrl+C, a crash), so `--resume` loses nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class SaveOnInterrupt(L.Callback):
    """On any exception during fitting, write the current state to ``<dirpath>/last.ckpt`` (rank zero)."""

    def __init__(self, dirpath: str | Path):
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0:
            return  # nothing trained yet: keep whatever last.ckpt there is
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(self.path))
            log.warning("training stopped (%s); state saved to %s: continue with --resume",
                        type(exception).__name__, self.path)
        except Exception as e:  # never mask the original exception
            log.error("could not save %s after %s: %s", self.path, type(exception).__name__, e)
