"""``fire sweep SWEEP.yaml``: hyperparameter sweeps on the engines users already run (issue 13).

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

import csv
import fcntl
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from .config import ConfigError, load_config
from .tables import markdown_table

log = logging.getLogger(__name__)

METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("categorical", "constant", "int_uniform", "uniform", "q_uniform", "log_uniform_values",
                 "q_log_uniform_values")


@dataclass
class Sweep:
    """A parsed sweep file."""

    path: Path
    name: str
    method: str
    metric: str
    goal: str  # maximize | minimize
    parameters: dict  # config key -> W&B parameter spec
    experiment: Path
    fixed: list = field(default_factory=list)  # key=value overrides of every trial
    early_terminate: dict | None = None
    run_cap: int | None = None
    raw: dict = field(default_factory=dict)

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize"


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (method, metric, parameters, command)")
    method = raw.get("method")
    if method not in METHODS:
        raise ConfigError(f"{path}: method must be one of {', '.join(METHODS)}, got {method!r}")
    metric = raw.get("metric") or {}
    if not isinstance(metric, dict) or not metric.get("name"):
        raise ConfigError(f"{path}: metric needs a name, e.g. metric: {{name: val/dice_mean, goal: maximize}}")
    goal = metric.get("goal", "minimize")  # W&B's default
    if goal not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: metric.goal must be maximize or minimize, got {goal!r}")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: parameters is empty; name config keys, e.g. model.synthesis.width: {{values: [8, 16]}}")
    for key, spec in params.items():
        _distribution(path, key, spec, method)
    command = [str(c) for c in raw.get("command") or []]
    yamls = [c for c in command if c.endswith((".yaml", ".yml"))]
    if len(yamls) != 1:
        raise ConfigError(f"{path}: command must name one experiment YAML, e.g. "
                          "[fire, train, experiments/phantom2d.yaml, ${args_no_hyphens}]")
    experiment = Path(yamls[0])
    if not experiment.is_absolute() and not experiment.is_file():
        experiment = path.parent / experiment if (path.parent / experiment).is_file() else experiment
    fixed = [c for c in command if "=" in c and not c.startswith("$")]
    trial = load_config(experiment, fixed + [f"{k}={_example(spec)}" for k, spec in params.items()])  # keys, values
    if int(trial.trainer.devices) * int(trial.trainer.num_nodes) > 1:
        raise ConfigError(f"{path}: a trial runs in one process (trainer.devices=1); run one worker per GPU with "
                          "--gpus instead")
    early = raw.get("early_terminate")
    if early is not None and (not isinstance(early, dict) or early.get("type") != "hyperband"):
        raise ConfigError(f"{path}: early_terminate supports type: hyperband (with min_iter, eta)")
    cap = raw.get("run_cap")
    return Sweep(path, raw.get("name") or path.stem, method, metric["name"], goal, params, experiment, fixed, early,
                 int(cap) if cap else None, raw)


def _distribution(path: Path, key: str, spec, method: str) -> str:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: parameters.{key} must be a mapping (values / value / min, max)")
    dist = spec.get("distribution") or ("categorical" if "values" in spec else "constant" if "value" in spec else
                                        "int_uniform" if isinstance(spec.get("min"), int) and
                                        isinstance(spec.get("max"), int) else "uniform")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{path}: parameters.{key}: distribution {dist!r} not supported ({', '.join(DISTRIBUTIONS)})")
    if dist not in ("categorical", "constant") and ("min" not in spec or "max" not in spec):
        raise ConfigError(f"{path}: parameters.{key}: {dist} needs min and max")
    if method == "grid" and dist not in ("categorical", "constant"):
        raise ConfigError(f"{path}: parameters.{key}: a grid sweep takes values (or value), not {dist}")
    return dist


def _example(spec: dict):
    return _choices(spec)[0] if "values" in spec else spec.get("value", spec.get("min"))


def _choices(spec: dict) -> list:
    """A categorical parameter's values as Optuna takes them: a list value (``[8,8,8]``) as its override text."""
    return [f"[{','.join(str(x) for x in v)}]" if isinstance(v, (list, tuple)) else v for v in spec["values"]]


