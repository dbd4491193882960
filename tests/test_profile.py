"""`fire profile`: the loader, the training step and inference measured apart, a table and JSON."""

from __future__ import annotations

import json

import pytest

from fire_lightning.cli import main
from fire_lightning.config import load_config
from fire_lightning.profiling import Phase, profile

from .conftest import PHANTOM2D

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fire_profile_measures_each_part_writes_json_and_names_the_bound(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "prof" / "p.json"
    rc = main(["profile", str(PHANTOM2D), *tiny_overrides, "optim.affine_warmup_steps=100", "--steps", "4",
               "--warmup-steps", "2", "--loader-batches", "3", "--inference-pairs", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| FIRE iteration |" in printed and "| affine warm-up iteration |" in printed and "bound by" in printed
    d = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("| what | measured |")
    assert d["fire"]["iterations"] == 4 and d["warmup"]["iterations"] == 2  # the skipped first ones left out
    assert d["loader_samples_per_s"] > 0 and d["inference_ms_per_pair"] > 0 and d["peak_memory_gib"] > 0.05
    assert d["fire"]["step_s"] > 0 and d["fire"]["data_s"] >= 0 and d["bound"] in ("data", "compute")
    assert d["batch_size"] == 2 and d["device"].startswith("CPU")


def test_without_a_warm_up_only_fire_iterations_are_measured_and_checkpointing_saves_less(tiny_overrides):
    cfg = load_config(PHANTOM2D, tiny_overrides)
    p = profile(cfg, steps=3, loader_batches=2, inference_pairs=1, skip=1)
    assert p.warmup is None and p.fire.iterations == 3 and p.saved_for_backward_gib > 0
    ckpt = profile(load_config(PHANTOM2D, [*tiny_overrides, "model.checkpoint_activations=true"]), steps=1,
                   loader_batches=1, inference_pairs=1, skip=1)
    assert ckpt.saved_for_backward_gib < 0.7 * p.saved_for_backward_gib


def test_a_phase_takes_medians_so_one_slow_iteration_does_not_move_it():
    p = Phase.of([(0.01, 0.1), (0.01, 0.1), (5.0, 9.0)])
    assert (p.step_s, p.data_s, p.iterations) == (0.1, 0.01, 3) and p.step_mean_s > 3
    assert p.its_per_s == pytest.approx(1 / 0.11)
    assert Phase.of([]) is None
