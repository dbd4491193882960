"""The W&B backend of ``fire sweep``: ``wandb.sweep`` / ``wandb.agent``, each agent trial one training run."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from .sweep_file import Sweep, as_override


# ------------------------------------------------------------------------------------------ W&B
def run_wandb(sweep: Sweep, folder: Path, sweep_id: str | None, count: int | None, project: str) -> str:
    """Create the W&B sweep (or join ``sweep_id``) and run one agent here; returns the sweep id."""
    import wandb

    if sweep_id is None:
        config = {**sweep.raw, "name": sweep.name}  # command kept: `wandb agent` on another machine runs it
        sweep_id = wandb.sweep(config, project=project)
        print(f"W&B sweep {sweep_id}: more agents join with `fire sweep {sweep.path} --backend wandb "
              f"--sweep-id {sweep_id}` (or `wandb agent <entity>/{project}/{sweep_id}`)")

    def trial():
        from ..train import train

        run = wandb.init(group=sweep.name)
        values = {k: run.config[k] for k in sweep.parameters if k in run.config}
        overrides = [*sweep.fixed, *(as_override(k, v) for k, v in values.items()), f"run.root={folder}",
                     f"run.name=trial-{run.id}", "logger.wandb=true", "logger.wandb_mode=online",
                     f"logger.wandb_project={project}", f"logger.wandb_group={sweep.name}"]
        train(load_config(sweep.experiment, overrides))

    wandb.agent(sweep_id, function=trial, count=count, project=project)
    return sweep_id
