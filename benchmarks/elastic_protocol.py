"""What the elastic part of the test transforms is worth to Dice, per elastic setting, before any model.

    python benchmarks/elastic_protocol.py experiments/phantom2d.yaml 7,6 12,8 10,10 12,10

For each ``control_points,max_mm`` setting (``data.augment.elastic_control_points``, ``elastic_max_mm``) it
makes the config's test pairs and scores, with the benchmark's code, the ceiling rows: True (each pair's
known transform inverted, in full) and True-Affine (its affine part only), and the unaligned pair. It
prints their mean Dice, the gap True − True-Affine (what a non-rigid stage can add; the benchmark's
non-rigid share divides by it), the elastic displacement over the brain (mean and largest, mm), the
control grid's spacing and displacement / spacing (a cubic B-spline transform with coefficients below
about 0.4 × its spacing is one-to-one), and the folding of the true inverse. Writes the rows as JSON
(``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="experiment YAML, e.g. experiments/phantom2d.yaml")
    p.add_argument("settings", nargs="+", help="control_points,max_mm pairs, e.g. 7,6 10,10")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/elastic_protocol.json"))
    args = p.parse_args(argv)

    from data_modules.loading import collate_pairs
    from data_modules.phantom import PhantomDataModule
    from data_modules.shift import control_spacing_mm
    from fire_lightning import metrics, spatial
    from fire_lightning.config import data_section, load_config
    from fire_lightning.truth import true_fields

    rows = []
    for setting in args.settings:
        k, mm = setting.split(",")
        cfg = load_config(args.config, [f"data.augment.elastic_control_points={int(k)}",
                                        f"data.augment.elastic_max_mm={float(mm)}"])
        dm = PhantomDataModule(data_section(cfg))
        dm.setup("test")
        ds = dm.test_dataset()
        b = collate_pairs([ds[i] for i in range(len(ds))])
        fields = {"Unaligned": None, **true_fields(b["true_theta"], b["true_elastic"])}
        scores = metrics.dice_by_method(b["moving_label"], b["fixed_label"], fields, dm.label_names)
        dice = {m: 100 * s["dice_mean"].double() for m, s in scores.items()}
        elastic = fields["True"] - fields["True-Affine"]
        mm_field = spatial.voxel_to_mm(spatial.normalised_to_voxel(elastic), dm.spacing).norm(dim=1)
        brain = b["fixed_label"][:, 0] > 0
        spacing = control_spacing_mm(cfg.data, int(k))
        row = {"control_points": int(k), "max_mm": float(mm), "control_spacing_mm": round(spacing, 1),
               "max_over_spacing": round(float(mm) / spacing, 2), "pairs": len(ds),
               **{f"dice_{m}": round(float(d.mean()), 2) for m, d in dice.items()},
               "gap": round(float((dice["True"] - dice["True-Affine"]).mean()), 2),
               "gap_std": round(float((dice["True"] - dice["True-Affine"]).std()), 2),
               "elastic_mean_mm": round(float(mm_field[brain].mean()), 2),
               "elastic_max_mm": round(float(mm_field[brain].max()), 2),
               "true_folding_pct": round(float(metrics.folding_percent(fields["True"]).mean()), 3)}
        rows.append(row)
        print(" ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
