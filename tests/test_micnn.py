"""The MI-CNN (``model.name: micnn``): its network, its config, that it learns, and that registration and the
benchmark (``--compare``) take its checkpoints as they take FIRE's."""

from __future__ import annotations

import json
import math

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from fire_lightning import spatial
from fire_lightning.cli import main
from fire_lightning.config import ConfigError, load_config
from fire_lightning.inference import InferenceModel, load_model
from fire_lightning.losses import gradient_smoothness, make_similarity, mse, rms
from fire_lightning.micnn_module import MICNNModule
from fire_lightning.module import FIREModule, build_module, load_module
from fire_lightning.nets.micnn import MICNNNet
from fire_lightning.refine import RefineSettings
from fire_lightning.train import train

from .conftest import PHANTOM2D, ROOT, TINY, gen, model_config
from .test_register import _register_cli, _write_pair
from .test_training import _blob, _OnePair

pytestmark = pytest.mark.usefixtures("single_thread")

MICNN2D = ROOT / "experiments" / "phantom2d_micnn.yaml"


def _net(n: int, **micnn) -> MICNNNet:
    m = model_config(name="micnn", nonrigid={"head": "unet", "out_level": 0, "channels": [4, 8, 8]}, micnn=micnn)
    return MICNNNet(n, m)


@pytest.mark.parametrize("n", [2, 3])
def test_the_network_gives_a_field_on_the_image_grid_and_the_identity_at_first(n):
    torch.manual_seed(0)
    net = _net(n)
    shape = (16, 20) if n == 2 else (16, 12, 8)
    x_m, x_f = (torch.rand(2, 1, *shape, generator=gen(s)) * 2 - 1 for s in (1, 2))
    t = net(x_m, x_f)
    assert t.nr_feat.shape == t.disp_nr.shape == (2, n, *shape)  # out_level 0: the image's grid
    assert t.theta.shape == (2, n, n + 1) and torch.equal(t.theta, spatial.identity_affine(2, n))  # init identity
    assert torch.equal(t.disp_nr, torch.zeros_like(t.disp_nr))  # zero-initialised last convolution
    assert torch.equal(spatial.warp(x_m, t.field(shape)), spatial.warp(x_m, torch.zeros(2, n, *shape)))
    assert list(net.parameter_groups()) == ["T_nr"]
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in net.unet.parameters())


def test_the_pre_alignment_starts_from_the_moments_and_then_raises_mi():
    """An elongated blob rotated by 25°, which the moments' per-axis scaling cannot undo: the MI steps do."""
    shape = (48, 48)
    fixed = _blob(shape, (0.0, 0.0), (0.5, 0.25))[None]
    angle = math.radians(25)
    true = torch.tensor([[[math.cos(angle), -math.sin(angle), 0.1], [math.sin(angle), math.cos(angle), -0.05]]])
    moving = spatial.warp(fixed, spatial.affine_to_displacement(spatial.invert_affine(true), shape))
    mi = make_similarity("mi", 2)

    def loss(theta):
        return mi(spatial.warp(moving, spatial.affine_to_displacement(theta, shape)), fixed).item()

    moments, stepped = _net(2, affine_steps=0), _net(2, affine_steps=30, affine_lr=0.03)
    moments.affine_init = stepped.affine_init = "scale"
    start = moments.prealign(moving, fixed)
    assert torch.allclose(start, spatial.moments_affine(moving, fixed, (1.0, 1.0), "scale"))
    theta = stepped.prealign(moving, fixed)
    assert not theta.requires_grad
    assert loss(true) - 0.05 < loss(theta) < loss(start) - 0.2 and loss(start) < mi(moving, fixed).item()


def test_the_gradient_term_is_the_mean_squared_voxel_gradient():
    shape = (8, 10)
    assert gradient_smoothness(torch.full((1, 2, *shape), 0.3), shape).item() == 0  # a translation is free
    # u_0 = c × (voxel index along axis 0), in voxels: its gradient is c along axis 0
    c = 0.2
    u_vox = torch.zeros(1, 2, *shape)
    u_vox[:, 0] = c * torch.arange(shape[0], dtype=torch.float32)[:, None]
    u = spatial.voxel_to_normalised(u_vox)
    assert gradient_smoothness(u, shape).item() == pytest.approx(c**2, rel=1e-5)
    # the same deformation produced on a grid twice as coarse costs the same
    assert gradient_smoothness(u[:, :, ::2, ::2], shape).item() == pytest.approx(c**2, rel=1e-5)
    a, b = torch.rand(2, 1, 4, 4, generator=gen(0)), torch.rand(2, 1, 4, 4, generator=gen(1))
    assert mse(a, b).item() == pytest.approx((a - b).pow(2).mean().item()) and mse(a, a).item() == 0
    assert make_similarity("mse", 2) is mse


