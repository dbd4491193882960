"""What a W&B user finds in a run, read from the offline run files, so that a renamed key
cannot silently break a dashboard: the config, every loss part, each optimiser's learning rate,
validation Dice per structure, folding and ICE, the image and Grad-CAM panels, Table 2 as a table,
the benchmark figures, the final checkpoint as an artifact; one W&B run across resume and benchmark."""

from __future__ import annotations

import pytest

from fire_lightning.cli import main
from fire_lightning.losses import FIRELoss

from .conftest import PHANTOM2D
from .wandb_records import run_contents

pytest.importorskip("wandb")


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    from .conftest import TINY

    root = tmp_path_factory.mktemp("wb") / "runs"
    common = [*TINY, f"run.root={root}", "run.name=w", "logger.wandb=true", "logger.wandb_mode=offline",
              "logger.wandb_group=sweep-x", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=2",
              "data.samples_per_epoch=4", "explain.every_n_epochs=1", "model.affine.fine_passes=0"]
    assert main(["train", str(PHANTOM2D), *common, "trainer.max_steps=2"]) == 0
    run = root / "w"
    assert main(["train", "--resume", str(run), "trainer.max_steps=4"]) == 0
    assert main(["benchmark", str(run), "--no-ants"]) == 0
    return run, run_contents(run)


def test_one_w_and_b_run_across_resume_and_benchmark(wandb_run):
    run, c = wandb_run
    assert c["ids"] == {(run / "wandb_run_id").read_text().strip()}


def test_the_config_is_there(wandb_run):
    _, c = wandb_run
    assert {"model", "data", "optim", "trainer"} <= c["config"]


def test_every_loss_part_and_each_learning_rate(wandb_run):
    _, c = wandb_run
    h = c["history"]
    for part in FIRELoss._fields:
        assert f"train/loss_{part}" in h and f"val/loss_{part}" in h, part
    for group in ("T_af", "T_nr", "G_F"):
        assert f"lr/{group}" in h


def test_validation_dice_per_structure_folding_ice_and_panels(wandb_run):
    _, c = wandb_run
    h = c["history"]
    for key in ("val/dice_CSF", "val/dice_GM", "val/dice_WM", "val/dice_mean", "val/folding_pct", "val/ice_mm",
                "val/affine_err_mm", "val/affine_rotation_corr"):
        assert key in h, key
    assert "images" in h["val/registration/_type"][0]
    assert any(k.startswith("gradcam/") and k.endswith("/_type") for k in h)


def test_table_2_figures_summary_and_the_checkpoint_artifact(wandb_run):
    _, c = wandb_run
    h = c["history"]
    assert '"table-file"' in h["test/table2/_type"][0] and "test/table4/_type" in h
    assert "test/figures/dice_boxplot/_type" in h and "test/figures/example/_type" in h
    assert "test/FIRE/dice_mean" in c["summary"]
    # one version of the run's model artifact per training session (the first, then the resumed one)
    assert [name for kind, name in c["artifacts"] if kind == "model"] == [f"model-{next(iter(c['ids']))}"] * 2
