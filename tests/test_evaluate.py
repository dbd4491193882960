"""`fire evaluate`: results.json layout, the Dice table and the figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fire_lightning.cli import main
from fire_lightning.evaluate import METHODS, summarise

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
    assert list(results["methods"]) == list(METHODS) == ["Unaligned", "FIRE-Affine", "FIRE"]
    n = results["meta"]["n_pairs"]
    assert n == 2 == len(results["pair_ids"])
    for method in METHODS:
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
    assert "FIRE-Affine" in printed and "Dice WM" in printed
    p = results["paired"]["FIRE vs FIRE-Affine"]
    fire = results["methods"]["FIRE"]["dice_mean"]["values"]
    aff = results["methods"]["FIRE-Affine"]["dice_mean"]["values"]
    assert p["n"] == n and abs(p["mean_diff"] - float(np.mean(np.subtract(fire, aff)))) < 1e-12
    for f in ("results.md", "example.png", "dice_boxplot.png"):
        assert (out / f).stat().st_size > 0


def test_evaluate_a_corrupt_checkpoint_is_a_one_line_error(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.ckpt" in err[0]
