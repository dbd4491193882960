"""``fire sweep``: where the trials of a sweep run (Optuna in this process or in one worker per GPU,
or W&B's own sweep) and the leaderboard at the end."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class SweepLaunch:
    """``backend``: optuna | wandb | None (W&B when it is online, else Optuna); ``gpus``: comma-separated
    ids, one worker each; ``count``: trials this worker runs at most; ``storage``: Optuna's database URL;
    ``out``: the sweep folder; ``seed``: the sampler's; ``sweep_id`` / ``project``: a W&B sweep to join."""

    backend: str | None = None
    gpus: str | None = None
    count: int | None = None
    storage: str | None = None
    out: str | None = None
    seed: int = 0
    sweep_id: str | None = None
    project: str | None = None


def launch_sweep(path, launch: SweepLaunch) -> int:
    """Run the sweep file ``path`` as ``launch`` says; the exit code of its workers."""
    from .config import load_config
    from .sweep import load_sweep, run_optuna, run_wandb, spawn_workers, sweep_dir

    backend, gpus, count, storage, out = launch.backend, launch.gpus, launch.count, launch.storage, launch.out
    seed, sweep_id, project = launch.seed, launch.sweep_id, launch.project
    sweep = load_sweep(path)
    folder = sweep_dir(sweep, out)
    exp = load_config(sweep.experiment, sweep.fixed)
    if backend is None:  # W&B's own sweeps when W&B is online, else Optuna
        online = os.environ.get("WANDB_MODE", exp.logger.wandb_mode if exp.logger.wandb else "offline") == "online"
        backend = "wandb" if online else "optuna"
    gpus = [g for g in (gpus or "").split(",") if g]
    if backend == "wandb":
        project = project or exp.logger.wandb_project
        if len(gpus) > 1:
            sweep_id = sweep_id or run_wandb(sweep, folder, None, 0, project)
            rest = ["--backend", "wandb", "--sweep-id", sweep_id, "--project", project, "--out", str(folder)]
            return spawn_workers([str(sweep.path), *rest, *(["--count", str(count)] if count else [])], gpus)
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        run_wandb(sweep, folder, sweep_id, count, project)
        return 0
    if len(gpus) > 1:
        folder.mkdir(parents=True, exist_ok=True)
        rest = ["--backend", "optuna", "--out", str(folder), *(["--storage", storage] if storage else []),
                *(["--count", str(count)] if count else [])]
        code = spawn_workers([str(sweep.path), *rest], gpus, seed=seed)
    else:
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        run_optuna(sweep, folder, storage, count, seed)
        code = 0
    print(f"sweep folder: {folder}\n" + (folder / "leaderboard.md").read_text())
    return code
