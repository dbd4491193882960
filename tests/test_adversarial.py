"""ExFIRE adversarial training: LSGAN terms, what each discriminator sees, and the two-step iteration."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fire_lightning.module as module_mod
from fire_lightning.config import ConfigError, load_config
from fire_lightning.losses import (
    adversarial_images,
    discriminators,
    fire_forward,
    fire_loss,
    generator_adversarial_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from fire_lightning.module import DISCRIMINATOR_GROUPS, GENERATOR_GROUPS, FIREModule, frozen
from fire_lightning.nets.fire import FIRENet
from fire_lightning.train import train

from .conftest import PHANTOM2D, TINY, model_config
from .conftest import gen as _gen

pytestmark = pytest.mark.usefixtures("single_thread")

# A tiny ExFIRE on 16×16 pairs, for runs outside train() (fixed data, so no data RNG involved).
SMALL = [o for o in TINY if o.startswith("model.")] + ["data.size=[16,16]", "data.spacing=1.0",
                                                        "model.adversarial=true", "model.disc_width=4"]


class _Const(nn.Module):
    """A stub discriminator scoring every pixel of every input ``value``: ``(B,1,*S) -> (B,1,2,2)``."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1, 2, 2), self.value)


def _images(value: float, k: int = 2) -> list[torch.Tensor]:
    return [torch.full((2, 1, 4, 4), value) for _ in range(k)]


# ------------------------------------------------------------------------------ LSGAN terms


@pytest.mark.parametrize("score, gen_loss, disc_loss", [(1.0, 0.0, 0.5 * (0 + 1)), (0.0, 1.0, 0.5 * (1 + 0)),
                                                        (0.5, 0.25, 0.5 * (0.25 + 0.25))])
def test_lsgan_losses_with_a_constant_discriminator(score, gen_loss, disc_loss):
    d = _Const(score)
    assert lsgan_generator_loss(d, _images(0.3)).item() == pytest.approx(gen_loss)
    loss, real, fake = lsgan_discriminator_loss(d, _images(0.1), _images(0.9, k=3))
    assert loss.item() == pytest.approx(disc_loss)
    assert real.item() == pytest.approx(score) and fake.item() == pytest.approx(score)


def test_lsgan_losses_average_over_the_list_and_separate_real_from_fake():
    d = nn.Identity()  # the score is the image itself
    # a perfect discriminator (reals score 1, fakes 0): its loss is 0, the generators' is 1
    loss, real, fake = lsgan_discriminator_loss(d, _images(1.0), _images(0.0))
    assert loss.item() == 0.0 and real.item() == 1.0 and fake.item() == 0.0
    assert lsgan_generator_loss(d, _images(0.0)).item() == 1.0
    # mean over the list of per-image means: fakes scoring 1 and 0 → (0 + 1) / 2
    assert lsgan_generator_loss(d, [torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 8, 8)]).item() == 0.5
    # reals scoring 0 (term 1) and fakes scoring 1 (term 1): 0.5 * (1 + 1)
    assert lsgan_discriminator_loss(d, _images(0.0), _images(1.0))[0].item() == 1.0


def test_the_discriminator_loss_trains_the_discriminator_only():
    torch.manual_seed(0)
    d = nn.Conv2d(1, 1, 3, padding=1)
    reals = [torch.randn(2, 1, 8, 8, requires_grad=True) for _ in range(2)]
    fakes = [torch.randn(2, 1, 8, 8, requires_grad=True) for _ in range(2)]
    loss, real, fake = lsgan_discriminator_loss(d, reals, fakes)
    loss.backward()
    assert all(x.grad is None for x in reals + fakes)
    assert d.weight.grad is not None and d.weight.grad.abs().sum() > 0
    assert not real.requires_grad and not fake.requires_grad
    # whereas the generators' term does reach the synthesised images
    lsgan_generator_loss(d, fakes).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fakes)


# ------------------------------------------------------------------------------ what D sees


def test_adversarial_images_count_warped_inputs_as_real_and_synthesis_as_fake():
    torch.manual_seed(0)
    net = FIRENet(2, model_config(synthesis={"width": 2, "n_res": 1}, affine={"channels": [4, 4, 4], "hidden": 8},
                                adversarial=True, disc_width=2))
    x_a, x_b = torch.rand(2, 1, 1, 16, 16, generator=_gen(1)) * 2 - 1
    out = fire_forward(net, x_a, x_b)
    images = adversarial_images(out, x_a, x_b)
    assert set(images) == set(discriminators(net)) == {"A", "B"}
    assert [id(t) for t in images["A"].real] == [id(x_a), id(out.warped_a)]
    assert [id(t) for t in images["A"].fake] == [id(out.xhat_a), id(out.xhat_t_a)]
    assert [id(t) for t in images["B"].real] == [id(x_b), id(out.warped_b)]
    assert [id(t) for t in images["B"].fake] == [id(out.xhat_b), id(out.xhat_t_b)]
    assert discriminators(net)["A"] is net.D_a and discriminators(net)["B"] is net.D_b
    expected = lsgan_generator_loss(net.D_a, [out.xhat_a, out.xhat_t_a]) + lsgan_generator_loss(
        net.D_b, [out.xhat_b, out.xhat_t_b])
    assert torch.equal(generator_adversarial_loss(net, images), expected)


