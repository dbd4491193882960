"""The ANTs baselines on one tiny pair: they register, and their fields mean what ANTs means."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fire_lightning import metrics, spatial
from fire_lightning.baselines import AntsParams, _reflects, _to_ants, register_pair

pytestmark = pytest.mark.usefixtures("single_thread")


def _pair():
    """A two-structure image and a copy translated by (3, -2) voxels with different contrast."""
    shape = (40, 36)
    ii, jj = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    lab = torch.zeros(1, *shape, dtype=torch.long)
    lab[0][((ii - 20) ** 2 + (jj - 18) ** 2) < 100] = 1
    lab[0][((ii - 20) ** 2 + (jj - 18) ** 2) < 25] = 2
    fixed = torch.tensor([-1.0, 0.6, -0.2])[lab]  # structure 1 bright, 2 dark
    lab_m = torch.roll(lab, (3, -2), dims=(1, 2))
    moving = torch.tensor([-1.0, -0.3, 0.9])[lab_m]  # another modality: the contrast is reversed
    return moving, fixed, lab_m, lab


def test_ants_baselines_register_a_tiny_multimodal_pair():
    moving, fixed, lab_m, lab_f = _pair()
    spacing = (2.0, 1.5)
    params = AntsParams(threads=1, aff_iterations=(200, 100, 50), aff_shrink_factors=(4, 2, 1),
                        aff_smoothing_sigmas=(2, 1, 0), reg_iterations=(20, 10))
    out = register_pair(moving, fixed, spacing, params)
    assert set(out) == {"ANTs-Affine", "ANTs-SyN"}
    fields = {name: r["field"][None] for name, r in out.items()}
    fields["Unaligned"] = None
    scores = metrics.score_methods(lab_m[None], lab_f[None], fields, {1: "ring", 2: "core"}, spacing,
                                   inverse_fields={name: r["inverse"][None] for name, r in out.items()})
    assert scores["Unaligned"]["dice_mean"][0] < 0.75
    for name, r in out.items():
        assert r["field"].shape == (2, 40, 36) and r["seconds"] > 0
        assert scores[name]["dice_mean"][0] > 0.9, name
        assert scores[name]["folding_pct"][0] == 0
        # A→B then B→A, registered separately; a wrong field convention would be millimetres off. 0.52
        # when ITK's threading was started by another test first, 0.4 alone: the bound leaves room for that.
        assert scores[name]["ice_mm"][0] < 0.75, name
        # our warp with the converted field reproduces ANTs' own warped image (same convention)
        ours = spatial.warp(moving[None], r["field"][None])[0]
        diff = (ours - r["warped"]).abs()[..., 4:-4, 4:-4]  # away from the border, where padding differs
        assert diff.mean() < 0.01 and diff.max() < 0.2, name
    # the affine recovered the translation: fixed point p lies at p + (3, -2) voxels in the moving image
    t_vox = spatial.normalised_to_voxel(out["ANTs-Affine"]["field"][None])[0].mean(dim=(1, 2))
    assert torch.allclose(t_vox, torch.tensor([3.0, -2.0]), atol=0.5)


def test_ants_parameters_are_recorded():
    rec = AntsParams(threads=3).record()
    assert rec["threads"] == 3 and rec["aff_random_sampling_rate"] == 1.0
    assert rec["reg_iterations"][-1] > 0  # SyN iterates at full resolution
    assert rec["affine_call"]["type_of_transform"] == "Affine" and "antspyx" in rec


def test_the_antspyx_default_preset_differs_only_where_the_fair_settings_do():
    fair, default = AntsParams.preset("fair").record(), AntsParams.preset("antspyx-default").record()
    assert {k for k in fair if fair[k] != default[k]} == {"aff_random_sampling_rate", "reg_iterations", "affine_call",
                                                          "syn_call", "aff_search"}
    assert default["aff_random_sampling_rate"] == 0.2 and default["reg_iterations"] == [40, 20, 0]
    with pytest.raises(ValueError, match="preset"):
        AntsParams.preset("fast")


def test_a_failed_ants_call_is_tried_once_more_and_a_second_failure_is_an_error(monkeypatch):
    import ants

    real, calls = ants.registration, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1 or kwargs.get("type_of_transform") == "SyNOnly" and fail_syn:
            raise RuntimeError("Registration failed with error code 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(ants, "registration", flaky)
    moving, fixed, _, _ = _pair()
    params = AntsParams(threads=1, aff_iterations=(20, 10), aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0),
                        reg_iterations=(5,), aff_search=())
    fail_syn = False
    out = register_pair(moving, fixed, (1.0, 1.0), params, inverse=False)
    assert len(calls) == 3 and out["ANTs-SyN"]["field"].shape == (2, 40, 36)  # affine twice, then SyN
    fail_syn = True
    with pytest.raises(RuntimeError, match="failed twice"):
        register_pair(moving, fixed, (1.0, 1.0), params, inverse=False)


def _rotated_pair(degrees: float, shape=(48, 48)):
    """A bar with a blob off its axis, and the same rotated by ``degrees`` about the centre in another
    contrast: (moving, fixed, moving labels, fixed labels), ``(1, *shape)`` each."""
    ii, jj = torch.meshgrid(*(torch.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")

    def labels(angle):
        c, s = math.cos(angle), math.sin(angle)
        x, y = c * ii + s * jj, -s * ii + c * jj
        lab = torch.zeros(shape, dtype=torch.long)
        lab[(x.abs() < 14) & (y.abs() < 6)] = 1
        lab[((x - 10) ** 2 + (y - 12) ** 2) < 20] = 2
        return lab[None]

    lab_f, lab_m = labels(0.0), labels(math.radians(degrees))
    return torch.tensor([-1.0, -0.3, 0.9])[lab_m], torch.tensor([-1.0, 0.6, -0.2])[lab_f], lab_m, lab_f


def test_the_multi_start_search_finds_a_rotation_that_the_centre_of_mass_start_misses(monkeypatch):
    import ants

    moving, fixed, lab_m, lab_f = _rotated_pair(90)
    searches = []
    real = ants.affine_initializer
    monkeypatch.setattr(ants, "affine_initializer", lambda *a, **kw: searches.append(1) or real(*a, **kw))
    dice = {}
    for search in ((), (30, 0.5, 20)):
        params = AntsParams(threads=1, aff_search=search, aff_iterations=(200, 100, 50), aff_shrink_factors=(4, 2, 1),
                            aff_smoothing_sigmas=(2, 1, 0), reg_iterations=(5,))
        field = register_pair(moving, fixed, (1.0, 1.0), params, inverse=False)["ANTs-Affine"]["field"]
        scores = metrics.score_methods(lab_m[None], lab_f[None], {"A": field[None]}, {1: "bar", 2: "blob"}, (1.0, 1.0))
        dice[search] = float(scores["A"]["dice_mean"][0])
    assert dice[()] < 0.5, dice  # a quarter turn: stuck from the centre of mass
    assert dice[(30, 0.5, 20)] > 0.9, dice  # found from the search's start
    assert len(searches) == 2  # the search, and the search from the principal axes (``aff_starts``)
    # 3D keeps the centre of mass start (aff_search_dims)
    vol = moving[..., None].expand(1, 48, 48, 8).contiguous(), fixed[..., None].expand(1, 48, 48, 8).contiguous()
    params = AntsParams(threads=1, aff_search=(30, 0.5, 20), aff_iterations=(20,), aff_shrink_factors=(1,),
                        aff_smoothing_sigmas=(0,), reg_iterations=(2,))
    register_pair(*vol, (1.0, 1.0, 1.0), params, inverse=False)
    assert len(searches) == 2


def _affine_file(ants, path, matrix) -> str:
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=2,
                                    matrix=np.asarray(matrix, dtype=float), translation=(1.0, -2.0))
    ants.write_transform(tx, str(path))
    return str(path)


def test_ants_affine_keeps_the_start_of_lowest_mutual_information(monkeypatch, tmp_path):
    """Four affines in 2D (centre of mass, the search, principal axes, identity): the one of lowest Mattes MI
    that does not mirror the image is ANTs-Affine, and an unknown start is named when the settings are made."""
    import ants

    moving, fixed, _, _ = _rotated_pair(20)
    calls, scores = [], []
    real_reg, real_mi = ants.registration, ants.image_mutual_information
    monkeypatch.setattr(ants, "registration", lambda *a, **kw: calls.append(kw.get("type_of_transform")) or
                        real_reg(*a, **kw))
    monkeypatch.setattr(ants, "image_mutual_information", lambda *a: scores.append(real_mi(*a)) or scores[-1])
    params = AntsParams(threads=1, aff_search=(30, 0.5, 5), aff_iterations=(50, 20), aff_shrink_factors=(2, 1),
                        aff_smoothing_sigmas=(1, 0), reg_iterations=(2,))
    out = register_pair(moving, fixed, (1.0, 1.0), params, inverse=False)
    assert calls == ["Affine"] * 4 + ["SyNOnly"] and len(scores) == 4
    kept = out["ANTs-Affine"]["warped"]
    f = _to_ants(ants, fixed, (1.0, 1.0))
    kept_mi = real_mi(f, ants.from_numpy(((kept[0] + 1) / 2).numpy().astype("float32")))
    assert kept_mi == pytest.approx(min(scores), abs=2e-3)
    turn, mirror = ([[0.9, -0.3], [0.3, 1.1]], [[-1.0, 0.0], [0.0, 1.0]])
    assert not _reflects(ants, {"fwdtransforms": [_affine_file(ants, tmp_path / "turn.mat", turn)]})
    assert _reflects(ants, {"fwdtransforms": [_affine_file(ants, tmp_path / "mirror.mat", mirror)]})
    with pytest.raises(ValueError, match="unknown ANTs affine start 'moments'"):  # before anything runs
        dataclasses.replace(params, aff_starts=("identity", "moments"))
