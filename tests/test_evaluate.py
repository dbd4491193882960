"""`fire evaluate` and `fire benchmark`: results.json layout, the tables and the figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fire_lightning.cli import DEMO_REFINE_STEPS, main
from fire_lightning.evaluate import FIRE_METHODS, METHODS, TRUE_METHODS, summarise

from .conftest import PHANTOM2D


def test_summarise_reports_mean_std_and_values():
    s = summarise([0.5, 0.7, float("nan")])
    assert s["mean"] == 0.6
    assert abs(s["std"] - np.std([0.5, 0.7], ddof=1)) < 1e-12
    assert s["values"] == [0.5, 0.7, None]


def test_paired_differences_carry_a_95_percent_interval_of_their_mean():
    from fire_lightning.tables import paired

    a, b = summarise([0.70, 0.80, 0.90, None]), summarise([0.69, 0.78, 0.87, 0.5])
    p = paired(a, b)  # differences 0.01, 0.02, 0.03 (the pair without a value left out): mean 0.02, std 0.01
    assert p["n"] == 3 and abs(p["mean_diff"] - 0.02) < 1e-12 and abs(p["std_diff"] - 0.01) < 1e-12
    assert abs(p["ci95"] - 4.302653 * 0.01 / np.sqrt(3)) < 1e-8  # t(0.975, 2 degrees of freedom) = 4.3027
    assert paired(summarise([0.7]), summarise([0.6]))["ci95"] is None  # one pair: no interval
    wide = paired(summarise([0.7, 0.9]), summarise([0.8, 0.8]))  # +0.1 and -0.1: an interval around 0
    assert abs(wide["mean_diff"]) < 1e-12 and wide["ci95"] > 0.1


def test_train_then_evaluate_writes_results(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out
    out = run
    results = json.loads((out / "results.json").read_text())
    assert list(FIRE_METHODS) == ["Unaligned", "FIRE-Affine", "FIRE"]
    assert list(results["methods"]) == ["True", "True-Affine", *FIRE_METHODS]  # the phantom's transforms are known
    n = results["meta"]["n_pairs"]
    assert n == 2 == len(results["pair_ids"])
    for method in TRUE_METHODS + FIRE_METHODS:
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
    # the ceiling: the true inverse scores 100 % without double resampling, and below with it;
    # the affine errors are measured for the method with an affine part
    true, true_aff = results["methods"]["True"], results["methods"]["True-Affine"]
    assert true["dice1r_mean"]["values"] == [1.0, 1.0] and true_aff["dice1r_mean"]["mean"] < 1.0
    assert 0.6 < true["dice_mean"]["mean"] < 1.0
    assert true["dice_mean"]["mean"] > results["methods"]["Unaligned"]["dice_mean"]["mean"]
    fire_aff = results["methods"]["FIRE-Affine"]
    for key in ("affine_err_mm", "affine_err_translation_mm", "affine_err_rotation_deg", "affine_err_scale_pct",
                "affine_err_shear_pct"):
        assert len(fire_aff[key]["values"]) == n and fire_aff[key]["mean"] >= 0, key
    assert "affine_err_mm" not in results["methods"]["FIRE"] and "Affine error against the known transform" in printed
    assert "FIRE-Affine" in printed and "Dice WM (%)" in printed
    p = results["paired"]["FIRE vs FIRE-Affine"]
    fire = results["methods"]["FIRE"]["dice_mean"]["values"]
    aff = results["methods"]["FIRE-Affine"]["dice_mean"]["values"]
    assert p["n"] == n and abs(p["mean_diff"] - float(np.mean(np.subtract(fire, aff)))) < 1e-12
    lo, hi = 100 * (p["mean_diff"] - p["ci95"]), 100 * (p["mean_diff"] + p["ci95"])
    assert f"FIRE vs FIRE-Affine: mean Dice difference {100 * p['mean_diff']:+.2f} (std {100 * p['std_diff']:.2f}; " \
           f"95 % CI {lo:+.2f} to {hi:+.2f}) points" in (out / "results.md").read_text()
    for f in ("results.md", "example.png", "dice_boxplot.png", "table2.csv", "per_pair.csv"):
        assert (out / f).stat().st_size > 0


def test_benchmark_runs_ants_on_the_same_pairs_and_writes_tables_2_and_4(tiny_overrides, tmp_path, capsys,
                                                                         monkeypatch):
    from fire_lightning import baselines, benchmark_timing

    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    ckpt = run / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    # Table 4's CPU times: FIRE and FIRE+IO on each pair just before ANTs (one run of each), no pass afterwards
    events = []
    for module, name, tag in ((baselines, "register_pair", "ANTs"), (benchmark_timing, "seconds_to_register", "FIRE")):
        # the defaults bind this iteration's original function (read before monkeypatch replaces it) and tag
        def traced(*a, _f=getattr(module, name), _tag=tag, **k):  # noqa: B008
            events.append(_tag + ("+IO" if k.get("refine") else ""))
            return _f(*a, **k)
        monkeypatch.setattr(module, name, traced)
    # a checkpoint inside a run folder finds the run's data config; --max-pairs keeps it quick
    assert main(["benchmark", str(ckpt), "--max-pairs", "2", "--threads", "1", "--out", str(tmp_path / "bm"),
                 "--refine", "3", "--refine-curve", "3,0,1", "--ants-ice-every", "2"]) == 0
    printed = capsys.readouterr().out
    # then only the refinement curve's timings (3 settings x 2 pairs): no separate FIRE or FIRE+IO pass
    assert events[:6] == ["FIRE", "FIRE+IO", "ANTs"] * 2 and events[6:] == ["FIRE+IO"] * 6
    results = json.loads((tmp_path / "bm" / "results.json").read_text())
    assert "just before ANTs" in results["meta"]["timing"]
    assert list(METHODS) == ["Unaligned", "ANTs-Affine", "FIRE-Affine", "ANTs-SyN", "FIRE"]
    assert list(results["methods"]) == [*TRUE_METHODS, *METHODS, "FIRE+IO"]
    assert results["meta"]["n_pairs"] == 2 and results["meta"]["threads"] == 1
    assert results["meta"]["refine"]["steps"] == 3
    assert results["meta"]["iterations"] == 1  # the checkpoint's, read without a trainer
    io = results["methods"]["FIRE+IO"]
    assert all(v > 0 for v in io["seconds_per_pair"]["values"]) and len(io["ice_mm"]["values"]) == 2
    assert len(io["affine_err_mm"]["values"]) == 2 and "FIRE+IO vs ANTs-SyN" in results["paired"]
    ants = results["meta"]["ants"]
    assert ants["threads"] == 1 and ants["aff_random_sampling_rate"] == 1.0 and ants["reg_iterations"][-1] > 0
    for method in TRUE_METHODS + METHODS:
        res = results["methods"][method]
        for key in ("dice_mean", "dice_WM", "hd95_mean", "hd95_CSF", "dice1r_mean"):
            assert len(res[key]["values"]) == 2, (method, key)
        if method not in ("Unaligned", *TRUE_METHODS):
            for key in ("folding_pct", "logjac_std", "ice_mm"):
                assert len(res[key]["values"]) == 2, (method, key)
    # --ants-ice-every 2: ANTs registered pair 0 both ways, pair 1 one way (no ICE; timed all the same)
    assert ants["ice_every"] == 2
    for method in ("ANTs-Affine", "ANTs-SyN"):
        ice = results["methods"][method]["ice_mm"]["values"]
        assert ice[0] is not None and ice[0] >= 0 and ice[1] is None, method
    fire_ice = results["methods"]["FIRE"]["ice_mm"]["values"]
    assert all(v is not None for v in fire_ice)
    note = next(line for line in (tmp_path / "bm" / "results.md").read_text().splitlines()
                if line.startswith("ICE of ANTs"))
    assert "over the 1 of the 2 pairs" in note and f"FIRE {fire_ice[0]:.2f} (0.00)" in note
    # ANTs-Affine's affine, read off its field, is scored against the known transform like FIRE's
    ants_err = results["methods"]["ANTs-Affine"]["affine_err_mm"]
    assert ants_err["mean"] < results["methods"]["FIRE-Affine"]["affine_err_mm"]["mean"]  # an untrained FIRE
    assert ants_err["mean"] < 5.0  # mm
    for method in ("ANTs-Affine", "ANTs-SyN", "FIRE"):
        assert all(v > 0 for v in results["methods"][method]["seconds_per_pair"]["values"])
    # ANTs registers these pairs (multi-modal, 20-50 % scalings) well: a weak baseline would not
    assert (results["methods"]["ANTs-SyN"]["dice_mean"]["mean"]
            > results["methods"]["Unaligned"]["dice_mean"]["mean"] + 0.2)
    assert "Table 2" in printed and "Table 4" in printed and "ANTs-SyN / method" in printed
    with open(tmp_path / "bm" / "table2.csv") as fh:
        rows = list(csv.reader(fh))
    assert ([r[0] for r in rows[1:]] == [*TRUE_METHODS, *METHODS, "FIRE+IO"]
            and rows[0][:2] == ["method", "Dice CSF (%)"])
    for row in rows[1:]:  # the table shows the JSON's means and stds
        mean, std = row[rows[0].index("Dice mean (%)")].rstrip(")").split(" (")
        entry = results["methods"][row[0]]["dice_mean"]
        assert float(mean) == pytest.approx(100 * entry["mean"], abs=0.006)
        assert float(std) == pytest.approx(100 * entry["std"], abs=0.006)
    assert results["meta"]["checkpoint"] == str(ckpt) and results["meta"]["data"]["name"] == "phantom"
    md = (tmp_path / "bm" / "results.md").read_text()
    assert "FIRE non-rigid share ≥ 0.7" in md and "FIRE mean Dice ≥ ANTs-SyN − 1" in md
    assert "20× faster" in md and "FIRE+IO mean Dice ≥ ANTs-SyN + 1" in md and "FIRE+IO ≥ 5× faster" in md
    with open(tmp_path / "bm" / "per_pair.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * (len(TRUE_METHODS + METHODS) + 1)
    with open(tmp_path / "bm" / "affine_error.csv") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == ["ANTs-Affine", "FIRE-Affine", "FIRE+IO"]
    for f in ("results.md", "table4.csv", "example.png", "dice_boxplot.png"):
        assert (tmp_path / "bm" / f).stat().st_size > 0
    # the refinement curve: its N = 0 is the network, its N = 3 the benchmark's FIRE+IO (--refine 3),
    # pair by pair; the ANTs rows of the same run are its reference lines
    curve = json.loads((tmp_path / "bm" / "refine_curve.json").read_text())
    assert [r["steps"] for r in curve["rows"]] == [0, 1, 3] and curve["meta"]["n_pairs"] == 2
    dice = {r["steps"]: r["dice_mean"]["values"] for r in curve["rows"]}
    assert dice[0] == pytest.approx(results["methods"]["FIRE"]["dice_mean"]["values"], abs=1e-9)
    assert dice[3] == pytest.approx(io["dice_mean"]["values"], abs=1e-3)
    assert set(curve["reference"]) == {"ANTs-Affine", "ANTs-SyN"}
    assert all(r["seconds_per_pair"]["mean"] > 0 for r in curve["rows"])
    with open(tmp_path / "bm" / "refine_curve.csv") as fh:
        assert [(r["method"], r["N"]) for r in csv.DictReader(fh)] == [
            ("FIRE", "0"), ("FIRE+IO", "1"), ("FIRE+IO", "3"), ("ANTs-Affine", "–"), ("ANTs-SyN", "–")]
    assert (tmp_path / "bm" / "refine_curve.png").stat().st_size > 0 and "refinement curve" in printed


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
    assert list(results["methods"]) == [*TRUE_METHODS, *METHODS, "FIRE+IO"]  # the demo refines too
    assert results["meta"]["refine"]["steps"] == DEMO_REFINE_STEPS
    assert results["meta"]["n_pairs"] == 2  # TINY: 1 test image × 2 transforms
    printed = capsys.readouterr().out
    assert "Table 4" in printed and "Explainability" in printed  # the demo reports the Grad-CAM measures too
    assert len(results["explain"]["measures"]["symmetry/T_nr"]["values"]) == 2
    assert (run / "benchmark" / "gradcam_example.png").is_file() and list((run / "gradcam").glob("*.png"))


def test_benchmark_refuses_a_data_config_that_moves_the_test_anatomy(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    capsys.readouterr()
    assert main(["benchmark", str(run), "data.phantom.split.gap_mm=0", "--no-ants"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.phantom.split" in err[0] and "last.ckpt" in err[0]
    # synthetic subjects warp the whole template, the split's test slices too: not for a model of the split
    assert main(["benchmark", str(run), "data.phantom.subjects.train=5", "--no-ants"]) == 2
    assert "data.phantom.subjects" in capsys.readouterr().err
    assert not (run / "benchmark").exists()
    # training subjects held out by the split (in-plane, its training slices): the split's test pairs, allowed
    assert main(["benchmark", str(run), "data.phantom.subjects.train=5", "data.phantom.subjects.held_out=split",
                 "--no-ants"]) == 0


def test_benchmark_scores_validation_pairs_with_other_inference_passes_and_refuses_other_model_keys(
        tiny_overrides, tmp_path, capsys):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", "model.affine.fine_passes=0",
                 *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    capsys.readouterr()
    assert main(["benchmark", str(run), "model.synthesis.width=16", "--no-ants"]) == 2  # would be silently ignored
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.synthesis.width" in err[0] and "model.affine.passes_eval" in err[0]
    with pytest.warns(FutureWarning, match=r"model\.affine_passes_eval → model\.affine\.passes_eval"):  # an old name
        assert main(["benchmark", str(run), "model.affine_passes_eval=2", "--split", "val", "--no-ants"]) == 0
    out = run / "benchmark-val"
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["split"] == "val" and results["meta"]["affine_passes_eval"] == 2
    with open(out / "per_pair.csv") as f:
        ids = {row["pair_id"] for row in csv.DictReader(f)}
    assert len(ids) == 2 and all(i.startswith("val-") for i in ids)  # TINY: 1 validation image × 2 transforms
    assert not (run / "benchmark").exists()
    capsys.readouterr()  # a model without a fine level cannot be given fine passes: one line, nothing written
    assert main(["benchmark", str(run), "model.affine.fine_passes_eval=2", "--no-ants"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "affine.fine_passes_eval=2" in err[0] and "without that level" in err[0]
    assert main(["benchmark", str(run), "model.affine.fine_passes=2", "--no-ants"]) == 2  # a training key
    assert "model.affine.fine_passes_eval" in capsys.readouterr().err
    assert not (run / "benchmark").exists()


def test_a_run_with_a_fine_level_can_be_rescored_with_more_fine_passes(tiny_overrides, tmp_path):
    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", "model.affine.head=match",
                 "model.affine.fine_passes=1", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    assert main(["benchmark", str(run), "model.affine.fine_passes_eval=2", "--split", "val", "--no-ants"]) == 0
    meta = json.loads((run / "benchmark-val" / "results.json").read_text())["meta"]
    assert meta["affine_fine_passes_eval"] == 2 and meta["affine_passes_eval"] == 4  # the config's, unchanged
    assert meta["affine_symmetric_passes_eval"] == 1  # the config's
    assert main(["benchmark", str(run), "model.affine.symmetric_passes_eval=0", "--split", "val", "--no-ants",
                 "--out", str(tmp_path / "one-sided")]) == 0
    one_sided = json.loads((tmp_path / "one-sided" / "results.json").read_text())
    assert one_sided["meta"]["affine_symmetric_passes_eval"] == 0
    symmetric = json.loads((run / "benchmark-val" / "results.json").read_text())
    assert one_sided["methods"]["FIRE-Affine"]["affine_err_mm"] != symmetric["methods"]["FIRE-Affine"]["affine_err_mm"]
    assert symmetric["meta"]["nonrigid_symmetric_passes_eval"] == 1  # the config's
    assert main(["benchmark", str(run), "model.nonrigid.symmetric_passes_eval=0", "--split", "val", "--no-ants",
                 "--out", str(tmp_path / "nonrigid-one-sided")]) == 0
    one_sided_nr = json.loads((tmp_path / "nonrigid-one-sided" / "results.json").read_text())["meta"]
    assert one_sided_nr["nonrigid_symmetric_passes_eval"] == 0 and one_sided_nr["affine_symmetric_passes_eval"] == 1


def test_the_benchmark_times_the_pairs_it_scored_without_making_them_again(tiny_overrides, tmp_path, monkeypatch):
    """Table 4 times the pairs kept from the scoring pass (a synthetic pair costs tens of ms to make);
    pairs too large to keep are made again, one at a time."""
    from torch.utils.data import Dataset

    from fire_lightning import evaluate as ev
    from fire_lightning.config import load_config
    from fire_lightning.module import FIREModule
    from fire_lightning.train import make_datamodule

    cfg = load_config(PHANTOM2D, tiny_overrides)
    dm = make_datamodule(cfg)
    pairs = dm.test_dataset()
    fetched = []

    class Counted(Dataset):
        def __len__(self):
            return len(pairs)

        def __getitem__(self, i):
            fetched.append(i)
            return pairs[i]

    model = FIREModule(cfg, label_names=dm.label_names, spacing=dm.spacing)
    n = len(pairs)
    import fire_lightning.benchmark_timing as timing

    for keep, fetches in ((timing.TIMING_KEEP_BYTES, n + 1), (0, 2 * n + 2)):  # + the first pair's look and warm-up
        monkeypatch.setattr(timing, "TIMING_KEEP_BYTES", keep)
        fetched.clear()
        results = ev.evaluate(model, Counted(), tmp_path / f"keep{keep}", batch_size=1)
        assert len(fetched) == fetches, keep
        seconds = results["methods"]["FIRE"]["seconds_per_pair"]
        assert len(seconds["values"]) == n and seconds["mean"] > 0


def test_nonrigid_share_is_the_part_of_the_elastic_ceiling_a_method_recovers():
    from fire_lightning.evaluate import nonrigid_shares

    def entry(mean):
        return {"dice_mean": {"mean": mean, "std": 0.0, "values": [mean]}}

    summary = {"True": entry(0.84), "True-Affine": entry(0.72), "FIRE-Affine": entry(0.70), "FIRE": entry(0.79),
               "ANTs-Affine": entry(0.74), "ANTs-SyN": entry(0.80),
               "FIRE+IO": {**entry(0.82), "dice_affine_part_mean": {"mean": 0.73, "std": 0.0, "values": [0.73]}}}
    shares = nonrigid_shares(summary)
    assert shares["True"]["share"] == pytest.approx(1.0)
    assert shares["FIRE"]["share"] == pytest.approx(0.09 / 0.12)
    assert shares["ANTs-SyN"]["share"] == pytest.approx(0.06 / 0.12)
    assert shares["FIRE+IO"]["share"] == pytest.approx(0.09 / 0.12)
    assert nonrigid_shares({k: v for k, v in summary.items() if k != "True"}) == {}  # no known transform


def test_benchmark_protocols_nonrigid_passes_and_the_shift_benchmark_from_the_command_line(tiny_overrides, tmp_path,
                                                                                            capsys, monkeypatch):
    """``--protocol mild`` scores the earlier (weak elastic) test pairs in their own folder; the U-Net's passes
    at inference change on a trained run; ``--shift`` writes the shift reports (one pair per level here)."""
    from data_modules import shift

    assert main(["train", str(PHANTOM2D), "trainer.fast_dev_run=true", "model.nonrigid.head=unet",
                 "model.nonrigid.channels=[4,8,8]", *tiny_overrides]) == 0
    run = next((tmp_path / "runs").iterdir())
    assert main(["benchmark", str(run), "--no-ants", "--protocol", "mild", "model.nonrigid.passes_eval=3"]) == 0
    results = json.loads((run / "benchmark-mild" / "results.json").read_text())
    assert results["meta"]["data"]["augment"]["elastic_control_points"] == 7
    assert results["nonrigid_share"]["True"]["share"] == pytest.approx(1.0)
    assert "field_err_nonaffine_mm" in results["methods"]["FIRE"]
    monkeypatch.setattr(shift, "FACTORS", shift.FACTORS[2:3])  # rotation only
    capsys.readouterr()
    assert main(["benchmark", str(run), "--shift", "--no-ants", "--max-pairs", "1"]) == 0
    assert "rotation_deg" in capsys.readouterr().out
    rows = json.loads((run / "shift" / "shift.json").read_text())["rows"]
    assert [r["level"] for r in rows] == list(shift.FACTORS[0].levels)
    assert (run / "shift" / "shift.png").is_file()


def test_the_benchmark_targets_are_marked_met_or_missed():
    from fire_lightning.evaluate import check_targets

    def entry(mean):
        return {"mean": mean, "std": 0.0, "values": [mean]}

    results = {"methods": {"ANTs-SyN": {"dice_mean": entry(0.80), "seconds_per_pair": entry(0.5),
                                        "folding_pct": entry(0.0)},
                           "FIRE": {"dice_mean": entry(0.795), "seconds_per_pair": entry(0.02),
                                    "folding_pct": entry(0.1)},
                           "FIRE+IO": {"dice_mean": entry(0.805), "seconds_per_pair": entry(0.05),
                                       "folding_pct": entry(0.0)}},
               "nonrigid_share": {"FIRE": {"share": 0.72}}}
    lines = check_targets(results)
    assert lines[0] == "FIRE non-rigid share ≥ 0.7: met (0.72)"
    assert lines[1].startswith("FIRE mean Dice ≥ ANTs-SyN − 1: met")
    assert "FIRE ≥ 20× faster than ANTs-SyN per pair on the CPU: met (25.0×)" in lines
    assert any(t.startswith("FIRE+IO mean Dice ≥ ANTs-SyN + 1: MISSED") for t in lines)
    assert "FIRE+IO ≥ 5× faster than ANTs-SyN per pair on the CPU: met (10.0×)" in lines


def test_3d_targets_compare_fire_with_ants_affine_and_check_the_rotation():
    from fire_lightning.evaluate import check_targets

    def entry(mean):
        return {"mean": mean, "std": 0.0, "values": [mean]}

    results = {"meta": {"data": {"spatial_dims": 3}},
               "methods": {"ANTs-Affine": {"dice_mean": entry(0.66)},
                           "ANTs-SyN": {"dice_mean": entry(0.69), "seconds_per_pair": entry(4.0),
                                        "folding_pct": entry(0.0)},
                           "FIRE-Affine": {"dice_mean": entry(0.62), "affine_err_rotation_deg": entry(2.5)},
                           "FIRE": {"dice_mean": entry(0.67), "seconds_per_pair": entry(0.1),
                                    "folding_pct": entry(0.0)},
                           "FIRE+IO": {"dice_mean": entry(0.705), "seconds_per_pair": entry(0.5),
                                       "folding_pct": entry(0.0)}},
               "nonrigid_share": {"FIRE": {"share": 0.45}}}
    lines = check_targets(results)
    assert lines[0] == "FIRE non-rigid share ≥ 0.5: MISSED (0.45)"
    assert lines[1] == "FIRE mean Dice ≥ ANTs-Affine + 0: met (67.00 vs 66.00, +1.00 points)"
    assert any(t.startswith("FIRE+IO mean Dice ≥ ANTs-SyN + 1: met") for t in lines)
    assert lines[-1] == "FIRE rotation error ≤ 2°: MISSED (2.50°)"


def test_the_report_splits_off_the_pairs_where_ants_affine_failed():
    from fire_lightning.evaluate import dice_table

    def entry(values):
        return {"mean": float(np.mean(values)), "std": 0.0, "values": values}

    results = {"methods": {"ANTs-Affine": {"dice_mean": entry([0.7, 0.3, 0.7]),
                                           "affine_err_mm": entry([1.0, 20.0, 2.0])},
                           "ANTs-SyN": {"dice_mean": entry([0.8, 0.4, 0.8]), "seconds_per_pair": entry([0.5] * 3)},
                           "FIRE": {"dice_mean": entry([0.78, 0.75, 0.8]), "seconds_per_pair": entry([0.02] * 3),
                                    "folding_pct": entry([0.0] * 3)}},
               "meta": {"n_pairs": 3, "threads": 1}, "structures": []}
    text = dice_table(results)
    assert "exceeds 5 mm on 1 of 3 pairs" in text and "ANTs-SyN 80.00 (0.00), FIRE 79.00" in text
    results["methods"]["ANTs-Affine"]["affine_err_mm"] = entry([1.0, 2.0, 3.0])
    assert "exceeds" not in dice_table(results)


def test_a_checkpoint_is_found_by_its_name_in_the_run_folder(tmp_path):
    from fire_lightning.benchmark_inputs import run_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "iter750.ckpt").write_bytes(b"")
    assert run_checkpoint(tmp_path, None) == tmp_path / "checkpoints" / "last.ckpt"
    assert run_checkpoint(tmp_path, "iter750") == run_checkpoint(tmp_path, "iter750.ckpt") \
        == tmp_path / "checkpoints" / "iter750.ckpt"
    assert run_checkpoint(tmp_path, "iter9") == Path("iter9")  # left for "checkpoint not found"
