"""FIRE+IO's trade-off: Dice and seconds per pair against the number of refinement steps N
(``fire benchmark RUN --refine-curve 0,10,25,50,100,200``), with the benchmark's ANTs rows as
reference lines (same pairs, same threads).

One refinement run of ``max(N)`` steps per batch gives every N's transform (Adam's path does not
depend on how many steps follow, so step k of a long run is exactly ``--refine k``). Seconds per pair
are timed as the benchmark times FIRE+IO: ``model.register(..., refine=N)``, one pair at a time.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from . import metrics
from .evaluate import time_register
from .refine import RefineSettings
from .tables import markdown_table, summarise


def parse_steps(text: str) -> list[int]:
    """``"0,10,25"`` → ``[0, 10, 25]`` (sorted, unique); a one-line ValueError for anything else."""
    try:
        steps = sorted({int(s) for s in str(text).split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--refine-curve takes comma-separated integers >= 0, got {text!r}") from None
    if not steps or steps[0] < 0:
        raise ValueError(f"--refine-curve takes comma-separated integers >= 0, got {text!r}")
    return steps


@torch.no_grad()
def refine_curve(model, dataset, steps: list[int], out_dir: str | Path, settings: RefineSettings | None = None,
                 reference: dict | None = None, batch_size: int = 8, timing_pairs: int = 10, max_pairs=None,
                 threads: int | None = None) -> dict:
    """Score ``model``'s FIRE+IO at every N in ``steps`` on ``dataset``'s pairs; write
    ``refine_curve.{json,csv,md,png}`` to ``out_dir``.

    Args:
        settings: learning rates etc. (its ``steps`` is ignored).
        reference: the benchmark's ``results.json`` of the same pairs: its ANTs rows become the
            reference lines.
        timing_pairs: seconds per pair are the mean over the first so many pairs (one at a time).
        threads: CPU threads (default: all, as the benchmark).

    Returns:
        ``{"steps": [...], "rows": [{"steps", "dice_mean", "folding_pct", "seconds_per_pair"}, ...],
        "reference": {method: {"dice_mean", "seconds_per_pair"}}, "meta": {...}}`` (summaries as in results.json).
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads or os.cpu_count() or 1))
    try:
        curve = _curve(model, dataset, steps, settings or RefineSettings(), reference, batch_size, timing_pairs,
                       max_pairs)
    finally:
        torch.set_num_threads(prev)
    _write(curve, Path(out_dir))
    return curve


def _curve(model, dataset, steps, settings, reference, batch_size, timing_pairs, max_pairs) -> dict:
    if max_pairs:
        dataset = Subset(dataset, range(min(int(max_pairs), len(dataset))))
    from .batches import collate_pairs

    device = next(model.parameters()).device
    model.eval()
    top = max(steps)
    per = {n: {"dice_mean": [], "folding_pct": []} for n in steps}
    names, spacing = model.label_names, model.spacing
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pairs)
    with tqdm(total=len(dataset), desc="refine curve", unit="pair") as bar:
        for batch in loader:
            mov, fix = batch["moving"].to(device), batch["fixed"].to(device)
            shape = mov.shape[2:]
            reg = model.register(mov, fix)
            fields = {}

            # called only within this iteration (directly and as model.refined's on_step), so fields and shape
            # are this batch's
            def keep(k, t):
                if k in per:
                    fields[k] = t.field(shape).cpu()  # noqa: B023

            keep(0, reg["transform"])
            if top > 0:
                model.refined(reg["transform"], mov, fix, dataclasses.replace(settings, steps=top), on_step=keep)
            scores = metrics.score_methods(batch["moving_label"], batch["fixed_label"], fields, names, spacing)
            for n in steps:
                for key in per[n]:
                    per[n][key].extend(scores[n][key].numpy().tolist())
            bar.update(mov.shape[0])

    timed = Subset(dataset, range(min(timing_pairs, len(dataset))))
    seconds = {n: time_register(model, timed, device, refine=dataclasses.replace(settings, steps=n)) for n in steps}
    rows = [{"steps": n, **{k: summarise(v) for k, v in per[n].items()}, "seconds_per_pair": summarise(seconds[n])}
            for n in steps]
    ref = {}
    for method, res in ((reference or {}).get("methods") or {}).items():
        if method.startswith("ANTs") and "seconds_per_pair" in res:
            ref[method] = {"dice_mean": res["dice_mean"], "seconds_per_pair": res["seconds_per_pair"]}
    curve = {"steps": steps, "rows": rows, "reference": ref,
             "meta": {"n_pairs": len(dataset), "timing_pairs": min(timing_pairs, len(dataset)),
                      "settings": dataclasses.asdict(settings), "device": str(device),
                      "threads": torch.get_num_threads()}}
    return curve


def curve_rows(curve: dict) -> tuple[list[str], list[list[str]]]:
    """Markdown / CSV rows: one per N, then the reference methods."""
    header = ["method", "N", "Dice mean (%)", "% det J ≤ 0", "s / pair", "ANTs-SyN / method (time)"]
    syn = curve["reference"].get("ANTs-SyN", {}).get("seconds_per_pair", {}).get("mean")

    def speed(s):
        return f"{syn / s:.1f}×" if syn and s else "–"

    rows = []
    for r in curve["rows"]:
        d, f, s = r["dice_mean"], r["folding_pct"], r["seconds_per_pair"]
        rows.append(["FIRE" if r["steps"] == 0 else "FIRE+IO", str(r["steps"]),
                     f"{100 * d['mean']:.2f} ({100 * d['std']:.2f})", f"{f['mean']:.3f}", f"{s['mean']:.3f}",
                     speed(s["mean"])])
    for method, r in curve["reference"].items():
        d, s = r["dice_mean"], r["seconds_per_pair"]
        rows.append([method, "–", f"{100 * d['mean']:.2f} ({100 * d['std']:.2f})", "–", f"{s['mean']:.3f}",
                     speed(s["mean"])])
    return header, rows


def _write(curve: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "refine_curve.json").write_text(json.dumps(curve, indent=1, allow_nan=False))
    header, rows = curve_rows(curve)
    (out_dir / "refine_curve.md").write_text(
        f"FIRE+IO against refinement steps N, {curve['meta']['n_pairs']} pairs (Dice mean (std)); seconds per "
        f"pair over {curve['meta']['timing_pairs']} pairs one at a time, {curve['meta']['threads']} threads.\n\n"
        + markdown_table(header, rows) + "\n")
    with open(out_dir / "refine_curve.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])

    steps = [r["steps"] for r in curve["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, scale, label in ((axes[0], "dice_mean", 100, "mean Dice (%)"),
                                  (axes[1], "seconds_per_pair", 1, "seconds per pair")):
        mean = [scale * r[key]["mean"] for r in curve["rows"]]
        std = [scale * r[key]["std"] for r in curve["rows"]]
        ax.errorbar(steps, mean, yerr=std if key == "dice_mean" else None, marker="o", capsize=3, label="FIRE+IO")
        for (method, r), style in zip(curve["reference"].items(), ("--", ":", "-.")):
            ax.axhline(scale * r[key]["mean"], color="k", ls=style, lw=1, label=method)
        ax.set_xlabel("refinement steps N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if key == "seconds_per_pair":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"FIRE+IO: {curve['meta']['n_pairs']} pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "refine_curve.png", dpi=100)
    plt.close(fig)