def test_model_name_is_validated_and_the_micnn_needs_its_unet():
    with pytest.raises(ConfigError, match="model.name must be one of .*did you mean 'micnn'"):
        load_config(PHANTOM2D, ["model.name=micnm"])
    with pytest.raises(ConfigError, match="model.nonrigid.head=unet"):
        load_config(None, ["model.name=micnn"])
    with pytest.raises(ConfigError, match="affine_warmup_steps"):
        load_config(PHANTOM2D, ["model.name=micnn"])  # the demo's FIRE warms up its affine stage
    with pytest.raises(ConfigError, match="model.micnn"):
        load_config(MICNN2D, ["model.micnn.affine_steps=-1"])
    with pytest.raises(ConfigError, match="adversarial"):
        load_config(MICNN2D, ["model.adversarial=true"])
    assert load_config(PHANTOM2D).model.name == "fire"  # FIRE stays the default
    with pytest.raises(ConfigError, match="model.name=fire"):
        FIREModule(load_config(MICNN2D))


def test_the_micnn_experiment_trains_on_the_demos_data_with_the_demos_budget():
    micnn, demo = load_config(MICNN2D), load_config(PHANTOM2D)
    assert micnn.model.name == "micnn" and micnn.model.loss.similarity == "mi"
    assert OmegaConf.to_container(micnn.data) == OmegaConf.to_container(demo.data)
    assert micnn.trainer.max_steps == demo.trainer.max_steps == 2000
    assert micnn.model.affine.init == demo.model.affine.init  # the same moments start
    assert isinstance(build_module(micnn), MICNNModule)


def test_the_micnn_learns_to_register_a_synthetic_pair():
    """The U-Net alone (no pre-alignment: identity start, no affine steps) brings the warped image towards the
    fixed one within a few hundred iterations of the real module, on MI and the gradient term."""
    torch.manual_seed(0)
    shape = (32, 32)
    fixed = _blob(shape, (0.0, 0.0), (0.45, 0.3))
    moving = _blob(shape, (0.1, -0.08), (0.38, 0.34))
    cfg = load_config(None, ["model.name=micnn", "model.nonrigid.head=unet", "model.nonrigid.out_level=0",
                             "model.nonrigid.channels=[8,16,16]", "model.loss.similarity=mi", "data.size=[32,32]",
                             "data.spacing=1.0", "model.micnn.smooth_weight=0.1", "optim.lr_nonrigid=3e-3"])
    module = MICNNModule(cfg)
    iters = 200
    trainer = L.Trainer(max_steps=iters * module.n_optimizers, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(_OnePair(moving, fixed, iters), batch_size=1))
    assert module.iteration == iters and module.n_optimizers == 1
    module.eval()
    reg = module.register(moving[None], fixed[None])
    before, after = rms(moving[None], fixed[None]).item(), rms(reg["warped"], fixed[None]).item()
    assert after < 0.6 * before, (before, after)


@pytest.mark.slow
def test_a_short_micnn_training_raises_the_validation_dice_above_unaligned(tmp_path):
    """On the phantom's pairs, without any pre-alignment (identity start, no affine steps), a short training of
    a small MI-CNN lifts the validation Dice above the unaligned pairs': the U-Net alone registers."""
    cfg = load_config(MICNN2D, [*TINY, f"run.root={tmp_path}", "model.affine.init=identity",
                                "model.micnn.affine_steps=0", "model.nonrigid.channels=[8,16,16,16]",
                                "data.n_val_images=2", "data.val_transforms_per_image=4", "data.batch_size=4",
                                "data.augment.rotate_deg=5", "trainer.max_steps=150", "trainer.val_every_n_steps=150",
                                "trainer.checkpoint_every_n_steps=150", "data.samples_per_epoch=600"])
    result = train(cfg)
    m = result["metrics"]
    assert m["val/dice_mean"] > m["val/dice_unaligned_mean"] + 0.05, m  # about +0.14 measured
    assert m["val/folding_pct"] < 1.0


def _checkpoint(path, experiment, overrides=()):
    """An untrained tiny model saved as ``fire train`` saves it; the MI-CNN's field layer given small random
    weights, so that its field is not the identity."""
    cfg = load_config(experiment, [*TINY, *overrides])
    torch.manual_seed(0)
    module = build_module(cfg)
    if isinstance(module, MICNNModule):
        with torch.no_grad():
            head = module.net.unet.head
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen(1)) * 0.05)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__, "global_step": 3 * module.n_optimizers}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"micnn": _checkpoint(d / "micnn.ckpt", MICNN2D, ["model.nonrigid.channels=[4,8,8]",
                                                            "model.micnn.affine_steps=2"]),
            "fire": _checkpoint(d / "fire.ckpt", PHANTOM2D)}


