"""`fire register`: NIfTI in, warped image / labels / ITK field / ITK affine out, in the fixed image's space.

The checkpoints are tiny untrained models made non-trivial by hand: T_ab's affine head outputs a
known rotation + scale + translation and its non-rigid head has small random weights, so a sign,
axis or LPS/RAS error in the geometry shows up as a large difference.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import lightning
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from omegaconf import OmegaConf

from fire_lightning import spatial
from fire_lightning.cli import main
from fire_lightning.config import load_config
from fire_lightning.inference import InferenceModel, load_model
from fire_lightning.module import FIREModule, load_module
from fire_lightning.register import Registrar, model_grid, model_input

from .conftest import PHANTOM2D, ROOT, TINY, gen

pytestmark = pytest.mark.usefixtures("single_thread")

PHANTOM3D = ROOT / "experiments" / "phantom3d.yaml"
LABEL_VALUES = (0, 4, 10, 42)  # background + 3 classes, not 0..3 so that a relabelling shows


# ---------------------------------------------------------------------------------- checkpoints
def _rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _theta(n: int) -> torch.Tensor:
    """A small rotation + anisotropic scale + translation in normalised model-grid coordinates."""
    rot = _rotation([0, 0, 1], 0.09)[:2, :2] if n == 2 else _rotation([0.3, -0.5, 1.0], 0.09)
    lin = rot @ np.diag([1.06, 0.95, 1.03][:n])
    shift = np.array([0.05, -0.07, 0.04][:n])
    return torch.tensor(np.concatenate([lin, shift[:, None]], 1), dtype=torch.float32)


def _save_checkpoint(path, experiment, nontrivial: bool):
    # the paper's T_af (a regression head from the identity, no fine level): its last layer's bias sets theta
    cfg = load_config(experiment, [*TINY, "model.affine.head=regress", "model.affine.init=identity",
                                    "model.affine.fine_passes=0"])
    torch.manual_seed(0)
    module = FIREModule(cfg)
    if nontrivial:
        with torch.no_grad():
            last = [m for m in module.net.T_ab.affine.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.copy_(_theta(cfg.data.spatial_dims).flatten())
            nonrigid = module.net.T_ab.nonrigid  # a small random field layer; the U-Net's is scaled down
            scale = 0.003 / getattr(nonrigid, "OUTPUT_SCALE", 1.0) * (10 if nonrigid.needs_images else 1)
            nonrigid.head.weight.copy_(torch.randn(nonrigid.head.weight.shape, generator=gen(1)) * scale)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    loaded = load_module(path)
    assert loaded.cfg.data.spatial_dims == cfg.data.spatial_dims
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"2d": _save_checkpoint(d / "fire2d.ckpt", PHANTOM2D, True),
            "3d": _save_checkpoint(d / "fire3d.ckpt", PHANTOM3D, True),
            "2d-identity": _save_checkpoint(d / "identity2d.ckpt", PHANTOM2D, False)}


# ---------------------------------------------------------------------------------- images
# Content is defined in world coordinates (mm, RAS), so any grid samples the same object.
CENTRE = np.array([6.0, -9.0, 14.0])
PLANE = _rotation([1.0, 0.3, 0.0], 0.1)  # columns: in-plane e1, e2 and the normal, slightly oblique


def _content(world: np.ndarray, modality: str):
    """Image and labels of a smooth asymmetric 'head' at world points ``(..., 3)``."""
    rel = (world - CENTRE) @ PLANE  # coordinates along e1, e2, normal
    r = np.sqrt((rel[..., 0] / 30) ** 2 + (rel[..., 1] / 38) ** 2 + (rel[..., 2] / 26) ** 2)
    blob1 = np.exp(-(((rel[..., 0] - 12) ** 2 + (rel[..., 1] - 10) ** 2 + rel[..., 2] ** 2) / 40))
    blob2 = np.exp(-(((rel[..., 0] + 9) ** 2 + (rel[..., 1] + 16) ** 2 + (rel[..., 2] - 3) ** 2) / 25))
    head = 1 / (1 + np.exp((r - 1) * 25))
    inner = 1 / (1 + np.exp((r - 0.55) * 20))
    if modality == "T1":  # bright inside, original units up to ~900
        img = 300 * head + 400 * inner + 200 * blob1 - 150 * blob2
    else:  # another contrast, in [0, ~2]
        img = 1.2 * head - 0.6 * inner + 0.8 * blob2 + 0.3
        img = img * head
    labels = np.select([r < 0.55, r < 0.8, r < 1.0], LABEL_VALUES[3:0:-1], 0)
    return img.astype(np.float32), labels.astype(np.int16)


def _affine(directions, spacing, shape, centre) -> np.ndarray:
    cols = np.asarray(directions, dtype=float) * np.asarray(spacing, dtype=float)
    out = np.eye(4)
    out[:3, :3] = cols
    out[:3, 3] = centre - cols @ ((np.asarray(shape) - 1) / 2)
    return out


def _grid(n: int, which: str):
    """(shape, affine) of the fixed / moving grids: permuted, flipped, oblique, anisotropic."""
    e1, e2, e3 = PLANE.T
    if n == 2:
        if which == "fixed":
            rot = _rotation(e3, np.deg2rad(12))
            dirs = np.stack([-(rot @ e2), rot @ e1, e3], 1)  # axes (P-ish, R-ish, S) with a flip
            return (64, 40, 1), _affine(dirs, (1.1, 2.3, 4.0), (64, 40, 1), CENTRE + 2.5 * e1 - 1.5 * e2)
        rot = _rotation(e3, np.deg2rad(-20))
        dirs = np.stack([rot @ e1, -(rot @ e2), -e3], 1)
        return (50, 58, 1), _affine(dirs, (1.6, 1.3, 2.0), (50, 58, 1), CENTRE - 3.0 * e1 + 2.0 * e2)
    if which == "fixed":
        rot = _rotation([0.2, 1.0, -0.4], np.deg2rad(10))
        dirs = rot @ np.stack([-e3, e1, -e2], 1)
        return (20, 24, 18), _affine(dirs, (2.7, 2.1, 3.1), (20, 24, 18), CENTRE + [1.5, -2.0, 1.0])
    rot = _rotation([1.0, -0.3, 0.5], np.deg2rad(-15))
    dirs = rot @ np.stack([e2, -e1, e3], 1)
    return (26, 22, 20), _affine(dirs, (2.2, 2.6, 2.5), (26, 22, 20), CENTRE - [2.0, 1.0, -1.5])


def _world(shape, affine) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _nifti(data, affine) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=2)
    return img


def _write_pair(folder, n: int, moving_modality="T1", fixed_modality="FLAIR") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for which, modality in (("moving", moving_modality), ("fixed", fixed_modality)):
        shape, affine = _grid(n, which)
        img, lab = _content(_world(shape, affine), modality)
        paths[which] = folder / f"{which}.nii.gz"
        nib.save(_nifti(img, affine), paths[which])
        if which == "moving":
            paths["moving_labels"] = folder / "moving_labels.nii.gz"
            nib.save(_nifti(lab, affine), paths["moving_labels"])
    return paths


def _register_cli(ckpt, pair, out_dir, n: int, extra=()) -> dict:
    out = {"out": out_dir / "warped.nii.gz", "out_labels": out_dir / "warped_labels.nii.gz",
           # ITK reads a one-slice NIfTI vector image as 2D: 2D fields go to NRRD
           "field": out_dir / ("field.nrrd" if n == 2 else "field.nii.gz"), "affine": out_dir / "affine.mat"}
    rc = main(["register", "--checkpoint", str(ckpt), "--moving", str(pair["moving"]), "--fixed", str(pair["fixed"]),
               "--moving-labels", str(pair["moving_labels"]), "--out", str(out["out"]),
               "--out-labels", str(out["out_labels"]), "--field", str(out["field"]), "--affine", str(out["affine"]),
               "--device", "cpu", *extra])
    assert rc == 0
    return out


def _case(ckpt, n: int, tmp_path_factory, refine: int | None = None) -> dict:
    """One registration of the synthetic pair, by the CLI and by the Python API (``refine``: FIRE+IO steps)."""
    pair = _write_pair(tmp_path_factory.mktemp(f"pair{n}d"), n)
    extra = () if refine is None else ("--refine", str(refine))
    out = _register_cli(ckpt, pair, tmp_path_factory.mktemp(f"out{n}d"), n, extra)
    api = Registrar(ckpt, device="cpu", refine=refine).register(pair["moving"], pair["fixed"],
                                                               moving_labels=pair["moving_labels"])
    return {"pair": pair, "out": out, "api": api, "ckpt": ckpt, "refined": refine is not None}


@pytest.fixture(scope="module")
def case2d(ckpts, tmp_path_factory):
    return _case(ckpts["2d"], 2, tmp_path_factory)


@pytest.fixture(scope="module")
def case3d(ckpts, tmp_path_factory):
    return _case(ckpts["3d"], 3, tmp_path_factory)


@pytest.fixture(scope="module")
def case2d_refined(ckpts, tmp_path_factory):
    return _case(ckpts["2d"], 2, tmp_path_factory, refine=8)


@pytest.fixture(params=["2d", "3d"])
def case(request):
    return request.getfixturevalue(f"case{request.param}")


@pytest.fixture(params=["2d", "3d", "2d_refined"])
def written_case(request):
    """``case``, and the 2D pair registered with FIRE+IO (``--refine``): its files must reproduce it too."""
    return request.getfixturevalue(f"case{request.param}")


def _identity_resampled(pair) -> np.ndarray:
    """The moving image resampled onto the fixed grid without any transform (SimpleITK)."""
    return _sitk_warp(pair, sitk.Transform(3, sitk.sitkIdentity))


def _sitk_warp(pair, transform) -> np.ndarray:
    """SimpleITK's ``moving ∘ transform`` on the fixed grid (linear, 0 outside), as a NIfTI-ordered array."""
    fixed, moving = sitk.ReadImage(str(pair["fixed"])), sitk.ReadImage(str(pair["moving"]), sitk.sitkFloat64)
    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0).reshape(nib.load(pair["fixed"]).shape)