def _override(key: str, value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={value}"


# ------------------------------------------------------------------------------------------ Optuna
def _sampler(sweep: Sweep, seed: int | None):
    import optuna

    if sweep.method == "grid":
        space = {k: _choices(s) if "values" in s else [s["value"]] for k, s in sweep.parameters.items()}
        return optuna.samplers.GridSampler(space, seed=seed)
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(sweep: Sweep):
    import optuna

    if not sweep.early_terminate:
        return optuna.pruners.NopPruner()
    e = sweep.early_terminate
    return optuna.pruners.HyperbandPruner(min_resource=int(e.get("min_iter", 1)),
                                          reduction_factor=int(e.get("eta", 3)))


def suggest(trial, sweep: Sweep) -> dict:
    """The trial's value of every swept key (Optuna's ``suggest_*`` for each W&B distribution)."""
    values = {}
    for key, spec in sweep.parameters.items():
        dist = _distribution(sweep.path, key, spec, sweep.method)
        if dist == "constant":
            values[key] = spec["value"]
        elif dist == "categorical":
            values[key] = trial.suggest_categorical(key, _choices(spec))
        elif dist == "int_uniform":
            values[key] = trial.suggest_int(key, int(spec["min"]), int(spec["max"]))
        elif dist == "uniform":
            values[key] = trial.suggest_float(key, float(spec["min"]), float(spec["max"]))
        elif dist == "q_uniform":
            values[key] = trial.suggest_float(key, float(spec["min"]), float(spec["max"]), step=float(spec.get("q", 1)))
        elif dist == "log_uniform_values":
            values[key] = trial.suggest_float(key, float(spec["min"]), float(spec["max"]), log=True)
        else:  # q_log_uniform_values: integers on a log scale
            values[key] = trial.suggest_int(key, int(spec["min"]), int(spec["max"]), log=True)
    return values


class ReportToTrial(L.Callback):
    """After each validation: the metric to the Optuna trial (step = validation round, so a resumed
    trial continues the count); the pruner may stop the trial there."""

    def __init__(self, trial, sweep: Sweep):
        self.trial, self.sweep = trial, sweep
        self.best: float | None = None
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or self.sweep.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.sweep.metric])
        if not math.isfinite(value):
            return
        better = self.best is None or (value > self.best if self.sweep.maximize else value < self.best)
        self.best = value if better else self.best
        step = max(1, round(pl_module.iteration / max(1, int(pl_module.cfg.trainer.val_every_n_steps))))
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def sweep_dir(sweep: Sweep, out: str | Path | None) -> Path:
    return Path(out) if out else Path("runs") / "sweeps" / sweep.name


def _storage(sweep: Sweep, folder: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(folder / 'optuna.db').resolve()}"


class _TrialLock:
    """An exclusive lock on a trial's folder while a worker trains it (released by the OS if the
    worker dies, even by ``kill -9``)."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fh = open(run_dir / ".sweep.lock", "a+")

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def release(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _trial_config(sweep: Sweep, folder: Path, number: int, values: dict):
    overrides = [*sweep.fixed, *(_override(k, v) for k, v in values.items()), f"run.root={folder}",
                 f"run.name=trial-{number:03d}", f"logger.wandb_group={sweep.name}"]
    return load_config(sweep.experiment, overrides), overrides


def _train_trial(trial, sweep: Sweep, folder: Path, values: dict, resume: bool) -> float:
    import optuna

    from .train import train

    cfg, overrides = _trial_config(sweep, folder, trial.number, values)
    run_dir = folder / f"trial-{trial.number:03d}"
    lock = _TrialLock(run_dir)
    if not lock.acquire():
        raise RuntimeError(f"{run_dir}: another worker holds this trial")
    try:
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", overrides)
        report = ReportToTrial(trial, sweep)
        resume_from = run_dir if resume and (run_dir / "checkpoints" / "last.ckpt").is_file() else None
        if resume_from is not None:
            log.info("trial %d: resuming %s", trial.number, run_dir)
        train(cfg, resume_dir=resume_from, callbacks=[report])
    finally:
        lock.release()
    if report.pruned:
        raise optuna.TrialPruned(f"pruned at {sweep.metric}={report.best}")
    if report.best is None:
        raise RuntimeError(f"trial {trial.number}: no validation logged {sweep.metric}; is the metric's name right?")
    return report.best


def _orphans(study, folder: Path) -> list:
    """RUNNING trials of the study whose worker is gone: their lock can be taken."""
    import optuna

    found = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_dir = Path(t.user_attrs.get("run_dir", folder / f"trial-{t.number:03d}"))
        lock = _TrialLock(run_dir)
        if lock.acquire():
            lock.release()
            found.append(t)
    return found


def _finish_orphans(study, sweep: Sweep, folder: Path) -> int:
    """Resume every orphaned trial where it stopped, and tell the study its result."""
    import optuna

    n = 0
    for frozen in _orphans(study, folder):
        trial = optuna.trial.Trial(study, frozen._trial_id)
        values = {k: frozen.params[k] if k in frozen.params else spec.get("value")
                  for k, spec in sweep.parameters.items()}
        try:
            value = _train_trial(trial, sweep, folder, values, resume=True)
            study.tell(frozen.number, value)
        except optuna.TrialPruned:
            study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)
        except Exception as e:
            log.error("trial %d failed on resume: %s", frozen.number, e)
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        n += 1
    return n


def run_optuna(sweep: Sweep, folder: Path, storage: str | None = None, count: int | None = None,
               seed: int | None = 0) -> "optuna.Study":  # noqa: F821
    """One worker: resume orphaned trials, then run up to ``count`` new ones (or until ``run_cap`` /
    the grid is exhausted); writes the leaderboard after every trial."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = _storage(sweep, folder, storage)
    # A worker that starts on a study with trials in it offsets its seed by their number: a random
    # sampler with the first worker's seed would propose that worker's trials again.
    if seed is not None and sweep.name in optuna.study.get_all_study_names(url):
        seed += len(optuna.load_study(study_name=sweep.name, storage=url).trials)
    study = optuna.create_study(study_name=sweep.name, storage=url, sampler=_sampler(sweep, seed),
                                pruner=_pruner(sweep), load_if_exists=True,
                                direction="maximize" if sweep.maximize else "minimize")
    resumed = _finish_orphans(study, sweep, folder)
    if resumed:
        write_leaderboard(study, sweep, folder)
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                          optuna.trial.TrialState.PRUNED)))
    left = None if sweep.run_cap is None else max(0, sweep.run_cap - done - _running(study))
    n = count if left is None else (left if count is None else min(count, left))
    if sweep.method == "grid" and n is None:
        n = max(0, math.prod(len(s.get("values", [0])) for s in sweep.parameters.values()) - done - _running(study))
    if n is None:
        raise ConfigError(f"{sweep.path}: a {sweep.method} sweep needs --count or run_cap (how many trials)")

    def objective(trial):
        return _train_trial(trial, sweep, folder, suggest(trial, sweep), resume=False)

    if n > 0:
        study.optimize(objective, n_trials=n, catch=(RuntimeError,),
                       callbacks=[lambda s, _t: write_leaderboard(s, sweep, folder)])
    write_leaderboard(study, sweep, folder)
    return study


