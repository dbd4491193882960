"""`fire evaluate` and `fire benchmark`: results.json layout, the tables and the figures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fire_lightning.cli import main
from fire_lightning.evaluate import FIRE_METHODS, METHODS, summarise

from .conftest import PHANTOM2D


def test_summarise_reports_mean_std_and_values():
    s = summarise([0.5, 0.7, float("nan")])
    assert s["mean"] == 0.6
    assert abs(s["std"] - np.std([0.5, 0.7], ddof=1)) < 1e-12
    assert s["values"] == [0.5, 0.7, None]


def test_train_then_evaluate_writes_results(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out
    out = run
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == list(FIRE_METHODS) == ["Unaligned", "FIRE-Affine", "FIRE"]
    n = results["meta"]["n_pairs"]
    assert n == 2 == len(results["pair_ids"])
    for method in FIRE_METHODS:
        for s in ("CSF", "GM", "WM", "mean"):
            entry = results["methods"][method][f"dice_{s}"]
            assert set(entry) == {"mean", "std", "values"} and len(entry["values"]) == n
            assert 0 <= entry["mean"] <= 1
    # Unaligned is the Dice of the test pairs' own labels, pair by pair, in order
    from fire_lightning.metrics import dice_per_label
    from fire_lightning.train import load_run_config, make_datamodule

    dm = make_datamodule(load_run_config(run))
    ds = dm.test_dataset()
    for i in range(len(ds)):
        pair = ds[i]
        assert results["pair_ids"][i] == pair["id"]
        d = dice_per_label(pair["moving_label"][None], pair["fixed_label"][None], [1, 2, 3])[0]
        assert results["methods"]["Unaligned"]["dice_mean"]["values"][i] == pytest.approx(float(d.nanmean()))
    assert "FIRE-Affine" in printed and "Dice WM (%)" in printed
    p = results["paired"]["FIRE vs FIRE-Affine"]
    fire = results["methods"]["FIRE"]["dice_mean"]["values"]
    aff = results["methods"]["FIRE-Affine"]["dice_mean"]["values"]
    assert p["n"] == n and abs(p["mean_diff"] - float(np.mean(np.subtract(fire, aff)))) < 1e-12
    for f in ("results.md", "example.png", "dice_boxplot.png", "table2.csv", "per_pair.csv"):
        assert (out / f).stat().st_size > 0


def test_benchmark_runs_ants_on_the_same_pairs_and_writes_tables_2_and_4(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    ckpt = run / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    # a checkpoint inside a run folder finds the run's data config; --max-pairs keeps it quick
    assert main(["benchmark", str(ckpt), "--max-pairs", "2", "--threads", "1", "--out", str(tmp_path / "bm")]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "bm" / "results.json").read_text())
    assert list(results["methods"]) == list(METHODS) == ["Unaligned", "ANTs-Affine", "FIRE-Affine", "ANTs-SyN", "FIRE"]
    assert results["meta"]["n_pairs"] == 2 and results["meta"]["threads"] == 1
    ants = results["meta"]["ants"]
    assert ants["threads"] == 1 and ants["aff_random_sampling_rate"] == 1.0 and ants["reg_iterations"][-1] > 0
    for method in METHODS:
        res = results["methods"][method]
        for key in ("dice_mean", "dice_WM", "hd95_mean", "hd95_CSF"):
            assert len(res[key]["values"]) == 2, (method, key)
        if method != "Unaligned":
            for key in ("folding_pct", "logjac_std", "ice_mm"):
                assert len(res[key]["values"]) == 2, (method, key)
    for method in ("ANTs-Affine", "ANTs-SyN", "FIRE"):
        assert all(v > 0 for v in results["methods"][method]["seconds_per_pair"]["values"])
    # ANTs registers these pairs (multi-modal, 20-50 % scalings) well: a weak baseline would not
    assert results["methods"]["ANTs-SyN"]["dice_mean"]["mean"] > results["methods"]["Unaligned"]["dice_mean"]["mean"] + 0.2
    assert "Table 2" in printed and "Table 4" in printed and "ANTs-SyN / method" in printed
    with open(tmp_path / "bm" / "table2.csv") as fh:
        rows = list(csv.reader(fh))
    assert [r[0] for r in rows[1:]] == list(METHODS) and rows[0][:2] == ["method", "Dice CSF (%)"]
    for row in rows[1:]:  # the table shows the JSON's means and stds
        mean, std = row[rows[0].index("Dice mean (%)")].rstrip(")").split(" (")
        entry = results["methods"][row[0]]["dice_mean"]
        assert float(mean) == pytest.approx(100 * entry["mean"], abs=0.006)
        assert float(std) == pytest.approx(100 * entry["std"], abs=0.006)
    assert results["meta"]["checkpoint"] == str(ckpt) and results["meta"]["data"]["name"] == "phantom"
    md = (tmp_path / "bm" / "results.md").read_text()
    assert "FIRE mean Dice ≥ ANTs-SyN mean Dice" in md and "10× faster" in md
    with open(tmp_path / "bm" / "per_pair.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * len(METHODS)
    for f in ("results.md", "table4.csv", "example.png", "dice_boxplot.png"):
        assert (tmp_path / "bm" / f).stat().st_size > 0


def test_benchmark_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["benchmark", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_evaluate_a_corrupt_checkpoint_is_a_one_line_error(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.ckpt" in err[0]


def test_demo_trains_then_benchmarks_into_the_run_folder(tiny_overrides, tmp_path, capsys):
    assert main(["demo", "--config", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    results = json.loads((run / "benchmark" / "results.json").read_text())
    assert list(results["methods"]) == list(METHODS)
    assert results["meta"]["n_pairs"] == 2  # TINY: 1 test image × 2 transforms
    printed = capsys.readouterr().out
    assert "Table 4" in printed and "Explainability" in printed  # the demo reports the Grad-CAM measures too
    assert len(results["explain"]["measures"]["symmetry/T_nr"]["values"]) == 2
    assert (run / "benchmark" / "gradcam_example.png").is_file() and list((run / "gradcam").glob("*.png"))


def test_benchmark_refuses_a_data_config_that_moves_the_test_anatomy(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    capsys.readouterr()
    assert main(["benchmark", str(run), "data.split.gap_mm=0", "--no-ants"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.split" in err[0] and "last.ckpt" in err[0]
    assert not (run / "benchmark").exists()
