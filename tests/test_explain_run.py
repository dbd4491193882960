"""The Grad-CAM callback during training, `fire explain` and `fire benchmark --explain`, on a tiny
phantom model trained here for a few iterations with the discriminators on."""

from __future__ import annotations

import copy
import json
import random
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from callbacks.gradcam import GradCAMCallback
from data_modules.phantom import PhantomDataModule
from fire_lightning import explain as ex
from fire_lightning.cli import main
from fire_lightning.config import data_section, load_config
from fire_lightning.explain_report import pair_values
from fire_lightning.register import grid_to_fixed, model_grid, model_input
from fire_lightning.train import train

from .conftest import PHANTOM2D, TINY

pytestmark = pytest.mark.usefixtures("single_thread")

# 2 iterations per epoch (4 samples, batches of 2): 3 epochs in 6 iterations.
SHORT = ["model.adversarial=true", "data.samples_per_epoch=4", "trainer.max_steps=6", "trainer.val_every_n_steps=2",
         "explain.n_pairs=2", "data.test_transforms_per_image=5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_runs")
    cfg = load_config(PHANTOM2D, TINY + SHORT + [f"run.root={root}", "explain.every_n_epochs=2"])
    out = train(cfg)
    cb = next(c for c in out["model"].trainer.callbacks if isinstance(c, GradCAMCallback))
    out["pair_ids"] = cb._pairs["id"]
    return out


def test_the_callback_logs_every_n_epochs_on_fixed_validation_pairs(trained):
    pngs = sorted((trained["run_dir"] / "gradcam").glob("*.png"))
    # 3 epochs of 2 iterations, every 2nd epoch (after iteration 4), and at the end (iteration 6),
    # one figure per pair
    assert [p.name for p in pngs] == sorted(f"gradcam_{i}_iter{it:07d}.png" for i in trained["pair_ids"]
                                            for it in (4, 6))


def test_training_with_the_callback_ends_with_the_same_weights_as_without(tmp_path):
    """The strongest form of "leaves the model as it found it": a run logging maps after every
    epoch trains bit-identically to one that never does (CPU, same seed)."""
    states = []
    for every in (1, 0):
        cfg = load_config(PHANTOM2D, TINY + SHORT + [f"run.root={tmp_path / str(every)}",
                                                     f"explain.every_n_epochs={every}", "trainer.max_steps=4"])
        out = train(cfg)
        states.append(out["model"].state_dict())
        assert len(list((out["run_dir"] / "gradcam").glob("*.png")) if every else []) == (4 if every else 0)
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def _snapshot(model, trainer) -> dict:
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "optimizers": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
        "modes": {n: m.training for n, m in model.named_modules()},
        "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
    }


def _assert_same(a, b, path="") -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b, path


def test_the_callback_leaves_weights_optimisers_modes_and_random_state_bit_identical(trained, tmp_path):
    model = trained["model"]
    trainer = model.trainer
    model.train()
    model.net.G.eval()  # a mixed state, which a blanket .train() / .eval() afterwards would not restore
    for p in model.net.G.parameters():
        p.grad = torch.full_like(p, 0.5)  # left-over gradients must survive too
    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    # control: reading the validation pairs alone moves torch's generator (DataLoader seeds its workers)
    before = torch.get_rng_state()
    next(iter(trainer.datamodule.val_dataloader()))
    assert not torch.equal(before, torch.get_rng_state())

    torch.manual_seed(7)
    snap = _snapshot(model, trainer)
    cb = GradCAMCallback(ex.ExplainSettings(), every_n_epochs=1, n_pairs=2, out_dir=tmp_path / "cam")
    cb.on_train_epoch_end(trainer, model)
    assert len(list((tmp_path / "cam").glob("gradcam_*.png"))) == 2  # it did run
    _assert_same(snap, _snapshot(model, trainer))
    for p in model.net.G.parameters():
        p.grad = None


def test_a_failing_callback_warns_and_still_restores_the_state(trained, tmp_path, monkeypatch, caplog):
    model = trained["model"]
    model.train()

    def broken(net, *args, **kwargs):
        torch.rand(3)  # consumes random numbers before failing
        net.train()
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr("callbacks.gradcam.explain_pair", broken)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    model.net.eval()
    GradCAMCallback(every_n_epochs=1, out_dir=tmp_path).on_train_epoch_end(model.trainer, model)
    assert torch.equal(state, torch.get_rng_state())
    assert not model.net.training and model.training
    assert "Grad-CAM callback failed" in caplog.text and "simulated" in caplog.text


def test_the_callback_does_nothing_off_rank_zero_or_off_cadence(tmp_path):
    cb = GradCAMCallback(every_n_epochs=2, out_dir=tmp_path)
    # any use of the trainer beyond these two attributes would raise
    cb.on_train_epoch_end(SimpleNamespace(is_global_zero=False, current_epoch=1), None)
    cb.on_train_epoch_end(SimpleNamespace(is_global_zero=True, current_epoch=0), None)
    GradCAMCallback(every_n_epochs=0).on_train_epoch_end(SimpleNamespace(is_global_zero=True, current_epoch=1), None)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- fire explain