def _running(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def write_leaderboard(study, sweep: Sweep, folder: Path) -> list[dict]:
    """``leaderboard.md`` / ``.csv`` (best first) and ``metric_vs_params.png`` in the sweep folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name, **{k: t.params.get(k, "") for k in sweep.parameters},
               f"best {sweep.metric}": "" if t.value is None else round(float(t.value), 5),
               "run folder": t.user_attrs.get("run_dir", "")}
        rows.append(row)
    key = f"best {sweep.metric}"
    rows.sort(key=lambda r: (r[key] == "", -r[key] if r[key] != "" and sweep.maximize else r[key] or 0))
    header = ["trial", "state", *sweep.parameters, key, "run folder"]
    with open(folder / "leaderboard.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    md = markdown_table(header, [[str(r[h]) for h in header] for r in rows])
    (folder / "leaderboard.md").write_text(f"# Sweep {sweep.name} ({sweep.method}, {sweep.goal} {sweep.metric})\n\n"
                                           f"{md}\n")
    _plot(rows, sweep, folder)
    return rows


def _plot(rows: list[dict], sweep: Sweep, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"best {sweep.metric}"
    done = [r for r in rows if r[key] != ""]
    params = list(sweep.parameters)
    fig, axes = plt.subplots(1, len(params), figsize=(3.6 * len(params), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        xs = [r[p] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        pos = xs if numeric else [str(x) for x in xs]
        ax.scatter(pos, [r[key] for r in done], c=["C3" if r["state"] == "PRUNED" else "C0" for r in done])
        if numeric and sweep.parameters[p].get("distribution", "").startswith(("log", "q_log")):
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.name}: {len(done)} trials (red: pruned)")
    fig.tight_layout()
    fig.savefig(folder / "metric_vs_params.png", dpi=90)
    plt.close(fig)


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
        from .train import train

        run = wandb.init(group=sweep.name)
        values = {k: run.config[k] for k in sweep.parameters if k in run.config}
        overrides = [*sweep.fixed, *(_override(k, v) for k, v in values.items()), f"run.root={folder}",
                     f"run.name=trial-{run.id}", "logger.wandb=true", "logger.wandb_mode=online",
                     f"logger.wandb_project={project}", f"logger.wandb_group={sweep.name}"]
        train(load_config(sweep.experiment, overrides))

    wandb.agent(sweep_id, function=trial, count=count, project=project)
    return sweep_id