def test_adv_weight_must_not_be_negative():
    with pytest.raises(ConfigError, match="adv_weight"):
        load_config(None, ["model.adv_weight=-0.1"])


def test_frozen_restores_the_requires_grad_flags_also_after_an_exception():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[1].bias.requires_grad_(False)
    with pytest.raises(RuntimeError):
        with frozen(net):
            assert not any(p.requires_grad for p in net.parameters())
            raise RuntimeError
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, False]


# ------------------------------------------------------------------------------ training


def _train(cfg, monkeypatch, *callbacks) -> dict:
    """``train(cfg)`` with extra Trainer callbacks."""
    return train(cfg, callbacks=callbacks)


class _InitialState(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def _adam_steps(opt: torch.optim.Optimizer) -> set[int]:
    """The Adam step count of every parameter of ``opt`` (-1 for one without state)."""
    return {int(opt.state[p]["step"]) if p in opt.state else -1 for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("adversarial", [True, False])
def test_fast_dev_run_with_and_without_discriminators(tiny_overrides, adversarial):
    cfg = load_config(PHANTOM2D, [*tiny_overrides, "trainer.fast_dev_run=true", f"model.adversarial={adversarial}",
                                  "model.disc_width=4"])
    result = train(cfg)
    model, logged = result["model"], result["metrics"]
    assert result["iterations"] == 1
    assert "train/loss_adv" in logged and "val/loss_adv" in logged
    d_keys = {f"train/{k}_{d}" for k in ("loss_disc", "d_real", "d_fake") for d in "AB"}
    if adversarial:
        assert model.n_optimizers == 5 and d_keys <= set(logged)
        assert logged["train/loss_adv"] > 0 and logged["val/loss_adv"] > 0
    else:
        assert model.n_optimizers == 3 and not d_keys & set(logged)
        assert model.net.D_a is None and model.net.D_b is None
        assert not [k for k in model.state_dict() if k.startswith(("net.D_a", "net.D_b"))]
        assert logged["train/loss_adv"] == 0 and logged["val/loss_adv"] == 0


def test_every_optimiser_steps_once_per_iteration(tiny_overrides, monkeypatch):
    cfg = load_config(PHANTOM2D, [*tiny_overrides, "trainer.max_steps=3", "trainer.val_every_n_steps=1000",
                                  "data.samples_per_epoch=40", "model.adversarial=true", "model.disc_width=4"])
    initial = _InitialState()
    result = _train(cfg, monkeypatch, initial)
    model = result["model"]
    assert model.n_optimizers == 5 and model.iteration == 3 and model.global_step == 15
    assert int(model.skipped_steps) == 0
    opts = dict(zip(GENERATOR_GROUPS + DISCRIMINATOR_GROUPS, model.trainer.optimizers, strict=True))
    for name, opt in opts.items():
        assert _adam_steps(opt) == {3}, name
    final = model.state_dict()
    for prefix in ("net.D_a.", "net.D_b.", "net.G.", "net.T_ab."):
        keys = [k for k in final if k.startswith(prefix)]
        assert keys and any(not torch.equal(initial.state[k], final[k]) for k in keys), prefix


class _FixedPairs(Dataset):
    def __init__(self, length: int, shape=(16, 16)):
        self.x = torch.rand(2, 2, 1, *shape, generator=_gen(3)) * 2 - 1  # (pair, moving|fixed, 1, *S)
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        lab = torch.zeros_like(self.x[0, 0], dtype=torch.long)
        return {"moving": self.x[i % 2, 0], "fixed": self.x[i % 2, 1], "moving_label": lab, "fixed_label": lab}


def _fit(module: FIREModule, iters: int) -> FIREModule:
    """``iters`` iterations on fixed pairs, batch 2 (the same batch every iteration)."""
    loader = DataLoader(_FixedPairs(2 * iters), batch_size=2)
    trainer = L.Trainer(max_steps=iters * module.n_optimizers, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    assert module.iteration == iters
    return module


def _module(overrides: list[str]) -> FIREModule:
    torch.manual_seed(0)
    return FIREModule(load_config(None, [*SMALL, *overrides]))


def _adam_step(params, lr: float, clip: float, betas) -> None:
    torch.nn.utils.clip_grad_norm_(params, clip)
    torch.optim.Adam(params, lr=lr, betas=betas).step()


def test_one_iteration_equals_a_generator_step_then_a_discriminator_step():
    """Plain-torch replay of one iteration: (1) Adam on ∇L for T_af, T_nr, G_F with the initial
    D^A, D^B frozen; (2) Adam on ∇(L_D^A + L_D^B) for D_A, D_B from that same forward's images.
    Fails if D were stepped on (or accumulated gradients of) the generator loss, if the D step
    changed G/T/F, or if it used images from after the generator step."""
    module = _module(["optim.lr_discriminator=1e-3", "optim.lr_synthesis=1e-3"])
    net = copy.deepcopy(module.net)
    _fit(module, 1)

    o = module.cfg.optim
    lrs = {"T_af": o.lr_affine, "T_nr": o.lr_nonrigid, "G_F": o.lr_synthesis, "D_A": o.lr_discriminator,
           "D_B": o.lr_discriminator}
    groups = net.parameter_groups()
    pairs = _FixedPairs(2).x  # the batch _fit trained on
    x_a, x_b = pairs[:, 0], pairs[:, 1]
    d_params = [p for d in discriminators(net).values() for p in d.parameters()]
    for p in d_params:
        p.requires_grad_(False)
    out = fire_forward(net, x_a, x_b)
    images = adversarial_images(out, x_a, x_b)
    fire_loss(out, x_a, x_b, adversarial=generator_adversarial_loss(net, images)).total.backward()
    for name in GENERATOR_GROUPS:
        _adam_step(groups[name], lrs[name], o.grad_clip, tuple(o.betas))
    for p in d_params:
        p.requires_grad_(True)
    d_losses = [lsgan_discriminator_loss(d, images[k].real, images[k].fake)[0] for k, d in discriminators(net).items()]
    sum(d_losses).backward()
    for name in DISCRIMINATOR_GROUPS:
        _adam_step(groups[name], lrs[name], o.grad_clip, tuple(o.betas))

    trained = module.net.state_dict()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(trained[k], v, rtol=1e-5, atol=1e-7, msg=k)


def test_with_adv_weight_zero_the_generators_train_as_without_discriminators():
    """G, F, T are built before D^A, D^B, so both modules start alike; the D step must leave them alone."""
    with_d = _module(["model.adv_weight=0"])
    without = _module(["model.adversarial=false"])
    initial = {k: v.clone() for k, v in without.state_dict().items()}
    assert all(torch.equal(with_d.state_dict()[k], v) for k, v in initial.items())
    _fit(with_d, 2)
    _fit(without, 2)
    assert any(not torch.equal(without.state_dict()[k], v) for k, v in initial.items())
    for k, v in without.state_dict().items():
        assert torch.equal(with_d.state_dict()[k], v), k


def test_a_non_finite_discriminator_loss_skips_only_the_discriminator_update(monkeypatch):
    real_loss = module_mod.lsgan_discriminator_loss

    def nan_loss(disc, reals, fakes):
        loss, real, fake = real_loss(disc, reals, fakes)
        return loss * math.nan, real, fake

    monkeypatch.setattr(module_mod, "lsgan_discriminator_loss", nan_loss)
    module = _module([])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _fit(module, 2)
    after = module.state_dict()
    assert int(module.skipped_steps) == 2 and module.global_step == 2 * 5
    d_keys = [k for k in before if k.startswith(("net.D_a.", "net.D_b."))]
    assert d_keys and all(torch.equal(before[k], after[k]) for k in d_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("net.G."))
    opts = dict(zip(GENERATOR_GROUPS + DISCRIMINATOR_GROUPS, module.trainer.optimizers, strict=True))
    assert _adam_steps(opts["D_A"]) == _adam_steps(opts["D_B"]) == {-1}
    assert _adam_steps(opts["G_F"]) == {2}


class _History(L.Callback):
    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


@pytest.mark.slow
def test_adversarial_training_stays_stable_for_60_iterations(tiny_overrides, monkeypatch):
    iters = 60
    cfg = load_config(PHANTOM2D, [*tiny_overrides, f"trainer.max_steps={iters}", "trainer.val_every_n_steps=1000",
                                  "data.samples_per_epoch=400", "model.adversarial=true", "model.disc_width=4"])
    history = _History()
    model = _train(cfg, monkeypatch, history)["model"]
    assert model.iteration == iters and int(model.skipped_steps) == 0
    assert len(history.rows) == iters
    for i, row in enumerate(history.rows):
        assert all(math.isfinite(v) for v in row.values()), (i, row)
        for k in ("d_real_A", "d_fake_A", "d_real_B", "d_fake_B"):
            assert -5 < row[f"train/{k}"] < 5, (i, k, row[f"train/{k}"])
