"""One ``fire sweep`` worker process per GPU."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)


def spawn_workers(argv: list[str], gpus: list[str], seed: int | None = None) -> int:
    """One worker process per GPU (``CUDA_VISIBLE_DEVICES``), running ``fire sweep`` with ``argv`` (and
    ``--seed seed + i``: samplers that share a seed would propose the same trials); waits for all."""
    procs = []
    for i, gpu in enumerate(gpus):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        extra = ["--seed", str(seed + i)] if seed is not None else []
        procs.append(subprocess.Popen([sys.executable, "-m", "fire_lightning.cli", "sweep", *argv, *extra], env=env))
        log.info("worker on GPU %s: pid %d", gpu, procs[-1].pid)
    return max(p.wait() for p in procs)
