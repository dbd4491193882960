"""The Optuna backend of ``fire sweep``: the sweep file as an Optuna study (sampler, pruner, suggested
values), one trial as one training run, and the resumption of trials whose worker died."""

from __future__ import annotations

import fcntl
import logging
import math
from pathlib import Path

import lightning as L

from ..config import ConfigError, load_config
from .leaderboard import write_leaderboard
from .sweep_file import Sweep, as_override, check_distribution, choices

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ Optuna
def _sampler(sweep: Sweep, seed: int | None):
    import optuna

    if sweep.method == "grid":
        space = {k: choices(s) if "values" in s else [s["value"]] for k, s in sweep.parameters.items()}
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
        dist = check_distribution(sweep.path, key, spec, sweep.method)
        if dist == "constant":
            values[key] = spec["value"]
        elif dist == "categorical":
            values[key] = trial.suggest_categorical(key, choices(spec))
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
    overrides = [*sweep.fixed, *(as_override(k, v) for k, v in values.items()), f"run.root={folder}",
                 f"run.name=trial-{number:03d}", f"logger.wandb_group={sweep.name}"]
    return load_config(sweep.experiment, overrides), overrides


def _train_trial(trial, sweep: Sweep, folder: Path, values: dict, resume: bool) -> float:
    import optuna

    from ..train import train

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
