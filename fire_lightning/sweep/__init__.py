"""``fire sweep SWEEP.yaml``: hyperparameter sweeps on the engines users already run.

The sweep file is in W&B's sweep format, so the same file also works with ``wandb sweep`` /
``wandb agent``::

    method: random                      # grid | random | bayes
    metric: {name: val/dice_mean, goal: maximize}
    parameters:                         # config keys
      model.synthesis.width: {values: [8, 16]}
      optim.lr_affine: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
    early_terminate: {type: hyperband, min_iter: 2}   # optional; counted in validations
    run_cap: 8                          # optional: trials in all
    command: [fire, train, experiments/phantom2d.yaml, trainer.max_steps=600, ${args_no_hyphens}]

``command`` names the experiment YAML and fixed overrides (the ``${...}`` macros are W&B's; a trial's
parameters go there as ``key=value``).

Backends:

* ``optuna`` (the default unless ``--backend wandb``): the file becomes an Optuna study (grid ->
  ``GridSampler``, random -> ``RandomSampler``, bayes -> ``TPESampler``; hyperband ->
  ``HyperbandPruner`` fed by the validation metric), stored in SQLite under the sweep folder or in
  ``--storage URL``, so that workers on several machines share it. One worker per ``--gpus`` entry
  (``CUDA_VISIBLE_DEVICES``), or the trials one after another in this process. A trial whose worker
  died (its lock file is free while the study says RUNNING) is resumed from its ``last.ckpt`` by the
  next worker that starts, so a stopped sweep goes on where it stopped and no trial runs twice.
* ``wandb``: ``wandb.sweep`` creates the sweep (or ``--sweep-id`` joins one) and one ``wandb.agent`` runs
  per ``--gpus`` entry; agents on other machines join with the printed id.

Every trial is an ordinary run folder ``<sweep folder>/trial-NNN`` (W&B logging grouped by the sweep's
name when ``logger.wandb`` is on). The sweep folder gets ``leaderboard.md`` / ``.csv`` (trial, state,
parameters, best validation metric, run folder) and ``metric_vs_params.png``.
"""

from __future__ import annotations

from .leaderboard import write_leaderboard
from .optuna_backend import ReportToTrial, run_optuna, suggest
from .sweep_file import Sweep, load_sweep, sweep_dir
from .wandb_backend import run_wandb
from .workers import spawn_workers

__all__ = ["ReportToTrial", "Sweep", "load_sweep", "run_optuna", "run_wandb", "spawn_workers", "suggest", "sweep_dir",
           "write_leaderboard"]