def test_a_micnn_checkpoint_loads_for_inference_and_registers_as_its_training_module(ckpts):
    light, full = load_model(ckpts["micnn"]), load_module(ckpts["micnn"]).eval()
    assert isinstance(light, InferenceModel) and isinstance(light.net, MICNNNet) and isinstance(full, MICNNModule)
    assert light.iteration == 3
    size = tuple(full.cfg.data.size)
    x_m, x_f = (torch.rand(1, 1, *size, generator=gen(s)) * 2 - 1 for s in (3, 4))
    a, b = light.register(x_m, x_f), full.register(x_m, x_f)
    for key in ("theta", "field", "warped"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["field"], spatial.affine_to_displacement(a["theta"], size))  # a non-rigid part
    refined = light.register(x_m, x_f, refine=RefineSettings(steps=2))
    assert not torch.equal(refined["field"], a["field"])
    assert light.inference_passes() == {"nonrigid_passes_eval": 1}
    with pytest.raises(ValueError, match="no learned affine stage"):
        light.set_inference_key("affine.passes_eval", 2)


def test_benchmark_compare_scores_a_micnn_checkpoint_beside_fire(ckpts, tmp_path):
    out = tmp_path / "bm"
    assert main(["benchmark", str(ckpts["fire"]), "--compare", str(ckpts["micnn"]), "--no-ants", "--max-pairs", "1",
                 "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["True", "True-Affine", "Unaligned", "FIRE-Affine", "FIRE", "MI-CNN-Affine",
                                        "MI-CNN"]
    micnn = results["methods"]["MI-CNN"]
    assert len(micnn["dice_mean"]["values"]) == 1 and len(micnn["seconds_per_pair"]["values"]) == 1
    assert "affine_err_mm" in results["methods"]["MI-CNN-Affine"] and "ice_mm" in micnn
    assert "MI-CNN" in results["nonrigid_share"] and "FIRE vs MI-CNN" in results["paired"]
    assert results["meta"]["compare"] == {"micnn": str(ckpts["micnn"])} and results["meta"]["model"] == "FIRE"
    assert "| MI-CNN |" in (out / "results.md").read_text()


def test_fire_register_registers_nifti_files_with_a_micnn_checkpoint(ckpts, tmp_path):
    pair = _write_pair(tmp_path / "pair", 2)
    out = _register_cli(ckpts["micnn"], pair, tmp_path, 2, extra=("--refine", "2"))
    warped, fixed = nib.load(out["out"]), nib.load(pair["fixed"])
    assert warped.shape == fixed.shape and np.allclose(warped.affine, fixed.affine)
    assert out["field"].is_file() and out["affine"].is_file() and out["out_labels"].is_file()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny MI-CNN run and a tiny FIRE run on the same phantom data (two iterations each)."""
    root = tmp_path_factory.mktemp("runs")
    common = [*TINY, f"run.root={root}", "trainer.max_steps=2", "trainer.val_every_n_steps=1000",
              "data.samples_per_epoch=8"]
    assert main(["train", str(MICNN2D), *common, "model.nonrigid.channels=[4,8,8]", "model.micnn.affine_steps=2",
                 "run.name=micnn"]) == 0
    assert main(["train", str(PHANTOM2D), *common, "run.name=fire"]) == 0
    return {"micnn": root / "micnn", "fire": root / "fire"}


@pytest.mark.slow
def test_trained_runs_compare_evaluate_and_refine_from_the_command_line(runs, tmp_path, capsys):
    out = tmp_path / "bm"
    assert main(["benchmark", str(runs["fire"]), "--compare", str(runs["micnn"]), "--no-ants", "--max-pairs", "2",
                 "--threads", "1", "--refine", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["True", "True-Affine", "Unaligned", "FIRE-Affine", "FIRE", "FIRE+IO",
                                        "MI-CNN-Affine", "MI-CNN", "MI-CNN+IO"]
    micnn = results["methods"]["MI-CNN"]
    assert len(micnn["dice_mean"]["values"]) == 2 and len(micnn["seconds_per_pair"]["values"]) == 2
    assert "affine_err_mm" in results["methods"]["MI-CNN-Affine"] and "ice_mm" in micnn
    assert {"MI-CNN", "MI-CNN+IO"} <= set(results["nonrigid_share"])
    assert "FIRE vs MI-CNN" in results["paired"]
    assert results["meta"]["compare"] == {"micnn": str(runs["micnn"] / "checkpoints" / "last.ckpt")}
    assert "| MI-CNN |" in (out / "results.md").read_text()
    # a run of a model already in the table is told apart by its run's name; an MI-CNN run is benchmarked alone
    assert main(["benchmark", str(runs["fire"]), "--compare", str(runs["fire"]), "--no-ants", "--max-pairs", "1",
                 "--threads", "1", "--out", str(tmp_path / "self")]) == 0
    assert "FIRE (fire)" in json.loads((tmp_path / "self" / "results.json").read_text())["methods"]
    assert main(["evaluate", str(runs["micnn"])]) == 0
    alone = json.loads((runs["micnn"] / "results.json").read_text())
    assert list(alone["methods"]) == ["True", "True-Affine", "Unaligned", "MI-CNN-Affine", "MI-CNN"]
    assert alone["meta"]["model"] == "MI-CNN"
    capsys.readouterr()
    assert main(["benchmark", str(runs["micnn"]), "--no-ants", "--explain"]) == 2
    assert "Grad-CAM" in capsys.readouterr().err
