"""``fire ablation``: one table of many runs' benchmarks, each row with the command that reproduces it.

Every row is a run folder whose ``benchmark/results.json`` scored the same test pairs (checked:
the pair ids must agree). The command of a row is ``fire train <base config> <overrides>``, the
overrides being every config key where the run's saved ``config.yaml`` differs from the base
experiment (run names and folders aside), so that a reader can reproduce it exactly. Methods
that several runs share (ANTs, the ceiling, the unaligned pair) are taken once, from the first run
that has them.

Example::

    fire ablation runs/paper runs/scale-mi runs/dense --base experiments/phantom2d_paper.yaml \
        --out docs/results/affine-ablation
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from omegaconf import OmegaConf

from .config import load_config
from .tables import markdown_table

#: columns: (header, method key, metric, scale, format)
COLUMNS = (
    ("Dice mean (%)", "dice_mean", 100, "{:.2f}"),
    ("Dice, 1 resampling (%)", "dice1r_mean", 100, "{:.2f}"),
    ("HD95 (mm)", "hd95_mean", 1, "{:.2f}"),
    ("% det J ≤ 0", "folding_pct", 1, "{:.3f}"),
    ("ICE (mm)", "ice_mm", 1, "{:.2f}"),
    ("s / pair", "seconds_per_pair", 1, "{:.4f}"),
)
AFFINE = ("affine error (mm)", "affine_err_mm", 1, "{:.2f}")
SHARED = ("True", "True-Affine", "Unaligned", "ANTs-Affine", "ANTs-SyN")
IGNORED = ("run", "experiment", "logger", "explain", "trainer.progress_bar")


def _flat(cfg, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def overrides(run_cfg, base_cfg) -> list[str]:
    """``key=value`` for every key where ``run_cfg`` differs from ``base_cfg`` (both plain dicts)."""
    a, b = _flat(run_cfg), _flat(base_cfg)
    out = []
    for k in sorted(a):
        if any(k == i or k.startswith(i + ".") for i in IGNORED):
            continue
        if a[k] != b.get(k):
            v = a[k]
            out.append(f"{k}={json.dumps(v).replace(' ', '') if isinstance(v, (list, dict)) else v}")
    return out


#: per-row columns beside the benchmark's: the non-rigid share (benchmark), the run's last validation in
#: ``csv/metrics.csv`` and its training time (``training.json``), on the FIRE row: (header, key, scale, format)
VALIDATION = (("non-rigid share", "share", 1, "{:.2f}"), ("val Dice (%)", "val/dice_mean", 100, "{:.2f}"),
              ("val affine err (mm)", "val/affine_err_mm", 1, "{:.2f}"),
              ("val rotation r", "val/affine_rotation_corr", 1, "{:.2f}"),
              ("training (s)", "training_seconds", 1, "{:.0f}"))


def training_record(run: str | Path) -> dict:
    """``{"training_seconds": s}`` from the run's ``training.json`` ({} for runs trained before it was written)."""
    path = Path(run) / "training.json"
    if not path.is_file():
        return {}
    return {"training_seconds": float(json.loads(path.read_text())["seconds"])}


def last_validation(run: str | Path) -> dict:
    """The last logged value of each ``val/...`` metric in ``run/csv/metrics.csv`` ({} when absent):
    what the run's variant was chosen on (the validation pairs, not the test pairs)."""
    path = Path(run) / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out.update({k: float(v) for k, v in row.items() if k and k.startswith("val/") and v not in ("", None)})
    return out


def validation(run: str | Path, ids: list) -> dict:
    """The run's validation figures: from ``RUN/benchmark-val/results.json`` (``fire benchmark RUN --split val``)
    when there is one, so that every run is compared on the same validation pairs (``ids``: the first run's,
    filled in here; a run scored on others is an error), else its last validation during training."""
    path = Path(run) / "benchmark-val" / "results.json"
    if not path.is_file():
        return last_validation(run)
    res = json.loads(path.read_text())
    if not ids:
        ids.extend(res["pair_ids"])
    elif res["pair_ids"] != ids:
        raise ValueError(f"{path}: scored on other validation pairs than the first run's")
    m = res["methods"]
    out = {"val/dice_mean": m["FIRE"]["dice_mean"]["mean"]}
    if "affine_err_mm" in m.get("FIRE-Affine", {}):
        out["val/affine_err_mm"] = m["FIRE-Affine"]["affine_err_mm"]["mean"]
    return out


