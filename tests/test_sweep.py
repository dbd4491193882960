"""``fire sweep``: a W&B-format sweep file mapped onto an Optuna study, every trial an
ordinary run folder, a leaderboard and a plot, and a sweep that is killed and started again goes on
where it stopped without running a trial twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fire_lightning.cli import main
from fire_lightning.config import ConfigError
from fire_lightning.sweep import load_sweep, suggest

from .conftest import PHANTOM2D, ROOT, TINY

optuna = pytest.importorskip("optuna")


def _sweep_file(tmp_path: Path, **changes) -> Path:
    spec = {"name": "tiny", "method": "random", "metric": {"name": "val/dice_mean", "goal": "maximize"},
            "parameters": {"optim.lr_affine": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2},
                           "model.affine.passes": {"values": [1, 2]}},
            "run_cap": 2,
            "command": ["fire", "train", str(PHANTOM2D), *TINY, "trainer.max_steps=8", "trainer.val_every_n_steps=4",
                        "trainer.checkpoint_every_n_steps=2", "trainer.num_threads=1", "data.samples_per_epoch=1000",
                        "explain.every_n_epochs=0", "model.affine.fine_passes=0", "logger.csv=false",
                        "logger.image_every_n_val=0", "${args_no_hyphens}"]}
    spec.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_example_sweeps_parse():
    for f in sorted((ROOT / "experiments" / "sweeps").glob("*.yaml")):
        s = load_sweep(f)
        assert s.metric == "val/dice_mean" and s.maximize and s.parameters, f


@pytest.mark.parametrize("change, message", [
    ({"method": "annealing"}, "method must be one of"),
    ({"metric": {"goal": "maximize"}}, "metric needs a name"),
    ({"parameters": {"model.widht": {"values": [4]}}}, "model.widht"),
    ({"method": "grid"}, "a grid sweep takes values"),
    ({"parameters": {"model.synthesis.width": {"distribution": "beta", "min": 1, "max": 2}}}, "not supported"),
    ({"command": ["fire", "train"]}, "one experiment YAML"),
    ({"command": ["fire", "train", str(PHANTOM2D), "trainer.devices=2"]}, "one worker per GPU"),
])
def test_a_bad_sweep_file_is_an_error_that_names_the_problem(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_sweep_file(tmp_path, **change))


def test_w_and_b_distributions_map_onto_optuna(tmp_path):
    s = load_sweep(_sweep_file(tmp_path, parameters={
        "optim.lr_affine": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "model.synthesis.width": {"min": 4, "max": 16}, "optim.grad_clip": {"min": 0.5, "max": 2.0},
        "model.affine.channels": {"values": [[8, 8, 8], [16, 16, 16]]}, "model.synthesis.n_res": {"value": 1}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        t = study.ask()
        v = suggest(t, s)
        assert 1e-4 <= v["optim.lr_affine"] <= 1e-2
        assert isinstance(v["model.synthesis.width"], int) and 4 <= v["model.synthesis.width"] <= 16
        assert 0.5 <= v["optim.grad_clip"] <= 2.0 and v["model.synthesis.n_res"] == 1
        assert v["model.affine.channels"] in ("[8,8,8]", "[16,16,16]")
        study.tell(t, 0.0)
    dists = study.trials[0].distributions
    assert dists["optim.lr_affine"].log and isinstance(dists["model.synthesis.width"],
                                                       optuna.distributions.IntDistribution)


def test_a_killed_sweep_resumes_its_trial_and_runs_no_trial_twice(tmp_path):
    sweep, out = _sweep_file(tmp_path), tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fire_lightning.cli", "sweep", str(sweep), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first = out / "trial-000" / "checkpoints"
    deadline = time.time() + 240
    try:
        while not list(first.glob("iter*.ckpt")):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL in the middle of trial 0
        proc.communicate()
    kept = {p.name: p.stat().st_mtime_ns for p in first.glob("iter*.ckpt")}
    assert not (out / "trial-001").exists()

    assert main(["sweep", str(sweep), "--out", str(out)]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1]  # trial 0 finished, not replaced by a new one
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value is not None for t in trials)
    assert trials[0].params != trials[1].params
    for name, mtime in kept.items():  # resumed from its checkpoints, not started again
        assert (first / name).stat().st_mtime_ns == mtime
    assert (first / "iter8.ckpt").is_file()
    saved = yaml.safe_load((out / "trial-000" / "config.yaml").read_text())
    assert saved["optim"]["lr_affine"] == pytest.approx(trials[0].params["optim.lr_affine"])

    board = (out / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 3 and board[0].startswith("trial,state,optim.lr_affine,model.affine.passes,best val/dice_mean")
    best = max(trials, key=lambda t: t.value)
    assert board[1].startswith(f"{best.number},COMPLETE")
    assert "trial-00" in (out / "leaderboard.md").read_text() and (out / "metric_vs_params.png").stat().st_size > 0

    assert main(["sweep", str(sweep), "--out", str(out)]) == 0  # run_cap reached: nothing more
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}").get_trials()) == 2


def test_the_pruner_stops_a_weak_trial_after_a_validation(tmp_path):
    from types import SimpleNamespace

    import torch

    from fire_lightning.sweep import ReportToTrial

    s = load_sweep(_sweep_file(tmp_path))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    report = ReportToTrial(trial, s)
    module = SimpleNamespace(iteration=4, cfg=SimpleNamespace(trainer=SimpleNamespace(val_every_n_steps=4)))
    trainer = SimpleNamespace(sanity_checking=False, should_stop=False,
                              callback_metrics={"val/dice_mean": torch.tensor(0.7)})
    report.on_validation_end(trainer, module)
    assert not trainer.should_stop and report.best == pytest.approx(0.7)
    module.iteration, trainer.callback_metrics["val/dice_mean"] = 8, torch.tensor(0.3)
    report.on_validation_end(trainer, module)
    assert trainer.should_stop and report.pruned and report.best == pytest.approx(0.7)  # best so far, not last
    assert study.trials[0].intermediate_values == {1: pytest.approx(0.7), 2: pytest.approx(0.3)}


def test_the_w_and_b_backend_creates_the_sweep_and_trains_each_agent_trial(tmp_path, monkeypatch):
    import types

    from fire_lightning import sweep as sweep_mod
    from fire_lightning import train as train_mod

    calls, trained = {}, []
    run = types.SimpleNamespace(id="abc123", config={"optim.lr_affine": 0.005, "model.affine.passes": 2})
    fake = types.SimpleNamespace(
        sweep=lambda config, project: calls.setdefault("sweep", (config, project)) and "sw1",
        agent=lambda sweep_id, function, count, project: [function() for _ in range(count)],
        init=lambda group: calls.setdefault("group", group) and run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(train_mod, "train", lambda cfg: trained.append(cfg))
    s = load_sweep(_sweep_file(tmp_path))
    assert sweep_mod.run_wandb(s, tmp_path / "sw", None, 1, "proj") == "sw1"
    config, project = calls["sweep"]
    assert project == "proj" and config["method"] == "random" and config["metric"]["name"] == "val/dice_mean"
    assert set(config["parameters"]) == {"optim.lr_affine", "model.affine.passes"} and calls["group"] == "tiny"
    (cfg,) = trained
    assert cfg.optim.lr_affine == 0.005 and cfg.model.affine.passes == 2 and cfg.trainer.max_steps == 8
    assert cfg.logger.wandb and cfg.logger.wandb_group == "tiny" and cfg.run.name == "trial-abc123"
