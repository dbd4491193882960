"""Training: the CLI through the real config, learning on a synthetic pair, resuming."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fire_lightning import spatial
from fire_lightning.cli import main
from fire_lightning.config import ConfigError, load_config
from fire_lightning.losses import rms
from fire_lightning.metrics import folding_percent
from fire_lightning.module import FIREModule, lr_factor
from fire_lightning.train import train

from .conftest import PHANTOM2D


def test_fire_train_fast_dev_run_through_the_real_config(tiny_overrides, tmp_path, capsys):
    rc = main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides])
    assert rc == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    saved = load_config(run / "config.yaml")
    assert saved.model.synthesis.width == 4 and saved.trainer.fast_dev_run
    assert "run folder" in capsys.readouterr().out


def test_fire_train_reports_a_misspelt_key_in_one_line(tiny_overrides, capsys):
    rc = main(["train", str(PHANTOM2D), "trainer.max_stepz=3", *tiny_overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "max_stepz" in err[0]


def _blob(shape, centre, radii):
    grid = spatial.identity_grid(shape)[0]
    r2 = sum(((grid[k] - centre[k]) / radii[k]) ** 2 for k in range(len(shape)))
    return torch.tanh(3 * (1 - r2)).unsqueeze(0)  # (1, *S) in [-1, 1], smooth edge


class _OnePair(Dataset):
    def __init__(self, moving, fixed, length):
        self.moving, self.fixed, self.length = moving, fixed, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        lab = torch.zeros_like(self.moving, dtype=torch.long)
        return {"moving": self.moving, "fixed": self.fixed, "moving_label": lab, "fixed_label": lab}


@pytest.mark.usefixtures("single_thread")
def test_a_small_model_learns_to_register_a_synthetic_pair(tmp_path):
    """A few hundred iterations of the real module bring the warped image towards the fixed one."""
    torch.manual_seed(0)
    shape = (32, 32)
    fixed = _blob(shape, (0.0, 0.0), (0.45, 0.3))
    moving = _blob(shape, (0.15, -0.1), (0.35, 0.35))  # shifted, rescaled, anisotropic
    cfg = load_config(None, ["model.synthesis.width=4", "model.synthesis.n_res=1", "model.affine.channels=[8,8,8]",
                             "model.affine.hidden=16", "data.size=[32,32]", "data.spacing=1.0",
                             "optim.lr_affine=5e-3", "optim.lr_nonrigid=5e-3", "optim.lr_synthesis=2e-3"])
    module = FIREModule(cfg)
    iters = 300
    loader = DataLoader(_OnePair(moving, fixed, iters), batch_size=1)
    trainer = L.Trainer(max_steps=iters * module.n_optimizers, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    assert module.iteration == iters
    module.eval()
    reg = module.register(moving[None], fixed[None])
    before = rms(moving[None], fixed[None]).item()
    after = rms(reg["warped"], fixed[None]).item()
    assert after < 0.6 * before, (before, after)
    assert folding_percent(reg["field"]).item() < 1.0


def test_resume_continues_the_step_count(tiny_overrides):
    first = load_config(PHANTOM2D, [*tiny_overrides, "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=2",
                                    "trainer.val_every_n_steps=1000", "data.samples_per_epoch=40"])
    r1 = train(first)
    assert r1["iterations"] == 4
    ckpt = torch.load(r1["checkpoint"], map_location="cpu", weights_only=False)
    n_opt = r1["model"].n_optimizers
    assert ckpt["global_step"] == 4 * n_opt

    # Continue the same run folder to 7 iterations: it must start at 4, not 0.
    from fire_lightning.train import load_run_config

    cfg2 = load_run_config(r1["run_dir"], ["trainer.max_steps=7"])
    r2 = train(cfg2, resume_dir=r1["run_dir"])
    assert r2["iterations"] == 7
    assert r2["model"].global_step == 7 * n_opt
    ckpt2 = torch.load(r2["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt2["global_step"] == 7 * n_opt
    # the optimiser states were carried over (Adam's step counter continues)
    steps = [s["step"] for s in ckpt2["optimizer_states"][0]["state"].values()]
    assert steps and all(int(s) == 7 for s in steps)

    # The CLI: `--resume` with no folder takes the newest run of the experiment, and an
    # override right after it is an override, not a folder name.
    assert main(["train", str(PHANTOM2D), "--resume", "trainer.max_steps=8", *tiny_overrides]) == 0
    ckpt3 = torch.load(r1["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt3["global_step"] == 8 * n_opt
    assert len(list(r1["run_dir"].parent.iterdir())) == 1  # no new run folder


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_overrides, capsys):
    rc = main(["train", str(PHANTOM2D), "--resume", str(tmp_path / "nothing-here"), *tiny_overrides])
    assert rc == 2
    assert "nothing-here" in capsys.readouterr().err


def test_a_non_finite_loss_skips_the_step_and_changes_nothing():
    cfg = load_config(None, ["model.synthesis.width=4", "model.synthesis.n_res=1", "model.affine.channels=[8,8,8]",
                             "data.size=[16,16]", "data.spacing=1.0"])
    module = FIREModule(cfg)
    bad = torch.full((1, 1, 16, 16), float("nan"))
    good = torch.zeros((1, 1, 16, 16))
    iters = 3
    loader = DataLoader(_OnePair(bad[0], good[0], iters), batch_size=1)
    before = {k: v.clone() for k, v in module.state_dict().items() if k != "skipped_steps"}
    trainer = L.Trainer(max_steps=iters * module.n_optimizers, max_epochs=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    assert int(module.skipped_steps) == iters
    assert module.global_step == 0
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fire_train_3d_fast_dev_run(tiny_overrides, tmp_path):
    rc = main(["train", str(PHANTOM2D.parent / "phantom3d.yaml"), "trainer.fast_dev_run=true", *tiny_overrides])
    assert rc == 0
    run = next((tmp_path / "runs").iterdir())
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_fused_adam_makes_the_default_implementations_update_and_takes_over_its_state(tiny_overrides):
    """optim.fused (the default) gives Adam's fused CPU kernel; the same gradients move the weights as
    torch's default Adam does (to float rounding), and a default Adam's state (a checkpoint written
    before the switch) carries on in a fused one."""
    def model(fused: bool) -> FIREModule:
        return FIREModule(load_config(PHANTOM2D, [*tiny_overrides, f"optim.fused={str(fused).lower()}"]))

    plain_model, fused_model = model(False), model(True)
    fused_model.load_state_dict(plain_model.state_dict())
    plain, fused = plain_model.configure_optimizers(), fused_model.configure_optimizers()
    assert [o.defaults["fused"] for o in fused] == [True] * 3 and not any(o.defaults["fused"] for o in plain)
    gen = torch.Generator().manual_seed(0)

    def step(models, opts, times=1) -> float:
        """The same random gradients into each model, each optimiser stepped; the largest move of a weight."""
        start = [p.detach().clone() for p in models[0].parameters()]
        for _ in range(times):
            for ps in zip(*(m.parameters() for m in models), strict=True):
                grad = torch.randn(ps[0].shape, generator=gen)
                for p in ps:  # in the weight's layout (channels-last), as autograd leaves it
                    p.grad = torch.empty_like(p).copy_(grad)
            for o in opts:
                o.step()
        return max((p.detach() - s).abs().max().item() for p, s in zip(models[0].parameters(), start))

    def assert_same(a, b, moved):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-3 * moved)

    moved = step([plain_model, fused_model], [*plain, *fused], times=3)
    assert moved > 1e-3  # the weights do move (3 steps at the tiny config's rates)
    assert_same(plain_model, fused_model, moved)
    # a default Adam's checkpoint (written before the switch), resumed with optim.fused: Adam is fused
    # (the saved groups say otherwise) and carries on as the default one does
    resumed = model(True)
    resumed.load_state_dict(plain_model.state_dict())
    checkpoint = copy.deepcopy({"global_step": 9, "optimizer_states": [o.state_dict() for o in plain]})
    resumed.on_load_checkpoint(checkpoint)
    resumed_opts = resumed.configure_optimizers()
    for opt, state in zip(resumed_opts, checkpoint["optimizer_states"], strict=True):
        opt.load_state_dict(state)
    assert all(g["fused"] for o in resumed_opts for g in o.param_groups)
    moved = step([plain_model, resumed], [*plain, *resumed_opts], times=2)
    assert_same(plain_model, resumed, moved)


def test_bf16_mixed_precision_trains_with_the_manual_multi_optimiser_step(tiny_overrides):
    """``trainer.precision=bf16-mixed`` (CPU autocast here, CUDA's on a GPU): every optimiser steps,
    the loss is finite, and the geometry stays float32 (spatial.float32)."""
    cfg = load_config(PHANTOM2D, [*tiny_overrides, "trainer.precision=bf16-mixed", "trainer.max_steps=3",
                                  "trainer.val_every_n_steps=3", "model.affine.head=match",
                                  "model.affine.fine_passes=1"])
    result = train(cfg)
    model = result["model"]
    assert result["iterations"] == 3 and model.skipped_steps.item() == 0
    assert torch.isfinite(torch.tensor(result["metrics"]["val/dice_mean"]))
    x_a, x_b = torch.rand(2, 1, 1, *cfg.data.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = model.net(x_a, x_b)
    assert t.theta.dtype == torch.float32 and t.field(tuple(cfg.data.size)).dtype == torch.float32
    with torch.no_grad():
        t32 = model.net(x_a, x_b)
    torch.testing.assert_close(t.theta, t32.theta, atol=0.03, rtol=0)  # bf16 convolutions, fp32 geometry


def test_wandb_logs_offline_into_the_run_folder(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    # (fast_dev_run would switch the loggers off)
    rc = main(["train", str(PHANTOM2D), "trainer.max_steps=2", "trainer.val_every_n_steps=1000",
               "data.samples_per_epoch=8", "logger.wandb=true", *tiny_overrides])
    assert rc == 0
    run = next((tmp_path / "runs").iterdir())
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, "W&B must default to offline mode and write inside the run folder"


def test_an_interrupted_run_leaves_a_last_checkpoint_to_resume(tiny_overrides, monkeypatch):
    """Ctrl+C after 3 iterations (before any periodic checkpoint): last.ckpt holds those 3."""
    from callbacks.interrupt import SaveOnInterrupt

    class _Interrupt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.iteration == 3:
                raise KeyboardInterrupt

    import fire_lightning.train as train_mod

    real_build = train_mod.build_trainer

    def build(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        trainer.callbacks.append(_Interrupt())
        assert any(isinstance(c, SaveOnInterrupt) for c in trainer.callbacks)
        return trainer

    monkeypatch.setattr(train_mod, "build_trainer", build)
    cfg = load_config(PHANTOM2D, [*tiny_overrides, "trainer.max_steps=10", "trainer.checkpoint_every_n_steps=100",
                                  "trainer.val_every_n_steps=1000", "data.samples_per_epoch=40"])
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into SystemExit
        train(cfg)
    run = next(Path(cfg.run.root).iterdir())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 * 3


def test_validation_logs_every_loss_part_the_registration_metrics_and_a_panel(tiny_overrides):
    cfg = load_config(PHANTOM2D, [*tiny_overrides, "trainer.fast_dev_run=true"])
    result = train(cfg)
    logged = result["metrics"]
    for part in ("total", "syn_acc", "syn_fea", "syn_cyc", "syn_align", "reg_acc", "reg_ic", "r_smooth",
                 "r_syn", "r_reg"):
        assert f"val/loss_{part}" in logged and f"train/loss_{part}" in logged
    for key in ("dice_CSF", "dice_GM", "dice_WM", "dice_mean", "dice_affine_mean", "dice_unaligned_mean",
                "folding_pct", "ice_mm", "dice1r_mean", "dice1r_affine_mean", "affine_err_mm",
                "affine_err_rotation_deg",
                "affine_err_scale_pct", "affine_err_translation_mm", "affine_rotation_slope", "affine_rotation_corr",
                "affine_scale_slope", "affine_translation_corr"):
        assert f"val/{key}" in logged, key
    assert 0 <= logged["val/dice_mean"] <= 1 and logged["val/ice_mm"] >= 0
    assert list((result["run_dir"] / "images").glob("val_registration_iter*.png"))


def test_the_affine_warm_up_trains_g_and_t_af_only_and_keeps_counting_iterations(tiny_overrides):
    cfg = load_config(PHANTOM2D, [*tiny_overrides, "optim.affine_warmup_steps=3", "trainer.max_steps=4",
                                  "trainer.val_every_n_steps=1000", "data.samples_per_epoch=40",
                                  "model.affine.head=match", "model.affine.init=scale", "model.affine.passes=2"])
    torch.manual_seed(0)
    before = FIREModule(cfg).state_dict()
    from fire_lightning.train import make_datamodule

    module = FIREModule(cfg)
    module.load_state_dict(before)
    dm = make_datamodule(cfg)
    trainer = L.Trainer(max_steps=3 * module.n_optimizers, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert module.iteration == 3  # every optimiser stepped in every warm-up iteration
    after = module.state_dict()
    changed = {k.split(".")[1] + ("." + k.split(".")[2] if k.split(".")[1].startswith("T_") else "")
               for k in before if not torch.equal(before[k], after[k]) and k.startswith("net.")}
    # no decoder, no T_nr; the demo config's fine level is part of T_af
    assert changed == {"G", "T_ab.affine", "T_ba.affine", "T_ab.affine_fine", "T_ba.affine_fine"}, changed
    with pytest.raises(ConfigError, match="affine_warmup_steps"):
        load_config(PHANTOM2D, ["optim.affine_warmup_steps=5", "trainer.max_steps=5"])


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("head", ["match", "dense"])
def test_a_small_model_with_a_closed_form_affine_stage_learns_a_transform(head):
    """The moments start, a least-squares T_af, MI on the affinely warped image and the warm-up:
    the affine part alone brings the moving image towards the fixed one."""
    torch.manual_seed(0)
    shape = (32, 32)
    fixed = _blob(shape, (0.0, 0.0), (0.45, 0.3))
    moving = _blob(shape, (0.15, -0.1), (0.35, 0.35))
    cfg = load_config(None, ["model.synthesis.width=4", "model.synthesis.n_res=1", "model.affine.channels=[8,8,8]",
                             "data.size=[32,32]",
                             "data.spacing=1.0", f"model.affine.head={head}", "model.affine.init=com",
                             "model.affine.passes=2", "model.affine.mi_weight=1.0", "optim.affine_warmup_steps=60",
                             "optim.lr_affine=3e-3", "optim.lr_synthesis=1e-3"])
    module = FIREModule(cfg, spacing=(1.0, 1.0))
    iters = 120
    loader = DataLoader(_OnePair(moving, fixed, iters), batch_size=1)
    trainer = L.Trainer(max_steps=iters * module.n_optimizers, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    module.eval()
    reg = module.register(moving[None], fixed[None])
    start = module.net.initial_affine(moving[None], fixed[None])
    from_start = rms(spatial.warp(moving[None], spatial.affine_to_displacement(start, shape)), fixed[None]).item()
    after = rms(reg["warped_affine"], fixed[None]).item()
    assert after < 0.8 * from_start < 0.8 * rms(moving[None], fixed[None]).item(), (from_start, after)


def test_periodic_checkpoints_are_named_by_iteration(tiny_overrides):
    cfg = load_config(PHANTOM2D, [*tiny_overrides, "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=2",
                                  "trainer.val_every_n_steps=1000", "data.samples_per_epoch=40"])
    result = train(cfg)
    names = sorted(p.name for p in (result["run_dir"] / "checkpoints").glob("*.ckpt"))
    assert names == ["iter2.ckpt", "iter4.ckpt", "last.ckpt"]


def test_lr_factor_is_flat_in_the_warm_up_then_a_half_cosine_to_zero():
    assert [lr_factor(i, 2, 6, "none") for i in range(6)] == [1.0] * 6
    f = [lr_factor(i, 2, 6, "cosine") for i in range(7)]
    assert f[:3] == [1.0, 1.0, 1.0]  # the warm-up, then the first iteration after it at the full rate
    assert f[4] == pytest.approx(0.5) and f[6] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(f[2:], f[3:]))
    with pytest.raises(ValueError, match="lr_decay"):
        lr_factor(3, 0, 6, "step")
    with pytest.raises(ConfigError, match="lr_decay"):
        load_config(PHANTOM2D, ["optim.lr_decay=linear"])


def test_lr_ramp_climbs_linearly_after_the_warm_up_then_hands_over_to_the_decay():
    assert [lr_factor(i, 2, 10, "none", ramp=4) for i in range(8)] == [1.0, 1.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    ramped = [lr_factor(i, 2, 10, "cosine", ramp=4) for i in range(11)]
    plain = [lr_factor(i, 2, 10, "cosine") for i in range(11)]
    assert ramped[:2] == [1.0, 1.0]
    assert ramped[2:6] == pytest.approx([p * k / 4 for p, k in zip(plain[2:6], range(1, 5))])
    assert ramped[6:] == pytest.approx(plain[6:])
    assert lr_factor(0, 0, 10, "none", ramp=2) == 0.5  # no warm-up: the ramp starts at the first iteration
    for bad in (["optim.lr_ramp_steps=-1"], ["optim.lr_ramp_steps=8", "optim.affine_warmup_steps=2",
                                             "trainer.max_steps=10"]):
        with pytest.raises(ConfigError, match="optim.lr_ramp_steps"):
            load_config(PHANTOM2D, bad)
    with pytest.raises(ConfigError, match="optim.affine_joint_factor"):
        load_config(PHANTOM2D, ["optim.affine_joint_factor=-0.1"])
    with pytest.raises(ConfigError, match="optim.affine_warmup_steps > 0"):
        load_config(PHANTOM2D, ["model.affine.encoder=frozen", "optim.affine_warmup_steps=0"])
    with pytest.raises(ConfigError, match="model.affine.encoder"):
        load_config(PHANTOM2D, ["model.affine.encoder=copy"])


def test_a_cosine_schedule_sets_every_optimisers_rate_and_survives_a_resume(tiny_overrides):
    import csv

    from fire_lightning.train import load_run_config

    over = [*tiny_overrides, "optim.lr_decay=cosine", "optim.affine_warmup_steps=1", "optim.lr_ramp_steps=2",
            "optim.affine_joint_factor=0.5", "model.affine.encoder=frozen", "trainer.max_steps=5",
            "trainer.checkpoint_every_n_steps=3", "trainer.val_every_n_steps=1000", "trainer.log_every_n_steps=1",
            "data.samples_per_epoch=40", "explain.every_n_epochs=0", "model.affine.fine_passes=0"]
    class _Interrupt(L.Callback):  # Ctrl+C after 3 of the 5 iterations; then `--resume`
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if pl_module.iteration == 3:
                raise KeyboardInterrupt

    cfg = load_config(PHANTOM2D, over)
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into SystemExit
        train(cfg, callbacks=[_Interrupt()])
    run = next(Path(cfg.run.root).iterdir())
    r2 = train(load_run_config(run), resume_dir=run)
    assert r2["iterations"] == 5
    base = r2["model"].base_lrs()
    with open(run / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr/T_af")]
    # train/iteration is logged after the step: iterations done; the rate is the one that step used
    logged = {int(float(r["train/iteration"])) - 1: {k: float(r[f"lr/{k}"]) for k in ("T_af", "T_nr", "G_F")}
              for r in rows}
    assert sorted(logged) == [0, 1, 2, 3, 4]
    for it, lrs in logged.items():
        for name, lr in lrs.items():  # the schedule of a 5-iteration run, across the resume
            joint = 0.5 if name == "T_af" and it >= 1 else 1.0  # T_af at half its rate after the warm-up
            assert lr == pytest.approx(base[name] * joint * lr_factor(it, 1, 5, "cosine", ramp=2)), (it, name)
    # the warm-up at the full rate, half of it at the ramp's first step, then the decay
    assert logged[4]["T_af"] < logged[1]["T_af"] < logged[2]["T_af"] < logged[0]["T_af"]
    # model.affine.encoder=frozen: G was copied when the warm-up ended and the copy survived the resume untrained
    interrupted = torch.load(run / "checkpoints" / "iter3.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    net = r2["model"].net
    assert bool(net.affine_encoder_frozen) and bool(interrupted["net.affine_encoder_frozen"])
    for name, p in net.G_affine.state_dict().items():
        torch.testing.assert_close(p, interrupted[f"net.G_affine.{name}"])
    assert not all(torch.equal(p, net.G.state_dict()[name]) for name, p in net.G_affine.state_dict().items())