def _augment(res: dict):
    """The transforms a benchmark drew its pairs with (``meta.data.augment``; None for older results)."""
    return ((res.get("meta") or {}).get("data") or {}).get("augment")


def _cell(entry: dict | None, scale: float, fmt: str) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{fmt.format(scale * entry['mean'])} ({fmt.format(scale * entry['std'])})"


def ablation(runs: list[str | Path], base: str | Path, out_dir: str | Path | None = None,
             names: list[str] | None = None) -> str:
    """The ablation table (markdown) of ``runs`` against the ``base`` experiment; written to
    ``out_dir`` as ``ablation.md`` and ``ablation.csv`` when given.

    Raises:
        ValueError: a run without ``benchmark/results.json``, or runs scored on different pairs.
    """
    base_cfg = OmegaConf.to_container(load_config(base), resolve=True)
    rows, commands, pair_ids, augment, shared, shared_share, val_ids = [], [], None, None, {}, {}, []
    for i, run in enumerate(runs):
        run = Path(run)
        res_path = run / "benchmark" / "results.json"
        if not res_path.is_file():
            raise ValueError(f"{res_path}: not found (run `fire benchmark {run}` first)")
        res = json.loads(res_path.read_text())
        if pair_ids is None:
            pair_ids, augment = res["pair_ids"], _augment(res)
        elif res["pair_ids"] != pair_ids or _augment(res) != augment:
            raise ValueError(f"{res_path}: scored on other test pairs than {runs[0]}; "
                             "an ablation compares the same pairs "
                             "(score each run on the same data, e.g. `fire benchmark RUN data.augment.rotate_deg=20`)")
        cfg = OmegaConf.to_container(load_config(run / "config.yaml"), resolve=True)
        ov = overrides(cfg, base_cfg)
        name = names[i] if names else run.name
        for method in SHARED:
            if method in res["methods"] and method not in shared:
                shared[method] = res["methods"][method]
                if method in res.get("nonrigid_share", {}):
                    shared_share[method] = res["nonrigid_share"][method]["share"]
        val = validation(run, val_ids)
        shares = res.get("nonrigid_share", {})
        for method, label in (("FIRE-Affine", f"{name}: FIRE-Affine"), ("FIRE", f"{name}: FIRE"),
                              ("FIRE+IO", f"{name}: FIRE+IO")):
            if method in res["methods"]:
                extra = {**val, **training_record(run)} if method == "FIRE" else {}
                if method in shares:
                    extra["share"] = shares[method]["share"]
                rows.append((label, res["methods"][method], res["meta"].get("iterations"), extra))
        commands.append((name, f"fire train {base} " + " ".join(ov) if ov else f"fire train {base}"))
    header = ["method", *(h for h, *_ in COLUMNS), AFFINE[0], "iterations", *(h for h, *_ in VALIDATION)]
    every = [*((m, shared[m], None, {"share": shared_share[m]} if m in shared_share else {})
               for m in SHARED if m in shared),
             *rows]
    table = [[label, *(_cell(entry.get(k), s, f) for _, k, s, f in COLUMNS), _cell(entry.get(AFFINE[1]), *AFFINE[2:]),
              "–" if it is None else str(it), *(f.format(s * val[k]) if k in val else "–" for _, k, s, f in VALIDATION)]
             for label, entry, it, val in every]
    val_source = (f"each run scored on the same {len(val_ids)} validation pairs (`fire benchmark RUN --split val`)"
                  if val_ids else "the run's last validation")
    text = (f"Mean (std) over the same {len(pair_ids or [])} test pairs; the val columns (on the FIRE row) are "
            f"{val_source}, what variants are chosen on.\n\n" + markdown_table(header, table)
            + "\n\nCommands (then `fire benchmark RUN`):\n\n" + "\n".join(f"- {n}: `{c}`" for n, c in commands) + "\n")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ablation.md").write_text(text)
        with open(out / "ablation.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([header, *table])
    return text
