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
    "model.synthesis.width=4",
    "model.synthesis.n_res=1",
    "model.affine.channels=[8,8,8]",
    "model.affine.hidden=8",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.n_val_images=1",
    "data.val_transforms_per_image=2",
    "data.n_test_images=1",
    "data.test_transforms_per_image=2",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.num_threads=0",
    "optim.affine_warmup_steps=0",  # the demo config warms T_af up for 600 iterations (tested on its own)
    "logger.tensorboard=false",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return TINY + [f"run.root={tmp_path / 'runs'}"]


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP oversubscription on a busy machine
    (10-100x faster there); the previous setting is restored afterwards. A test module opts
    in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def model_config(**sections):
    """A :class:`schema.ModelConfig` from the ``model`` section's keys, its sections as dicts:
    ``model_config(synthesis={"width": 2}, affine={"passes": 3}, adversarial=True)``."""
    from fire_lightning.schema import ModelConfig, from_dict

    return from_dict(sections, ModelConfig, "model.")


def gen(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def assert_pair_batch(b: dict, batch: int, shape) -> None:
    """``b`` is a batch of registration pairs as every data module yields them (data_modules/loading.py)."""
    for k in ("moving", "fixed"):
        assert b[k].shape == (batch, 1, *shape) and b[k].dtype == torch.float32
        assert b[k].min() >= -1 and b[k].max() <= 1 and b[k].max() > 0
    for k in ("moving_label", "fixed_label"):
        assert b[k].shape == (batch, 1, *shape) and b[k].dtype == torch.int64
    assert isinstance(b["id"], list) and len(b["id"]) == batch and isinstance(b["id"][0], str)