def _test_pair(cfg):
    dm = PhantomDataModule(data_section(cfg))
    dm.setup("test")
    return dm.test_dataset()[0]


def _write(folder, pair, affine):
    """The pair as 2D NIfTI (singleton third axis) with the given affine; returns the paths."""
    paths = {}
    for k in ("moving", "fixed"):
        img = nib.Nifti1Image(((pair[k][0].numpy() + 1) / 2)[:, :, None].astype(np.float32), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=2)
        paths[k] = folder / f"{k}.nii.gz"
        nib.save(img, paths[k])
        lab = nib.Nifti1Image(pair[f"{k}_label"][0].numpy()[:, :, None].astype(np.int16), affine)
        paths[f"{k}_labels"] = folder / f"{k}_labels.nii.gz"
        nib.save(lab, paths[f"{k}_labels"])
    return paths


def _explain_cli(ckpt, paths, out, *extra) -> int:
    labels = [a for k in ("moving_labels", "fixed_labels") if paths[k] is not None
              for a in (f"--{k.replace('_', '-')}", str(paths[k]))]
    return main(["explain", "--checkpoint", str(ckpt), "--moving", str(paths["moving"]), "--fixed", str(paths["fixed"]),
                 *labels, "--out", str(out), "--device", "cpu", *extra])


def test_fire_explain_writes_each_map_as_the_in_memory_map_on_the_fixed_grid(trained, tmp_path, capsys):
    model = trained["model"].eval()
    cfg = model.cfg
    pair = _test_pair(cfg)
    spacing = float(cfg.data.spacing)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-90.0, -110.0, 12.0]  # RAS at the model's voxel size: the fixed grid is the model grid
    paths = _write(tmp_path, pair, affine)
    assert _explain_cli(trained["checkpoint"], paths, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "Share of Grad-CAM mass" in printed and "Symmetry" in printed and "JS divergence" in printed
    for name in model.label_names.values():
        assert name in printed

    fixed = nib.load(paths["fixed"])
    grid = model_grid(fixed.affine, fixed.shape, model.spacing, 2)
    assert grid.tensor_shape == tuple(cfg.data.size) and np.allclose(grid.affine, fixed.affine)
    x_a = model_input(np.asarray(nib.load(paths["moving"]).dataobj), affine, grid, "cpu")
    x_b = model_input(np.asarray(fixed.dataobj), affine, grid, "cpu")
    maps = ex.explain_pair(model.net, x_a, x_b, ex.ExplainSettings.from_config(cfg),
                           fixed_label=pair["fixed_label"][None])
    u_ab = model.register(x_a, x_b)["field"]
    assert len(maps) == 14
    for name, m in maps.items():
        img = nib.load(tmp_path / "out" / f"{name.replace('/', '_')}.nii.gz")
        assert img.shape == fixed.shape and np.allclose(img.affine, fixed.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
        expected = ex.unit_max(ex.carry_to_fixed(m, u_ab))[0, 0].numpy()
        np.testing.assert_allclose(np.asarray(img.dataobj)[:, :, 0], expected, atol=2e-5, err_msg=name)
    record = json.loads((tmp_path / "out" / "explain.json").read_text())
    labels = {"A": pair["moving_label"][None], "B": pair["fixed_label"][None]}  # the grid is the labels' grid
    in_memory = pair_values(maps, u_ab, labels, model.label_names)
    for key in ("symmetry/G", "symmetry/T_nr", "share/T_nr/AtoB/on_x_B/GM", "share/G/BtoA/x_A/WM",
                "divergence/D_B/nonrigid", "area/A/CSF"):
        assert record["measures"][key] == pytest.approx(in_memory[key][0], rel=1e-4, abs=1e-6), key
    assert record["settings"]["scalar_T_af"] == "affine"
    assert record["measures"]["scalar/T_af/AtoB/on_x_B"] == pytest.approx(float(maps["T_af/AtoB/on_x_B"].scalar[0]),
                                                                           rel=1e-4)
    assert (tmp_path / "out" / "gradcam_panel.png").stat().st_size > 10_000


def test_fire_explain_keeps_an_oblique_anisotropic_fixed_header(trained, tmp_path):
    pair = _test_pair(trained["model"].cfg)
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[2.1 * c, -3.4 * s, 0, 5.0], [2.1 * s, 3.4 * c, 0, -20.0], [0, 0, 4.0, 7.0], [0, 0, 0, 1]])
    paths = _write(tmp_path, pair, affine)
    assert _explain_cli(trained["checkpoint"], paths, tmp_path / "out", "explain.scalar_T_nr=nonrigid") == 0
    fixed = nib.load(paths["fixed"])
    written = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert len(written) == 14
    for path in written:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        assert img.shape == fixed.shape and np.allclose(img.affine, fixed.affine), path.name
        assert np.allclose(img.header.get_qform(), fixed.header.get_qform()) and data.dtype == np.float32
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1 + 1e-6
    assert json.loads((tmp_path / "out" / "explain.json").read_text())["settings"]["scalar_T_nr"] == "nonrigid"


