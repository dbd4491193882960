"""Runs that survive preemption: SIGTERM / SIGUSR1 save and exit 143, kill -9 loses at most one
checkpoint interval, a corrupt last.ckpt is named and an earlier checkpoint offered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fire_lightning.cli import main

from .conftest import PHANTOM2D, TINY

EVERY = 4  # checkpoint interval (iterations)


@pytest.fixture
def started():
    """Training subprocesses, killed at the end of the test whatever happened."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _start(tmp_path: Path, started: list) -> tuple[subprocess.Popen, Path]:
    root = tmp_path / "runs"
    argv = [sys.executable, "-m", "fire_lightning.cli", "train", str(PHANTOM2D), *TINY, f"run.root={root}",
            "run.name=pre", "trainer.max_steps=100000", f"trainer.checkpoint_every_n_steps={EVERY}",
            "trainer.val_every_n_steps=100000", "data.samples_per_epoch=100000", "logger.csv=false",
            "trainer.num_threads=1", "explain.every_n_epochs=0", "model.affine.fine_passes=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    started.append(proc)
    return proc, root / "pre"


def _wait_for_checkpoints(proc: subprocess.Popen, run: Path, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(list((run / "checkpoints").glob("iter*.ckpt"))) < n:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint in time")
        time.sleep(0.2)


def _iteration(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]) // 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_scheduler_signal_saves_the_state_and_exits_143_and_the_run_resumes(sig, tmp_path, started):
    proc, run = _start(tmp_path, started)
    _wait_for_checkpoints(proc, run, 1)
    time.sleep(0.5)  # somewhere after the first checkpoint
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("fire: ")]
    assert len(lines) == 1 and "stopped by a signal at iteration" in lines[0] and "--resume" in lines[0]
    stopped = int(lines[0].split("at iteration ")[1].split(";")[0])
    last = run / "checkpoints" / "last.ckpt"
    assert _iteration(last) == stopped >= EVERY  # the state after the last finished iteration, not the periodic one
    assert main(["train", "--resume", str(run), f"trainer.max_steps={stopped + 2}"]) == 0
    assert _iteration(last) == stopped + 2  # continued from there


def test_after_kill_9_resume_loses_at_most_one_checkpoint_interval(tmp_path, started):
    proc, run = _start(tmp_path, started)
    _wait_for_checkpoints(proc, run, 2)
    proc.kill()  # SIGKILL: no handler runs (possibly in the middle of writing a checkpoint)
    proc.communicate(timeout=60)
    last = run / "checkpoints" / "last.ckpt"
    reached = max(int(p.stem[len("iter"):]) for p in (run / "checkpoints").glob("iter*.ckpt"))
    kept = _iteration(last)
    assert reached - EVERY <= kept <= reached + 1  # at most one checkpoint interval lost
    assert main(["train", "--resume", str(run), f"trainer.max_steps={kept + 1}"]) == 0
    assert _iteration(last) == kept + 1


def test_a_corrupt_last_checkpoint_is_named_and_the_newest_good_one_offered(tmp_path, tiny_overrides, capsys):
    assert main(["train", str(PHANTOM2D), *tiny_overrides, "run.name=c", "trainer.max_steps=4",
                 "trainer.checkpoint_every_n_steps=2", "trainer.val_every_n_steps=100"]) == 0
    run = tmp_path / "runs" / "c"
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # half-written, as after a crash during the save
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "trainer.max_steps=6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(last) in err[0] and "unreadable" in err[0] and "iter" in err[0], err
    offered = err[0].split("newest periodic checkpoint is ")[1].split(":")[0]
    assert Path(offered).is_file() and _iteration(Path(offered)) >= 2
    assert last.read_bytes() == data[: len(data) // 3]  # nothing changed


def test_train_without_a_config_or_a_run_to_resume_is_a_one_line_error(capsys):
    assert main(["train", "trainer.max_steps=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs an experiment config" in err[0]


def _curves(run: Path) -> tuple[dict, dict, dict]:
    """Training loss by iteration, the logging step of each iteration, validation loss by step."""
    import csv

    loss, step, val = {}, {}, {}
    for r in csv.DictReader(open(run / "csv" / "metrics.csv")):
        if r.get("train/loss_total"):
            it = int(float(r["train/iteration"]))
            assert it not in loss, f"iteration {it} logged twice"
            loss[it], step[it] = float(r["train/loss_total"]), int(r["step"])
        if r.get("val/loss_total"):
            val[int(r["step"])] = float(r["val/loss_total"])
    return loss, step, val


def test_a_resumed_run_continues_the_loss_curve_of_an_uninterrupted_one(tmp_path, tiny_overrides):
    """20 iterations at once against 10 + --resume 10. The resumed part draws other random pairs (the
    RNG is reseeded by progress), so its losses are compared as a mean, against how far the loss
    moves in that time: a run that restarted from scratch, lost its optimiser state or its log would
    fail. The first half is the same run, and the CSV keeps one row per iteration on one x axis."""
    common = [*tiny_overrides, "trainer.val_every_n_steps=10", "trainer.checkpoint_every_n_steps=10",
              "trainer.log_every_n_steps=1", "explain.every_n_epochs=0", "model.affine.fine_passes=0",
              "logger.image_every_n_val=0", "data.samples_per_epoch=1000", "trainer.num_threads=1",
              "optim.lr_decay=none"]  # "stop at 10, then extend to 20" changes a decay's length (a preempted
    # run keeps its max_steps; the decay across a resume is tested in test_training)
    assert main(["train", str(PHANTOM2D), *common, "run.name=once", "trainer.max_steps=20"]) == 0
    assert main(["train", str(PHANTOM2D), *common, "run.name=twice", "trainer.max_steps=10"]) == 0
    assert main(["train", "--resume", str(tmp_path / "runs" / "twice"), "trainer.max_steps=20"]) == 0
    (a, a_step, a_val), (b, b_step, b_val) = (_curves(tmp_path / "runs" / n) for n in ("once", "twice"))
    assert sorted(a) == sorted(b) == list(range(1, 21))  # the log before the interruption is kept
    assert a_step == b_step and sorted(a_val) == sorted(b_val) == [9, 19]  # one x axis
    assert [b[i] for i in range(1, 11)] == pytest.approx([a[i] for i in range(1, 11)], rel=1e-4)

    def mean(c, lo, hi):
        return sum(c[i] for i in range(lo, hi + 1)) / (hi - lo + 1)

    moved = mean(a, 1, 10) - mean(a, 11, 20)
    assert moved > 0  # the loss falls
    assert abs(mean(b, 11, 20) - mean(a, 11, 20)) < 0.5 * moved
    assert b_val[9] == pytest.approx(a_val[9], rel=1e-4)
    assert abs(b_val[19] - a_val[19]) < 0.5 * (a_val[9] - a_val[19])
