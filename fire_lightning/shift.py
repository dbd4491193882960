"""The shift benchmark (``fire benchmark RUN --shift``): every method on held-out pairs with one factor
at a time pushed from mild to beyond the training range (:mod:`data_modules.shift`).

All pairs are scored in one :func:`evaluate.evaluate` run (same code, metrics and timing as the
benchmark; its reports go to ``OUT/pairs/``), then grouped by factor and level here:

* ``shift.md`` / ``shift.csv``: mean (std) Dice per method at each level, whether the level lies
  inside the training range, FIRE − ANTs-SyN, and the worst FIRE pair against its unaligned Dice;
* ``shift.json``: the same numbers;
* ``shift.png``: Dice against each factor, one line per method, the training range shaded.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from .peers import PEERS
from .tables import markdown_table

#: the methods plotted and tabulated, when present: the classical peers' (``--peers``) after the unaligned pairs
METHODS = ("Unaligned", *(m for p in PEERS.values() for m in p.methods), "FIRE-Affine", "FIRE", "FIRE+IO")
#: targets inside the training range: FIRE within this many points of ANTs-SyN at every level, and no
#: FIRE pair below its unaligned Dice + this many points
SYN_MARGIN, UNALIGNED_MARGIN = 3.0, 10.0


def group(results: dict, levels: list[tuple[str, object]]) -> dict:
    """Per-pair Dice of ``results`` (an :func:`evaluate.evaluate` result over the shift pairs, in order)
    grouped by ``(factor, level)`` → method → list of Dice in points."""
    out: dict = {}
    for method in [m for m in METHODS if m in results["methods"]]:
        values = results["methods"][method]["dice_mean"]["values"]
        for (factor, level), v in zip(levels, values):
            out.setdefault((factor, level), {}).setdefault(method, []).append(math.nan if v is None else 100 * v)
    return out


def summarise(grouped: dict, factors, cfg) -> list[dict]:
    """One row per factor and level: mean and std per method, inside the training range or not, FIRE − SyN,
    and FIRE's worst margin over the unaligned pair."""
    rows = []
    for f in factors:
        for level in f.levels:
            per = grouped.get((f.name, level))
            if per is None:
                continue
            row = {"factor": f.name, "level": level, "inside": bool(f.inside(level, cfg)),
                   "n": len(next(iter(per.values())))}
            for method, vals in per.items():
                arr = np.asarray(vals, dtype=float)
                row[method] = {"mean": float(np.nanmean(arr)),
                               "std": float(np.nanstd(arr, ddof=1)) if arr.size > 1 else 0.0}
            if "FIRE" in per and "ANTs-SyN" in per:
                row["fire_minus_syn"] = row["FIRE"]["mean"] - row["ANTs-SyN"]["mean"]
            if "FIRE" in per and "Unaligned" in per:
                row["fire_over_unaligned_min"] = float(np.nanmin(np.asarray(per["FIRE"])
                                                                 - np.asarray(per["Unaligned"])))
            rows.append(row)
    return rows


def check(rows: list[dict]) -> list[str]:
    """The shift targets inside the training range, each "met" / "MISSED" with the worst level."""
    inside = [r for r in rows if r["inside"]]
    out = []
    gaps = [(r["fire_minus_syn"], r) for r in inside if "fire_minus_syn" in r]
    if gaps:
        worst, r = min(gaps, key=lambda g: g[0])
        out.append(f"FIRE within {SYN_MARGIN:g} points of ANTs-SyN at every level inside the training range: "
                   f"{'met' if worst >= -SYN_MARGIN else 'MISSED'} "
                   f"(worst {worst:+.2f} at {r['factor']} = {r['level']})")
    margins = [(r["fire_over_unaligned_min"], r) for r in inside if "fire_over_unaligned_min" in r]
    if margins:
        worst, r = min(margins, key=lambda g: g[0])
        out.append(f"no FIRE pair below Unaligned + {UNALIGNED_MARGIN:g} inside the training range: "
                   f"{'met' if worst >= UNALIGNED_MARGIN else 'MISSED'} (worst pair {worst:+.2f} at {r['factor']} = "
                   f"{r['level']})")
    return out


