"""The shift benchmark: its pairs set the factor they say, the training range is read off the config,
and ``run_shift`` scores every level and writes its reports."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from data_modules.shift import FACTORS, Factor, ShiftPairs, coarser, control_points_for, control_spacing_mm
from fire_lightning import truth
from fire_lightning.config import data_section, load_config
from fire_lightning.inference import InferenceModel
from fire_lightning.shift import check, run_shift, summarise

from .conftest import PHANTOM2D, TINY

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_cfg():
    return data_section(load_config(PHANTOM2D))


def _factor(name: str) -> Factor:
    return next(f for f in FACTORS if f.name == name)


def test_levels_inside_the_training_range_follow_the_config(data_cfg):
    a = data_cfg.augment
    rotation = _factor("rotation_deg")
    assert rotation.inside(a.rotate_deg, data_cfg) and not rotation.inside(a.rotate_deg + 1, data_cfg)
    assert _factor("elastic_mm").inside(a.elastic_max_mm, data_cfg)
    assert not _factor("elastic_mm").inside(a.elastic_max_mm + 5, data_cfg)
    assert _factor("contrast").inside("T1", data_cfg) and not _factor("contrast").inside("IR", data_cfg)
    assert not _factor("slice").inside("edge-superior", data_cfg) and _factor("slice").inside("middle", data_cfg)
    assert not _factor("resolution_mm").inside(2 * data_cfg.spacing, data_cfg)
    # the control grid: the number of points for a spacing gives back about that spacing
    k = control_points_for(data_cfg, 22.0)
    assert abs(control_spacing_mm(data_cfg, k) - 22.0) < 3.0


@pytest.fixture(scope="module")
def pairs(data_cfg):
    return ShiftPairs(data_cfg, factors=(_factor("rotation_deg"), _factor("resolution_mm"), _factor("slice")))


def test_a_rotation_level_is_the_rotation_of_the_known_transform(pairs, data_cfg):
    for i, (factor, level) in enumerate(pairs.levels):
        if factor == "rotation_deg" and level in (0.0, 30.0):
            item = pairs[i]
            angle = truth.affine_parameters(item["true_theta"][None], data_cfg.size,
                                            (data_cfg.spacing,) * 2)["rotation_deg"]
            assert abs(angle.abs().item() - level) < 0.5, (item["id"], angle)


def test_pairs_are_test_anatomy_with_their_own_seeds(pairs):
    ranges = pairs.prep.ranges
    test = {z for a, b in ranges["test"] for z in range(a, b)}
    trained = {z for a, b in ranges["train"] for z in range(a, b)}
    zs = {z for *_, z, _ in pairs.items}
    assert not zs & trained  # never a training slice
    inside = {z for f, level, *_, z, _ in pairs.items if not str(level).startswith("edge")}
    assert inside <= test
    assert len({p["id"] for p in (pairs[0], pairs[1])}) == 2
    torch.testing.assert_close(pairs[0]["moving"], pairs[0]["moving"])  # seeded: the same pair twice


def test_a_coarser_resolution_keeps_the_grid_and_loses_detail():
    img = torch.rand(1, 64, 72, generator=torch.Generator().manual_seed(0))
    low = coarser(img, 3.0)
    assert low.shape == img.shape
    assert low.std() < 0.5 * img.std()


def test_run_shift_scores_every_level_and_writes_its_reports(data_cfg, tmp_path):
    model = InferenceModel(OmegaConf.to_container(load_config(PHANTOM2D, TINY), resolve=True)).eval()
    factors = (_factor("rotation_deg"), _factor("contrast"))
    out = run_shift(model, data_cfg, tmp_path / "shift", ants=None, refine=None, threads=1, factors=factors,
                    max_per_level=1)
    levels = [(r["factor"], r["level"]) for r in out["rows"]]
    assert levels == [(f.name, level) for f in factors for level in f.levels]
    assert all(r["n"] == 1 and "FIRE" in r and "Unaligned" in r for r in out["rows"])
    assert [r["inside"] for r in out["rows"] if r["factor"] == "contrast"] == [True, False, False, False]
    for name in ("shift.md", "shift.csv", "shift.json", "shift.png", "pairs/results.json"):
        assert (tmp_path / "shift" / name).is_file()
    assert json.loads((tmp_path / "shift" / "shift.json").read_text())["meta"]["n_pairs"] == len(levels)


def test_the_shift_targets_name_the_worst_level():
    rows = [{"factor": "rotation_deg", "level": 10.0, "inside": True, "fire_minus_syn": -1.0,
             "fire_over_unaligned_min": 30.0},
            {"factor": "rotation_deg", "level": 20.0, "inside": True, "fire_minus_syn": -4.0,
             "fire_over_unaligned_min": 8.0},
            {"factor": "rotation_deg", "level": 30.0, "inside": False, "fire_minus_syn": -20.0,
             "fire_over_unaligned_min": 1.0}]
    met_syn, met_unaligned = check(rows)
    assert "MISSED (worst -4.00 at rotation_deg = 20.0)" in met_syn
    assert "MISSED (worst pair +8.00 at rotation_deg = 20.0)" in met_unaligned
    assert all("met" in t for t in check(rows[:1]))
    assert summarise({}, FACTORS, None) == []
