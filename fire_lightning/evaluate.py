"""Evaluate a trained model on the held-out test pairs: Unaligned / FIRE-Affine / FIRE.

Writes ``results.json`` (``{"methods": {method: {metric: {"mean", "std", "values"}}}, "pair_ids",
"structures", "meta"}``), ``results.md`` (the Dice table), ``example.png`` (one pair) and
``dice_boxplot.png`` into the output folder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data_modules.phantom import collate_pairs

from . import metrics
from .module import FIREModule

log = logging.getLogger(__name__)

METHODS = ("Unaligned", "FIRE-Affine", "FIRE")


def summarise(values) -> dict:
    """``{"mean", "std", "values"}`` of per-pair values (NaN entries ignored in mean/std)."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "values": [None if not np.isfinite(v) else float(v) for v in arr],
    }


@torch.no_grad()
def evaluate(model: FIREModule, dataset, out_dir: str | Path, batch_size: int = 16, device: str | None = None) -> dict:
    """Score every pair of ``dataset`` (dicts as produced by the data modules) and write the reports.

    Returns:
        the ``results.json`` content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    names = model.label_names
    per = {m: {} for m in METHODS}
    ids: list[str] = []
    seconds: list[float] = []
    example = None

    def add(method, key, vals):
        per[method].setdefault(key, []).extend(vals)

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pairs)
    for batch in loader:
        mov, fix = batch["moving"].to(device), batch["fixed"].to(device)
        lab_m, lab_f = batch["moving_label"].to(device), batch["fixed_label"].to(device)
        bs = mov.shape[0]
        t0 = time.perf_counter()
        reg = model.register(mov, fix)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.extend([(time.perf_counter() - t0) / bs] * bs)
        back = model.net.T_ba(reg["g_fixed"], reg["g_moving"]).field(mov.shape[2:])
        fields = {"Unaligned": None, "FIRE-Affine": reg["affine_field"], "FIRE": reg["field"]}
        for method, scores in metrics.dice_by_method(lab_m, lab_f, fields, names).items():
            for key, vals in scores.items():
                add(method, key, vals.cpu().numpy())
        add("FIRE", "folding_pct", metrics.folding_percent(reg["field"]).cpu().numpy())
        add("FIRE-Affine", "folding_pct", metrics.folding_percent(reg["affine_field"]).cpu().numpy())
        add("FIRE", "ice_mm", metrics.inverse_consistency_error(reg["field"], back, model.spacing).cpu().numpy())
        ids.extend(batch["id"])
        if example is None:
            example = {"moving": mov[0].cpu(), "fixed": fix[0].cpu(), "warped": reg["warped"][0].cpu(),
                       "warped_affine": reg["warped_affine"][0].cpu(), "field": reg["field"][0].cpu(),
                       "fixed_label": lab_f[0].cpu(),
                       "id": batch["id"][0]}
    per["FIRE"]["seconds_per_pair"] = seconds
    methods = {m: {k: summarise(v) for k, v in per[m].items()} for m in METHODS}
    results = {
        "methods": methods,
        "paired": {f"FIRE vs {m}": paired(methods["FIRE"]["dice_mean"], methods[m]["dice_mean"])
                   for m in ("Unaligned", "FIRE-Affine")},
        "pair_ids": ids,
        "structures": list(names.values()),
        "meta": {"n_pairs": len(ids), "device": str(device), "spacing_mm": list(model.spacing),
                 "iterations": int(model.iteration)},
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    table = dice_table(results)
    (out_dir / "results.md").write_text(table + "\n")
    _figures(results, example, out_dir)
    return results


def paired(a: dict, b: dict) -> dict:
    """Per-pair difference ``a - b`` of two metric summaries: mean, std, % of pairs where a > b."""
    pairs = [(x, y) for x, y in zip(a["values"], b["values"]) if x is not None and y is not None]
    diff = np.array([x - y for x, y in pairs])
    return {"mean_diff": float(diff.mean()), "std_diff": float(diff.std(ddof=1)) if diff.size > 1 else 0.0,
            "pct_pairs_better": float((diff > 0).mean() * 100), "n": int(diff.size)}


def dice_table(results: dict, methods=None) -> str:
    """Markdown table: Dice (%) mean (std) per structure and method, plus folding and ICE."""
    methods = [m for m in (methods or results["methods"]) if m in results["methods"]]
    structures = results["structures"] + ["mean"]
    lines = ["| structure | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in structures:
        cells = []
        for m in methods:
            r = results["methods"][m].get(f"dice_{s}")
            cells.append(f"{100 * r['mean']:.2f} ({100 * r['std']:.2f})" if r else "–")
        lines.append(f"| Dice {s} | " + " | ".join(cells) + " |")
    for key, label in (("folding_pct", "% det J ≤ 0"), ("ice_mm", "ICE (mm)"), ("seconds_per_pair", "s / pair")):
        cells = []
        for m in methods:
            r = results["methods"][m].get(key)
            cells.append(f"{r['mean']:.3g} ({r['std']:.2g})" if r else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    n = results["meta"]["n_pairs"]
    notes = [f"mean (std) over {n} test pairs."]
    for name, p in results.get("paired", {}).items():
        notes.append(f"{name}: mean Dice difference {100 * p['mean_diff']:+.2f} (std {100 * p['std_diff']:.2f}) "
                     f"points, better on {p['pct_pairs_better']:.0f} % of {p['n']} pairs.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def _figures(results: dict, example: dict | None, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    from .viz import registration_panel

    if example is not None:
        fig = registration_panel([example], titles=[example["id"]])
        fig.savefig(out_dir / "example.png", dpi=100)
        plt.close(fig)
    structures = results["structures"]
    methods = list(results["methods"])
    fig, axes = plt.subplots(1, len(structures), figsize=(3.2 * len(structures), 3.2), squeeze=False)
    for ax, s in zip(axes[0], structures):
        data = [[v for v in results["methods"][m][f"dice_{s}"]["values"] if v is not None] for m in methods]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, fontsize=8)
        ax.set_title(f"Dice {s}")
        ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out_dir / "dice_boxplot.png", dpi=100)
    plt.close(fig)


def load_module(checkpoint: str | Path, map_location: str = "cpu") -> FIREModule:
    """Load a :class:`FIREModule` from a Lightning checkpoint, with a clear error if it is not one."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return FIREModule.load_from_checkpoint(str(path), map_location=map_location)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a readable fire-lightning checkpoint ({type(e).__name__}: {first})") from None