def _cell(entry: dict | None) -> str:
    return "–" if not entry else f"{entry['mean']:.2f} ({entry['std']:.2f})"


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    methods = [m for m in METHODS if any(m in r for r in rows)]
    header = ["factor", "level", "in training range", "pairs", *methods, "FIRE − ANTs-SyN",
              "FIRE − Unaligned, worst pair"]
    body = [[r["factor"], str(r["level"]), "yes" if r["inside"] else "no", str(r["n"]),
             *(_cell(r.get(m)) for m in methods),
             f"{r['fire_minus_syn']:+.2f}" if "fire_minus_syn" in r else "–",
             f"{r['fire_over_unaligned_min']:+.2f}" if "fire_over_unaligned_min" in r else "–"] for r in rows]
    return header, body


def write_reports(rows: list[dict], factors, out_dir: Path, meta: dict) -> str:
    """``shift.md``, ``shift.csv``, ``shift.json`` and ``shift.png`` in ``out_dir``; returns the markdown."""
    header, body = table(rows)
    targets = check(rows)
    text = (f"Shift benchmark: Dice mean (std) in %, {rows[0]['n'] if rows else 0} pairs per level; one factor at a "
            "time set to the level, the rest drawn as test pairs are.\n\n" + markdown_table(header, body) + "\n\n"
            + ("Targets:\n" + "\n".join(f"- {t}" for t in targets) + "\n" if targets else ""))
    (out_dir / "shift.md").write_text(text)
    with open(out_dir / "shift.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    (out_dir / "shift.json").write_text(json.dumps({"rows": rows, "targets": targets, "meta": meta}, indent=1))
    figure(rows, factors, out_dir / "shift.png")
    return text


def figure(rows: list[dict], factors, path: Path) -> None:
    """Dice against each factor's levels, one line per method (mean ± std), levels inside the training
    range shaded."""
    import matplotlib.pyplot as plt

    factors = [f for f in factors if any(r["factor"] == f.name for r in rows)]
    cols = min(4, len(factors))
    nrows = math.ceil(len(factors) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    methods = [m for m in METHODS if any(m in r for r in rows)]
    for ax, f in zip(axes.flat, factors):
        sub = [r for r in rows if r["factor"] == f.name]
        x = np.arange(len(sub))
        for i, r in enumerate(sub):
            if r["inside"]:
                ax.axvspan(i - 0.5, i + 0.5, color="0.92", zorder=0)
        for m in methods:
            mean = [r[m]["mean"] if m in r else np.nan for r in sub]
            std = [r[m]["std"] if m in r else np.nan for r in sub]
            ax.errorbar(x, mean, yerr=std, marker="o", ms=3, capsize=2, lw=1, label=m)
        ax.set_xticks(x, [str(r["level"]) for r in sub], fontsize=7, rotation=20)
        ax.set_title(f.label, fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(factors):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("Dice mean (%)")
    axes.flat[0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Shift benchmark (shaded: inside the training range)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_shift(model, data_cfg, out_dir: str | Path, ants=None, refine=None, threads: int | None = None,
              factors=None, max_per_level: int | None = None, peers: dict | None = None) -> dict:
    """Build the shift pairs for ``data_cfg`` (the run's ``data`` section), score every method on them in
    one benchmark run and write the shift reports into ``out_dir``. ``ants`` and ``peers`` (the classical peers
    beside ANTs, name → parameters, as :func:`evaluate.evaluate`'s) register every pair one way only (no ICE).
    Returns ``shift.json``'s content."""
    import dataclasses

    from torch.utils.data import Subset

    from .config import data_section
    from .datasets import SHIFT_FACTORS, SHIFT_PAIRS, resolve
    from .evaluate import evaluate

    factors = resolve(SHIFT_FACTORS) if factors is None else factors
    pairs = resolve(SHIFT_PAIRS)(data_section(data_cfg), factors)
    keep, counts = [], Counter()
    for i, key in enumerate(pairs.levels):
        counts[key] += 1
        if not max_per_level or counts[key] <= max_per_level:
            keep.append(i)
    dataset = Subset(pairs, keep) if len(keep) < len(pairs) else pairs
    levels = [pairs.levels[i] for i in keep]
    out_dir = Path(out_dir)
    one_way = {name: dataclasses.replace(p, ice_every=0)
               for name, p in {**({"ants": ants} if ants is not None else {}), **(peers or {})}.items()}
    results = evaluate(model, dataset, out_dir / "pairs", threads=threads, refine=refine, meta={"shift": True},
                       peers=one_way or None)
    rows = summarise(group(results, levels), factors, pairs.cfg)
    meta = {"n_pairs": len(levels), "threads": results["meta"]["threads"], "iterations": results["meta"]["iterations"]}
    text = write_reports(rows, factors, out_dir, meta)
    print(text)
    return {"rows": rows, "targets": check(rows), "meta": meta}
