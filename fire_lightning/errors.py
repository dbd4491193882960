"""Exceptions that the ``fire`` command turns into an exit code (light: imported by the CLI itself)."""

from __future__ import annotations

import signal
from pathlib import Path


class Preempted(Exception):
    """Training stopped by SIGTERM (or SIGUSR1 outside SLURM): ``last.ckpt`` holds the state after the
    current iteration. ``exit_code`` 143 (128 + SIGTERM) tells a scheduler the job did not finish."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self, run_dir: Path, iteration: int):
        self.run_dir, self.iteration = Path(run_dir), int(iteration)
        super().__init__(f"stopped by a signal at iteration {iteration}; state saved to "
                         f"{self.run_dir / 'checkpoints' / 'last.ckpt'}; continue with "
                         f"`fire train --resume {self.run_dir}`")
