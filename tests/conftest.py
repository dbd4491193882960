"""Shared fixtures: CPU only, tiny configs, everything under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

ROOT = Path(__file__).resolve().parent.parent
PHANTOM2D = ROOT / "experiments" / "phantom2d.yaml"

# Overrides that make any experiment tiny and quick on a CPU.
TINY = [
    "model.width=4",
    "model.n_res=1",
    "model.affine_channels=[8,8,8]",
    "model.affine_hidden=8",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.n_val_images=1",
    "data.val_transforms_per_image=2",
    "data.n_test_images=1",
    "data.test_transforms_per_image=2",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.num_threads=0",
    "logger.tensorboard=false",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return TINY + [f"run.root={tmp_path / 'runs'}"]
