"""`fire ablation`: one table of several runs' benchmarks, each row with the command that reproduces it."""

from __future__ import annotations

import csv
import json

import pytest

from fire_lightning.ablation import ablation, overrides
from fire_lightning.cli import main
from fire_lightning.config import load_config, to_yaml

from .conftest import ROOT

BASE = ROOT / "experiments" / "phantom2d_paper.yaml"


def _entry(values):
    return {"mean": sum(values) / len(values), "std": 0.0, "values": values}


def _run(tmp_path, name, args, dice, pair_ids=("p0", "p1")):
    """A run folder as `fire train` + `fire benchmark` leave it, with made-up scores."""
    run = tmp_path / name
    (run / "benchmark").mkdir(parents=True)
    cfg = load_config(BASE, [f"run.name={name}", *args])
    (run / "config.yaml").write_text(to_yaml(cfg))
    methods = {"Unaligned": {"dice_mean": _entry([0.3, 0.4])},
               "ANTs-SyN": {"dice_mean": _entry([0.8, 0.8]), "seconds_per_pair": _entry([0.5, 0.6])},
               "FIRE-Affine": {"dice_mean": _entry([dice - 0.01] * 2), "affine_err_mm": _entry([2.0, 3.0])},
               "FIRE": {"dice_mean": _entry([dice] * 2), "folding_pct": _entry([0.1, 0.0]),
                        "seconds_per_pair": _entry([0.01, 0.02])}}
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("step,train/loss,val/dice_mean,val/affine_err_mm\n"
                                             f"10,1.0,,\n299,,{dice - 0.1},3.0\n599,,{dice - 0.05},2.0\n610,0.5,,\n")
    (run / "benchmark" / "results.json").write_text(json.dumps(
        {"pair_ids": list(pair_ids), "methods": methods, "meta": {"iterations": 1200}}))
    return run


def test_overrides_are_the_keys_that_differ():
    base = {"model": {"synthesis": {"width": 8}, "affine": {"head": "regress"}}, "run": {"name": "a"},
            "data": {"size": [64, 72]}}
    run = {"model": {"synthesis": {"width": 8}, "affine": {"head": "match"}}, "run": {"name": "b"},
           "data": {"size": [32, 32]}}
    assert overrides(run, base) == ["data.size=[32,32]", "model.affine.head=match"]  # run.* is ignored
    assert overrides(base, base) == []


def test_ablation_table_has_one_row_per_run_and_method_and_the_commands(tmp_path, capsys):
    a = _run(tmp_path, "paper", [], 0.6)
    b = _run(tmp_path, "match", ["model.affine.head=match", "optim.affine_warmup_steps=600"], 0.74)
    assert main(["ablation", str(a), str(b), "--base", str(BASE), "--out", str(tmp_path / "ab")]) == 0
    text = (tmp_path / "ab" / "ablation.md").read_text()
    assert f"- paper: `fire train {BASE}`" in text
    assert f"- match: `fire train {BASE} model.affine.head=match optim.affine_warmup_steps=600`" in text
    with open(tmp_path / "ab" / "ablation.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["Unaligned", "ANTs-SyN", "paper: FIRE-Affine", "paper: FIRE",
                                           "match: FIRE-Affine", "match: FIRE"]
    assert rows[5]["Dice mean (%)"] == "74.00 (0.00)" and rows[2]["affine error (mm)"] == "2.50 (0.00)"
    assert rows[1]["s / pair"] == "0.5500 (0.0000)" and rows[0]["iterations"] == "–" and rows[3]["iterations"] == "1200"
    assert "2 test pairs" in capsys.readouterr().out
    # the last validation, on the FIRE row only: what the variant was chosen on
    assert rows[5]["val Dice (%)"] == "69.00" and rows[5]["val affine err (mm)"] == "2.00"
    assert rows[5]["val rotation r"] == "–" and rows[4]["val Dice (%)"] == "–"


def test_ablation_refuses_runs_scored_on_other_pairs_or_not_benchmarked(tmp_path):
    a = _run(tmp_path, "a", [], 0.6)
    b = _run(tmp_path, "b", [], 0.6, pair_ids=("p0", "p2"))
    with pytest.raises(ValueError, match="other test pairs"):
        ablation([a, b], BASE)
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="fire benchmark"):
        ablation([a, tmp_path / "c"], BASE)


def test_ablation_takes_shares_training_time_and_validation_on_the_same_pairs(tmp_path):
    a = _run(tmp_path, "a", [], 0.6)
    b = _run(tmp_path, "b", ["model.nonrigid.head=unet"], 0.7)
    for run, dice in ((a, 0.55), (b, 0.66)):
        res = json.loads((run / "benchmark" / "results.json").read_text())
        res["nonrigid_share"] = {"FIRE": {"dice": dice, "affine_dice": 0.5, "share": dice - 0.5}}
        (run / "benchmark" / "results.json").write_text(json.dumps(res))
        (run / "benchmark-val").mkdir()
        (run / "benchmark-val" / "results.json").write_text(json.dumps(
            {"pair_ids": ["v0"], "methods": {"FIRE": {"dice_mean": _entry([dice])}}}))
    (b / "training.json").write_text(json.dumps({"iterations": 1200, "seconds": 431.0}))
    text = ablation([a, b], BASE, tmp_path / "ab")
    assert "each run scored on the same 1 validation pairs" in text
    with open(tmp_path / "ab" / "ablation.csv") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["b: FIRE"]["non-rigid share"] == "0.16" and rows["b: FIRE"]["val Dice (%)"] == "66.00"
    assert rows["b: FIRE"]["training (s)"] == "431" and rows["a: FIRE"]["training (s)"] == "–"
    (b / "benchmark-val" / "results.json").write_text(json.dumps({"pair_ids": ["v9"], "methods": {}}))
    with pytest.raises(ValueError, match="other validation pairs"):
        ablation([a, b], BASE)
    res = json.loads((b / "benchmark" / "results.json").read_text())
    res["meta"]["data"] = {"augment": {"rotate_deg": 20.0}}
    (b / "benchmark" / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="other test pairs"):
        ablation([a, b], BASE)