def _inside_mask(fixed_path, moving_path, transform=None) -> np.ndarray:
    """Fixed voxels whose (transformed) point lies at least one voxel inside the moving image's
    grid, where every linear interpolator agrees (found by SimpleITK, nearest neighbour)."""
    fixed, moving = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(moving_path))
    arr = np.ones(moving.GetSize()[::-1], dtype=np.uint8)  # (z, y, x)
    arr[:, [0, -1]] = 0
    arr[:, :, [0, -1]] = 0
    if arr.shape[0] > 1:  # 3D: the first and last slices too
        arr[[0, -1]] = 0
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(moving)
    transform = transform or sitk.Transform(3, sitk.sitkIdentity)
    out = sitk.Resample(mask, fixed, transform, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0).reshape(nib.load(fixed_path).shape) > 0


# ---------------------------------------------------------------------------------- model grid
@pytest.mark.parametrize("n", [2, 3])
def test_the_model_grid_covers_the_fixed_image_in_ras_order_at_the_model_spacing(n):
    shape, affine = _grid(n, "fixed")
    spacing = (3.0,) * n
    grid = model_grid(affine, shape, spacing, n)
    sizes = np.linalg.norm(grid.affine[:3, :3], axis=0)
    np.testing.assert_allclose(sizes[:n], spacing)
    assert all(s % 4 == 0 for s in grid.tensor_shape) and (n == 3 or grid.shape[2] == 1)
    # closest orientation RAS (2D: the in-plane axes in R, A, S order, the normal stays third)
    codes = nib.aff2axcodes(grid.affine)
    assert codes == ("R", "A", "S") if n == 3 else (codes[:2] in [("R", "A"), ("R", "S"), ("A", "S")])
    # same direction cosines as the fixed image, up to order and sign
    dirs_f = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    overlap = np.abs((grid.affine[:3, :3] / sizes).T @ dirs_f)
    np.testing.assert_allclose(np.sort(overlap, axis=1)[:, -1], 1, atol=1e-9)
    # every fixed voxel corner lies inside the model grid, and the centres coincide
    corners = np.stack(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    vox = (world - grid.affine[:3, 3]) @ np.linalg.inv(grid.affine[:3, :3]).T
    assert np.all(vox[:, :n] >= -0.5 - 1e-9) and np.all(vox[:, :n] <= np.array(grid.tensor_shape) - 0.5 + 1e-9)
    centre = lambda a, s: a[:3, :3] @ ((np.asarray(s) - 1) / 2) + a[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(grid.affine, grid.shape), centre(affine, shape), atol=1e-9)


# ---------------------------------------------------------------------------------- 1. round trip
def test_outputs_live_in_the_fixed_image_space(case):
    pair, out = case["pair"], case["out"]
    fixed, moving = nib.load(pair["fixed"]), nib.load(pair["moving"])
    warped, labels = nib.load(out["out"]), nib.load(out["out_labels"])
    for img in (warped, labels):
        assert img.shape == fixed.shape
        np.testing.assert_allclose(img.affine, fixed.affine, atol=1e-6)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
    assert warped.get_data_dtype() == np.float32
    assert labels.get_data_dtype() == np.int16
    lab = np.asanyarray(labels.dataobj)
    assert set(np.unique(lab)) <= set(LABEL_VALUES) and len(np.unique(lab)) == 4
    # original intensity units, not the model's [-1, 1]: linear interpolation stays in the moving range
    w, m = warped.get_fdata(), moving.get_fdata()
    assert w.max() > 100 and w.min() >= m.min() - 1e-3 and w.max() <= m.max() + 1e-3
    # labels and image were sampled at the same points: the bright inner class is bright
    assert w[lab == 42].mean() > 1.5 * w[lab == 4].mean()


# ---------------------------------------------------------------------------------- 2. orientation
def _reoriented(img: nib.Nifti1Image, flip_axis: int, swap: bool) -> nib.Nifti1Image:
    """The same world image with the array flipped along ``flip_axis`` (and axes 0, 1 swapped)."""
    data, affine = np.asanyarray(img.dataobj), img.affine.copy()
    flip = np.eye(4)
    flip[flip_axis, flip_axis] = -1
    flip[flip_axis, 3] = data.shape[flip_axis] - 1
    data, affine = np.flip(data, flip_axis), affine @ flip
    if swap:
        data, affine = np.swapaxes(data, 0, 1), affine @ np.eye(4)[:, [1, 0, 2, 3]]
    return _nifti(np.ascontiguousarray(data), affine)


def test_the_warped_image_does_not_depend_on_the_array_orientation(case, ckpts, tmp_path):
    pair, first = case["pair"], nib.load(case["out"]["out"]).get_fdata()
    n = 2 if first.shape[2] == 1 else 3
    nib.save(_reoriented(nib.load(pair["fixed"]), 0, True), tmp_path / "fixed.nii.gz")
    nib.save(_reoriented(nib.load(pair["moving"]), 1, True), tmp_path / "moving.nii.gz")
    result = Registrar(ckpts[f"{n}d"], device="cpu").register(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz")
    again = np.flip(np.swapaxes(result.warped.get_fdata(), 0, 1), 0)  # back to the first fixed image's array order
    assert np.abs(again - first).max() < 1e-3 * np.ptp(first)
    # ... and the transform is far from the identity, so a wrong orientation would show
    assert np.abs(first - _identity_resampled(pair)).mean() > 0.02 * np.ptp(first)


# ---------------------------------------------------------------------------------- model input / output
def _on_model_grid(n: int):
    """A RAS grid at the model spacing whose model grid is itself: (shape, affine)."""
    spacing = 3.0 if n == 2 else 4.0
    shape = (24, 28, 1) if n == 2 else (12, 16, 12)
    return shape, _affine(np.eye(3), (spacing, spacing, 2.0 if n == 2 else spacing), shape, CENTRE)


def test_model_input_is_the_training_normalisation_with_minus_one_outside():
    shape, affine = _on_model_grid(2)
    grid = model_grid(affine, shape, (3.0, 3.0), 2)
    assert grid.shape == shape and np.allclose(grid.affine, affine)
    data = _content(_world(shape, affine), "T1")[0]
    data[0, 0, 0] = -50  # negative values clip to 0 (background)
    top = np.percentile(data[data > 0], 99.5)
    x = model_input(data, affine, grid, "cpu")[0, 0].numpy()
    np.testing.assert_allclose(x, np.clip(data[:, :, 0] / top, 0, 1) * 2 - 1, atol=1e-5)
    assert x.min() == -1 and x.max() == 1
    shifted = affine.copy()
    shifted[:3, 3] += 2 * affine[:3, 0]  # the image starts two voxels further along axis 0
    y = model_input(data, shifted, grid, "cpu")[0, 0].numpy()
    assert np.all(y[:2] == -1)  # outside the image: background
    np.testing.assert_allclose(y[2:], x[:-2], atol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_on_the_models_own_grid_the_output_is_the_models_own_warp(n, ckpts, tmp_path):
    """When fixed and moving already are the model grid, the warped image is exactly the model's
    warped image (``module.register``), up to the intensity normalisation: an independent check
    that the fixed → world → model → world → moving chain applies the field the model means."""
    shape, affine = _on_model_grid(n)
    paths = {}
    for which, modality in (("moving", "T1"), ("fixed", "FLAIR")):
        paths[which] = tmp_path / f"{which}.nii.gz"
        nib.save(_nifti(_content(_world(shape, affine), modality)[0], affine), paths[which])
    registrar = Registrar(ckpts[f"{n}d"], device="cpu")
    result = registrar.register(paths["moving"], paths["fixed"])
    assert result.grid.shape == shape and np.allclose(result.grid.affine, affine)
    moving, fixed = _content(_world(shape, affine), "T1")[0], _content(_world(shape, affine), "FLAIR")[0]
    grid = result.grid
    model = registrar.module.register(model_input(moving, affine, grid, "cpu"), model_input(fixed, affine, grid, "cpu"))
    expected = model["warped"][0, 0].numpy().reshape(shape)
    top = np.percentile(moving[moving > 0], 99.5)
    ours = np.clip(result.warped.get_fdata() / top, 0, 1) * 2 - 1
    # where the moving point is inside the image (the model pads by the border value, we by 0)
    inside = _inside_mask(paths["fixed"], paths["moving"], sitk.DisplacementFieldTransform(sitk.Image(result.field)))
    assert inside.mean() > 0.3  # enough points to compare (the 3D demo variant's moments start moves a lot)
    diff = np.abs(ours - expected)[inside]
    assert np.median(diff) < 1e-4 and diff.mean() < 2e-3, (np.median(diff), diff.mean(), diff.max())
    unwarped = model_input(moving, affine, grid, "cpu")[0, 0].numpy().reshape(shape)
    assert np.abs(expected - unwarped)[inside].mean() > 0.05  # the model does move the image


@pytest.mark.parametrize("n", [2, 3])
def test_the_light_inference_model_registers_exactly_as_the_training_module(n, ckpts):
    light, full = load_model(ckpts[f"{n}d"]), load_module(ckpts[f"{n}d"]).eval()
    assert isinstance(light, InferenceModel) and not light.training
    assert light.spacing == full.spacing and light.label_names == full.label_names
    assert dataclasses.asdict(light.cfg) == OmegaConf.to_container(full.cfg)  # the same config, without omegaconf
    size = tuple(full.cfg.data.size)
    x_m, x_f = (torch.rand(1, 1, *size, generator=gen(s)) * 2 - 1 for s in (3, 4))
    a, b = light.register(x_m, x_f), full.register(x_m, x_f)
    for key in ("theta", "field", "warped"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.allclose(a["theta"], spatial.identity_affine(1, n))  # the checkpoint's, not a fresh net's


def test_a_checkpoint_of_something_else_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="other.ckpt: not a fire-lightning checkpoint"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_model(tmp_path / "missing.ckpt")


HEAVY = ("lightning", "pytorch_lightning", "lightning_fabric", "monai", "torchio", "captum", "wandb", "matplotlib",
         "ants", "torchvision", "omegaconf")


def test_fire_register_runs_without_importing_training_libraries(case2d, ckpts, tmp_path):
    """A single pair pays for torch and nibabel, not for lightning, monai or omegaconf."""
    out = tmp_path / "warped.nii.gz"
    argv = ["register", "--checkpoint", str(ckpts["2d"]), "--moving", str(case2d["pair"]["moving"]),
            "--fixed", str(case2d["pair"]["fixed"]), "--out", str(out), "--device", "cpu"]
    code = ("import sys\nfrom fire_lightning.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(next(line for line in proc.stdout.splitlines() if line.startswith("MODULES")).split()[1:])
    assert "torch" in loaded and out.is_file()
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


# ---------------------------------------------------------------------------------- 3. identity
def test_an_identity_model_reproduces_the_image_and_gives_a_zero_field(ckpts, case2d, tmp_path):
    registrar = Registrar(ckpts["2d-identity"], device="cpu")
    fixed_path = case2d["pair"]["fixed"]
    fixed = nib.load(fixed_path).get_fdata()
    same = registrar.register(fixed_path, fixed_path)
    np.testing.assert_allclose(same.warped.get_fdata(), fixed, atol=1e-4 * np.ptp(fixed))
    assert np.abs(sitk.GetArrayFromImage(same.field)).max() < 1e-4  # mm
    np.testing.assert_allclose(same.affine.GetMatrix(), np.eye(3).flatten(), atol=1e-6)
    np.testing.assert_allclose(same.affine.GetTranslation(), 0, atol=1e-4)
    # The same object sampled on another grid (other orientation, spacing, field of view and
    # slice thickness) comes back onto the fixed grid: world coordinates are handled right.
    shape, affine = _grid(2, "moving")
    img, _ = _content(_world(shape, affine), "FLAIR")
    nib.save(_nifti(img, affine), tmp_path / "other_grid.nii.gz")
    back = registrar.register(tmp_path / "other_grid.nii.gz", fixed_path).warped.get_fdata()
    inside = _inside_mask(fixed_path, tmp_path / "other_grid.nii.gz")
    assert inside.mean() > 0.5
    assert np.abs(back - fixed)[inside].mean() < 0.01 * np.ptp(fixed)


# ---------------------------------------------------------------------------------- 4. ITK / ANTs
def test_simpleitk_reproduces_the_warps_from_the_written_field_and_affine(written_case):
    pair, out, api = written_case["pair"], written_case["out"], written_case["api"]
    ours, ours_affine = nib.load(out["out"]).get_fdata(), api.warped_affine.get_fdata()
    scale = np.ptp(ours)
    field = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out["field"]), sitk.sitkVectorFloat64))
    affine = sitk.ReadTransform(str(out["affine"]))
    for transform, expected in ((field, ours), (affine, ours_affine)):
        inside = _inside_mask(pair["fixed"], pair["moving"], transform)
        assert inside.mean() > 0.3
        diff = np.abs(_sitk_warp(pair, transform) - expected)[inside]
        assert diff.max() < 1e-3 * scale, (transform.GetName(), diff.max() / scale)
    # the tolerance is far below the effects: FIRE vs its affine part, and vs no transform
    inside = _inside_mask(pair["fixed"], pair["moving"])
    assert np.abs(ours - ours_affine)[inside].mean() > 0.003 * scale
    if not written_case["refined"]:  # refinement undoes most of the hand-made transform on this aligned pair
        assert np.abs(ours - _identity_resampled(pair))[inside].mean() > 0.02 * scale


def test_refine_changes_the_transform_and_refine_0_is_the_network_bit_for_bit(case2d, case2d_refined, ckpts):
    plain = case2d["api"]
    refined = case2d_refined["api"]
    assert np.abs(refined.warped.get_fdata() - plain.warped.get_fdata()).max() > 1e-3
    zero = Registrar(ckpts["2d"], device="cpu", refine=0).register(case2d["pair"]["moving"], case2d["pair"]["fixed"])
    assert np.array_equal(zero.warped.get_fdata(), plain.warped.get_fdata())
    assert np.array_equal(sitk.GetArrayFromImage(zero.field), sitk.GetArrayFromImage(plain.field))


def test_ants_applies_the_written_field_and_affine_the_same_way(case):
    import ants

    pair, out, api = case["pair"], case["out"], case["api"]
    fixed, moving = ants.image_read(str(pair["fixed"])), ants.image_read(str(pair["moving"]))
    for key, expected in (("field", api.warped.get_fdata()), ("affine", api.warped_affine.get_fdata())):
        transform = sitk.ReadTransform(str(out["affine"])) if key == "affine" else sitk.DisplacementFieldTransform(
            sitk.ReadImage(str(out["field"]), sitk.sitkVectorFloat64))
        inside = _inside_mask(pair["fixed"], pair["moving"], transform)
        warped = ants.apply_transforms(fixed, moving, [str(out[key])], interpolator="linear").numpy()
        diff = np.abs(warped.reshape(expected.shape) - expected)[inside]
        assert diff.max() < 1e-3 * np.ptp(expected), (key, diff.max() / np.ptp(expected))


# ---------------------------------------------------------------------------------- 5. bad inputs
def _bad_input(kind: str, good: dict, folder, ckpts) -> tuple[list[str], str]:
    """CLI arguments with one bad input, and the name of the offending file."""
    args = {"--checkpoint": str(ckpts["2d"]), "--moving": str(good["moving"]), "--fixed": str(good["fixed"])}
    shape, affine = _grid(2, "moving")
    image = nib.load(good["moving"]).get_fdata().astype(np.float32)
    if kind == "missing file":
        args["--moving"] = str(folder / "no_such_image.nii.gz")
    elif kind == "text named .nii.gz":
        (folder / "notes.nii.gz").write_text("not an image\n")
        args["--fixed"] = str(folder / "notes.nii.gz")
    elif kind == "png":
        import matplotlib.pyplot as plt

        plt.imsave(folder / "slice.png", image[:, :, 0])
        args["--moving"] = str(folder / "slice.png")
    elif kind == "4D":
        nib.save(_nifti(np.stack([image, image], -1), affine), folder / "series.nii.gz")
        args["--moving"] = str(folder / "series.nii.gz")
    elif kind == "NaN":
        fixed = nib.load(good["fixed"])
        data = fixed.get_fdata().astype(np.float32)
        data[3, 4, 0] = np.nan
        nib.save(_nifti(data, fixed.affine), folder / "nan.nii.gz")
        args["--fixed"] = str(folder / "nan.nii.gz")
    elif kind == "2D image, 3D checkpoint":
        args["--checkpoint"] = str(ckpts["3d"])
        return [*_flatten(args), "--out", "OUT/warped.nii.gz"], "moving.nii.gz"
    elif kind == "3D image, 2D checkpoint":
        shape3, affine3 = _grid(3, "fixed")
        nib.save(_nifti(_content(_world(shape3, affine3), "FLAIR")[0], affine3), folder / "volume.nii.gz")
        args["--fixed"] = str(folder / "volume.nii.gz")
    elif kind == "corrupt checkpoint":
        (folder / "broken.ckpt").write_bytes(b"\x80\x03not a checkpoint")
        args["--checkpoint"] = str(folder / "broken.ckpt")
    elif kind == "labels of the wrong shape":
        nib.save(_nifti(np.zeros((10, 12, 1), np.int16), affine), folder / "small_labels.nii.gz")
        return [*_flatten(args), "--moving-labels", str(folder / "small_labels.nii.gz"), "--out-labels",
                "OUT/labels.nii.gz", "--out", "OUT/warped.nii.gz"], "small_labels.nii.gz"
    elif kind == "labels not integer":
        nib.save(_nifti(np.full(shape, 1.5, np.float32), affine), folder / "soft_labels.nii.gz")
        return [*_flatten(args), "--moving-labels", str(folder / "soft_labels.nii.gz"), "--out-labels",
                "OUT/labels.nii.gz", "--out", "OUT/warped.nii.gz"], "soft_labels.nii.gz"
    elif kind == "labels without --out-labels":
        return [*_flatten(args), "--moving-labels", str(good["moving_labels"]), "--out",
                "OUT/warped.nii.gz"], "moving_labels.nii.gz"
    elif kind == "two outputs, one file":
        return [*_flatten(args), "--moving-labels", str(good["moving_labels"]), "--out-labels", "OUT/warped.nii.gz",
                "--out", "OUT/warped.nii.gz"], "warped.nii.gz"
    elif kind == "2D field as NIfTI":
        return [*_flatten(args), "--out", "OUT/warped.nii.gz", "--field", "OUT/field.nii.gz"], "field.nii.gz"
    elif kind == "unwritable output":  # the last output fails after the others were written
        return [*_flatten(args), "--out", "OUT/warped.nii.gz", "--field", "OUT/field.nrrd", "--affine",
                "OUT/blocker/affine.mat"], "affine.mat"
    offending = {"missing file": "no_such_image.nii.gz", "text named .nii.gz": "notes.nii.gz", "png": "slice.png",
                 "4D": "series.nii.gz", "NaN": "nan.nii.gz", "3D image, 2D checkpoint": "volume.nii.gz",
                 "corrupt checkpoint": "broken.ckpt"}[kind]
    return [*_flatten(args), "--out", "OUT/warped.nii.gz"], offending


def _flatten(args: dict) -> list[str]:
    return [x for kv in args.items() for x in kv]


BAD_INPUTS = ["missing file", "text named .nii.gz", "png", "4D", "NaN", "2D image, 3D checkpoint",
              "3D image, 2D checkpoint", "corrupt checkpoint", "labels of the wrong shape", "labels not integer",
              "labels without --out-labels", "two outputs, one file", "2D field as NIfTI", "unwritable output"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_a_bad_input_is_one_line_naming_the_file_and_writes_nothing(kind, case2d, ckpts, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "blocker").write_text("a file where a folder would be needed\n")
    argv, offending = _bad_input(kind, case2d["pair"], tmp_path / "in", ckpts)
    argv = [a.replace("OUT", str(out_dir)) for a in argv]
    capsys.readouterr()
    rc = main(["register", *argv, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("fire: error: ") and offending in err[0], err
    assert sorted(p.name for p in out_dir.iterdir()) == ["blocker"]  # nothing written, no temporaries


# ---------------------------------------------------------------------------------- 6. batch
def test_batch_mode_runs_the_good_rows_and_names_the_bad_one(case2d, ckpts, tmp_path, capsys):
    pair = case2d["pair"]
    rel = {k: Path(os.path.relpath(v, tmp_path)) for k, v in pair.items()}  # relative to the CSV's folder
    rows = [
        {"moving": rel["moving"], "fixed": rel["fixed"], "out": "out/a.nii.gz"},
        {"moving": "missing_moving.nii.gz", "fixed": rel["fixed"], "out": "out/b.nii.gz"},
        {"moving": rel["moving"], "fixed": rel["fixed"], "out": "out/c.nii.gz", "moving_labels": rel["moving_labels"],
         "out_labels": "out/c_labels.nii.gz", "field": "out/c_field.nrrd", "affine": "out/c_affine.txt"},
    ]
    columns = ["moving", "fixed", "out", "moving_labels", "out_labels", "field", "affine"]
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    rc = main(["register", "--checkpoint", str(ckpts["2d"]), "--csv", str(tmp_path / "pairs.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a.nii.gz", "c.nii.gz", "c_affine.txt", "c_field.nrrd", "c_labels.nii.gz"]
    failed = [line for line in err.splitlines() if "row 2" in line]
    assert len(failed) == 1 and "missing_moving.nii.gz" in failed[0]
    assert "row 1" not in err and "row 3" not in err and "1 of 3" in err
    # the rows are the same registration as the single-pair command
    np.testing.assert_array_equal(nib.load(tmp_path / "out" / "a.nii.gz").get_fdata(),
                                  nib.load(case2d["out"]["out"]).get_fdata())


# ---------------------------------------------------------------------------------- 7. Python API
def test_the_python_api_returns_what_the_cli_writes(case):
    out, api = case["out"], case["api"]
    np.testing.assert_array_equal(api.warped.get_fdata(), nib.load(out["out"]).get_fdata())
    np.testing.assert_array_equal(np.asanyarray(api.warped_labels.dataobj),
                                  np.asanyarray(nib.load(out["out_labels"]).dataobj))
    written = sitk.ReadImage(str(out["field"]), sitk.sitkVectorFloat64)
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(api.field), atol=1e-4)
    np.testing.assert_allclose(written.GetOrigin(), api.field.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), api.field.GetDirection(), atol=1e-6)
    read = sitk.ReadTransform(str(out["affine"]))
    np.testing.assert_allclose(read.GetParameters(), api.affine.GetParameters(), atol=1e-9)
    assert api.seconds > 0 and api.warped.shape == nib.load(case["pair"]["fixed"]).shape


def test_large_images_are_processed_in_slabs_with_the_same_result(case2d, monkeypatch):
    import fire_lightning.geometry as geometry

    monkeypatch.setattr(geometry, "CHUNK_POINTS", 150)  # 64 x 40 fixed pixels: 40 slabs of one column
    pair, api = case2d["pair"], case2d["api"]
    sliced = Registrar(case2d["ckpt"], device="cpu").register(
        pair["moving"], pair["fixed"], moving_labels=pair["moving_labels"])
    np.testing.assert_allclose(sliced.warped.get_fdata(), api.warped.get_fdata(), atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(sliced.warped_labels.dataobj), np.asanyarray(api.warped_labels.dataobj))
    np.testing.assert_allclose(sitk.GetArrayFromImage(sliced.field), sitk.GetArrayFromImage(api.field), atol=1e-9)


def test_slices_in_different_planes_are_registered_with_a_warning(ckpts, case2d, tmp_path, caplog):
    moving = nib.load(case2d["pair"]["moving"])
    shifted = moving.affine.copy()
    shifted[:3, 3] += 3 * shifted[:3, 2]  # three slice thicknesses along the normal
    nib.save(_nifti(moving.get_fdata().astype(np.float32), shifted), tmp_path / "other_plane.nii.gz")
    with caplog.at_level("WARNING", logger="fire_lightning.registrar"):
        result = Registrar(ckpts["2d"], device="cpu").register(tmp_path / "other_plane.nii.gz",
                                                              case2d["pair"]["fixed"])
    assert any("not in the same plane" in r.getMessage() for r in caplog.records)
    # the moving slice is sampled where the points project onto it: as if it were in the plane (float32
    # rounding of the projected points, carried through the network: a relative tolerance too)
    np.testing.assert_allclose(result.warped.get_fdata(), case2d["api"].warped.get_fdata(), atol=1e-3, rtol=1e-4)


def test_a_csv_with_a_wrong_header_is_a_one_line_error(ckpts, tmp_path, capsys):
    (tmp_path / "pairs.csv").write_text("moving,fixd,out\na.nii.gz,b.nii.gz,c.nii.gz\n")
    capsys.readouterr()
    rc = main(["register", "--checkpoint", str(ckpts["2d"]), "--csv", str(tmp_path / "pairs.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pairs.csv" in err[0] and "fixd" in err[0]


# ---------------------------------------------------------------------------------- 8. exported test pairs
@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_exported_test_pairs_register_through_the_csv_and_are_scored(ckpts, tmp_path, capsys, orientation):
    """`fire export-pairs` writes a data module's test pairs as NIfTI; `fire register --csv` with
    fixed_labels scores them. With the identity model the warped labels are the moving labels, so
    the scores are the data module's own unaligned Dice, pair by pair, in either orientation: the
    files keep every voxel's world position through writing, resampling and mapping back."""
    from fire_lightning.export import pair_affine
    from fire_lightning.metrics import dice_per_label
    from fire_lightning.train import make_datamodule

    overrides = [*TINY, "data.test_transforms_per_image=3"]
    assert main(["export-pairs", str(PHANTOM2D), *overrides, "--out", str(tmp_path / "x"), "--max-pairs", "3",
                 "--orientation", orientation]) == 0
    moving = nib.load(tmp_path / "x" / "pair_000_moving.nii.gz")
    assert moving.shape == (64, 72, 1) and nib.aff2axcodes(moving.affine)[:2] == tuple(orientation[:2])
    np.testing.assert_allclose(moving.affine, pair_affine((64, 72, 1), (3.0, 3.0), orientation))
    capsys.readouterr()
    assert main(["register", "--checkpoint", str(ckpts["2d-identity"]), "--csv", str(tmp_path / "x" / "pairs.csv"),
                 "--device", "cpu"]) == 0
    assert "mean Dice of the warped labels against fixed_labels" in capsys.readouterr().out
    with open(tmp_path / "x" / "pairs_dice.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["row"] for r in rows] == ["1", "2", "3", "mean", "std"]
    dm = make_datamodule(load_config(PHANTOM2D, overrides))
    dm.setup("test")
    registrar = Registrar(ckpts["2d"], device="cpu")
    for i in range(3):
        pair = dm.test_dataset()[i]
        # the model sees what it saw in the benchmark: the files' orientation and intensities come
        # back to the data module's tensors, up to fire register's per-image p99.5 scaling (the
        # phantom scales per volume); a flipped axis or a [-1, 1] file would fail this
        seen = registrar.prepare(tmp_path / "x" / f"pair_{i:03d}_moving.nii.gz",
                                 tmp_path / "x" / f"pair_{i:03d}_fixed.nii.gz")
        for key in ("moving", "fixed"):
            a, b = getattr(seen, key)[0].flatten(), pair[key].flatten()
            r = torch.corrcoef(torch.stack([a, b]))[0, 1]
            assert r > 0.99 and (a - b).abs().mean() < 0.06, (key, float(r), float((a - b).abs().mean()))
        expected = dice_per_label(pair["moving_label"][None], pair["fixed_label"][None], [1, 2, 3])[0]
        got = [float(rows[i][f"dice_{v}"]) for v in (1, 2, 3)]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)


def test_fixed_labels_without_out_labels_is_a_row_error(case2d, ckpts, tmp_path, capsys):
    pair = case2d["pair"]
    (tmp_path / "p.csv").write_text("moving,fixed,out,fixed_labels\n"
                                    f"{pair['moving']},{pair['fixed']},{tmp_path / 'o.nii.gz'},"
                                    f"{pair['moving_labels']}\n")
    assert main(["register", "--checkpoint", str(ckpts["2d"]), "--csv", str(tmp_path / "p.csv")]) == 2
    assert "fixed_labels needs moving_labels and out_labels" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