@pytest.mark.parametrize("n", [2, 3])
def test_maps_reach_the_fixed_grid_through_world_coordinates(n):
    """A function linear in world coordinates, put on the model grid of an oblique anisotropic
    fixed image, comes back at every fixed voxel (inside the grid) as the same function."""
    c, s_ = np.cos(0.4), np.sin(0.4)
    shape = (30, 26, 1) if n == 2 else (22, 18, 14)
    affine = np.array([[1.7 * c, -2.3 * s_, 0, 4.0], [1.7 * s_, 2.3 * c, 0, -6.0], [0, 0, 3.1, 2.0], [0, 0, 0, 1]])
    grid = model_grid(affine, shape, (2.0,) * n, n)

    def world(aff, shp):
        idx = np.stack(np.meshgrid(*[np.arange(k) for k in shp], indexing="ij"), -1).reshape(-1, 3)
        return (aff[:3, :3] @ idx.T).T + aff[:3, 3]

    coef = np.array([0.3, -0.2, 0.1])
    on_grid = (world(grid.affine, grid.shape) @ coef).reshape(grid.shape)[..., : (1 if n == 2 else None)]
    volume = torch.as_tensor(on_grid.reshape(grid.tensor_shape), dtype=torch.float32)[None, None]
    out = grid_to_fixed(volume, grid, affine, shape)
    assert out.shape == shape
    expected = (world(affine, shape) @ coef).reshape(shape)
    # fixed voxels whose model-grid position is at least one voxel inside the grid
    to_grid = np.linalg.inv(grid.affine) @ affine
    idx = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).reshape(-1, 3)
    g = (to_grid[:3, :3] @ idx.T).T + to_grid[:3, 3]
    inside = np.all((g[:, :n] >= 0.5) & (g[:, :n] <= np.array(grid.tensor_shape) - 1.5), axis=1).reshape(shape)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-4)


@pytest.mark.parametrize("bad", ["labels_shape", "not_explain_key", "missing_fixed", "region_without_labels"])
def test_fire_explain_bad_input_is_one_line_naming_it_and_writes_nothing(bad, trained, tmp_path, capsys):
    pair = _test_pair(trained["model"].cfg)
    paths = _write(tmp_path, pair, np.diag([3.0, 3.0, 3.0, 1.0]))
    extra = []
    if bad == "labels_shape":
        nib.save(nib.Nifti1Image(np.zeros((10, 12, 1), np.int16), np.eye(4)), paths["fixed_labels"])
        named = "fixed_labels.nii.gz"
    elif bad == "not_explain_key":
        extra, named = ["trainer.max_steps=3"], "trainer.max_steps=3"
    elif bad == "region_without_labels":
        extra, named = ["explain.region=[3]"], "explain.region"
        paths["moving_labels"] = None
    else:
        paths["fixed"] = tmp_path / "nowhere.nii.gz"
        named = "nowhere.nii.gz"
    capsys.readouterr()
    assert _explain_cli(trained["checkpoint"], paths, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fire: error:") and named in err and "\n" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- fire benchmark --explain
def test_benchmark_explain_adds_the_measures_and_their_correlation_with_error(trained, tmp_path, capsys):
    out = tmp_path / "bm"
    assert main(["benchmark", str(trained["run_dir"]), "--no-ants", "--explain", "--max-pairs", "4", "--threads", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Explainability" in printed and "Spearman" in printed
    results = json.loads((out / "results.json").read_text())
    e = results["explain"]
    assert len(e["maps"]) == 14 and e["settings"]["layer"] == "feature"
    for key in ("symmetry/G", "divergence/D_B/nonrigid", "share/T_nr/AtoB/on_x_B/WM", "share/G/AtoB/x_A/GM"):
        assert len(e["measures"][key]["values"]) == 4, key
    corr = e["correlations"]["D_B nonrigid divergence vs 1 − Dice(FIRE)"]
    div = e["measures"]["divergence/D_B/nonrigid"]["values"]
    err = [1 - d for d in results["methods"]["FIRE"]["dice_mean"]["values"]]
    assert corr["x"] == pytest.approx(div) and corr["y"] == pytest.approx(err)
    assert corr["spearman"] == pytest.approx(ex.correlation(div, err).spearman)
    assert "D mean nonrigid divergence vs 1 − Dice(FIRE)" in e["correlations"]
    assert "Explainability" in (out / "results.md").read_text()
    for f in ("explain.md", "explain_correlation.png", "gradcam_example.png"):
        assert (out / f).stat().st_size > 0, f
