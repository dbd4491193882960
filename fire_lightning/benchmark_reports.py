"""The benchmark's reports (the FIRE paper's Tables 2 and 4), written into the output folder:

* ``results.md``: Table 2 (mean (std) per structure and metric) and Table 4 (seconds per pair,
  speed-up against ANTs-SyN), plus paired differences and the targets;
* ``table2.csv``, ``table4.csv``, ``affine_error.csv``, ``per_pair.csv``;
* ``dice_boxplot.png`` (per method and structure) and ``example.png`` (one pair: moving, fixed,
  each method's warped image and deformation grid); with Grad-CAM, ``explain.md``,
  ``explain_correlation.png`` and ``gradcam_example.png``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .benchmark_methods import IO_METHOD, METHODS, TRUE_METHODS
from .peers import PEERS, tool_names
from .tables import markdown_table, summarise
from .truth import ERROR_COLUMNS

#: extra metric columns of Table 2: key → (header, format)
COLUMNS = {"dice1r_mean": ("Dice mean, 1 resampling (%)", "{:.2f}"), "hd95_mean": ("HD95 (mm)", "{:.2f}"),
           "folding_pct": ("% det J ≤ 0", "{:.3f}"), "logjac_std": ("std log J", "{:.3f}"),
           "ice_mm": ("ICE (mm)", "{:.2f}"), "affine_err_mm": ("affine error (mm)", "{:.2f}"),
           "field_err_mm": ("field error (mm)", "{:.2f}"),
           "field_err_nonaffine_mm": ("non-affine field error (mm)", "{:.2f}")}
PERCENT_COLUMNS = ("dice1r_mean",)


def _cell(entry: dict | None, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    if not entry or entry["mean"] is None:
        return "–"
    return f"{fmt.format(scale * entry['mean'])} ({fmt.format(scale * entry['std'])})"


def table2_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 2: per method, Dice (%) per structure and mean, then the extra metrics."""
    structures = results["structures"] + ["mean"]
    header = ["method"] + [f"Dice {s} (%)" for s in structures] + [h for h, _ in COLUMNS.values()]
    rows = []
    for m, res in results["methods"].items():
        row = [m] + [_cell(res.get(f"dice_{s}"), 100) for s in structures]
        row += [_cell(res.get(k), 100 if k in PERCENT_COLUMNS else 1, fmt) for k, (_, fmt) in COLUMNS.items()]
        rows.append(row)
    return header, rows


def affine_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the affine-error table (methods with an affine part, known transforms only)."""
    header = ["method"] + [h for h, _ in ERROR_COLUMNS.values()]
    rows = [[m] + [_cell(res.get(k), 1, fmt) for k, (_, fmt) in ERROR_COLUMNS.items()]
            for m, res in results["methods"].items() if "affine_err_mm" in res]
    return header, rows


def table4_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 4: seconds per pair and the speed-up over ANTs-SyN."""
    header = ["method", "device", "s / pair", "ANTs-SyN / method"]
    syn = results["methods"].get("ANTs-SyN", {}).get("seconds_per_pair")
    rows = []
    for m, res in results["methods"].items():
        for key, dev in (("seconds_per_pair", f"CPU, {results['meta']['threads']} threads"),
                         ("seconds_per_pair_gpu", results["meta"].get("gpu") or "GPU")):
            if key in res:
                ratio = f"{syn['mean'] / res[key]['mean']:.1f}×" if syn and res[key]["mean"] else "–"
                rows.append([m, dev, _cell(res[key], 1, "{:.4g}"), ratio])
    return header, rows


def _ice_subset_note(results: dict) -> list[str]:
    """A note when the peers registered only some pairs both ways (``ice_every``): over which pairs their ICE
    is, and FIRE's ICE on those same pairs (one note per set of pairs)."""
    n = results["meta"]["n_pairs"]
    groups: dict[tuple, list] = {}  # the pairs registered both ways → the peers
    for peer in PEERS.values():
        ice = results["methods"].get(peer.deformable, {}).get("ice_mm")
        if ice:
            groups.setdefault(tuple(i for i, v in enumerate(ice["values"]) if v is not None), []).append(peer)
    out = []
    for on, peers in groups.items():
        if len(on) == n:
            continue
        meta = results["meta"].get(peers[0].name) or {}
        every = meta.get("ice_every")
        names = (f"{peers[0].affine} and {peers[0].deformable}" if len(peers) == 1
                 else "the methods of " + tool_names(p.name for p in peers))
        if not on:
            out += [f"ICE of {names}: not measured (no pair registered the other way round, "
                    f"`--ants-ice-every {every}`).", ""]
            continue
        note = (f"ICE of {names}: over the {len(on)} of the {n} pairs also registered the other way round "
                f"(one pair in {every}, `--ants-ice-every`; the other runs are untimed and double the peers' time).")
        same = []
        for m in ("FIRE-Affine", "FIRE", IO_METHOD):
            values = results["methods"].get(m, {}).get("ice_mm", {}).get("values")
            if values:
                sub = summarise([float("nan") if values[i] is None else values[i] for i in on])
                same.append(f"{m} {sub['mean']:.2f} ({sub['std']:.2f})")
        if same:
            note += " On the same pairs, ICE (mm): " + ", ".join(same) + "."
        out += [note, ""]
    return out


#: an affine error (mm) above which a method's affine stage counts as failed on a pair
AFFINE_FAILURE_MM = 5.0


def _affine_failure_notes(results: dict) -> list[str]:
    """Where a peer's affine method failed on some pairs (affine error > :data:`AFFINE_FAILURE_MM`, known
    transforms only): how many, and FIRE against the peer's deformable method on the other pairs, so that a
    mean difference can be told apart from a few failures of the peer's initialisation."""
    m = results["methods"]
    out = []
    for peer in PEERS.values():
        errors = m.get(peer.affine, {}).get("affine_err_mm", {}).get("values")
        if not errors or peer.deformable not in m:
            continue
        ok = [i for i, e in enumerate(errors) if e is not None and e <= AFFINE_FAILURE_MM]
        failed = len(errors) - len(ok)
        if not failed or not ok:
            continue
        means = []
        for method in (peer.deformable, "FIRE", IO_METHOD):
            values = m.get(method, {}).get("dice_mean", {}).get("values")
            if values:
                sub = summarise([float("nan") if values[i] is None else values[i] for i in ok])
                means.append(f"{method} {100 * sub['mean']:.2f} ({100 * sub['std']:.2f})")
        out += [f"{peer.affine}'s affine error exceeds {AFFINE_FAILURE_MM:g} mm on {failed} of {len(errors)} pairs "
                f"({peer.deformable} starts from it). On the other {len(ok)} pairs, Dice mean (%): "
                + ", ".join(means) + ".", ""]
    return out


def dice_table(results: dict) -> str:
    """Markdown: Table 2, Table 4 and the paired differences (what ``results.md`` holds)."""
    n = results["meta"]["n_pairs"]
    parts = [f"Table 2: mean (std) over {n} test pairs.", "", markdown_table(*table2_rows(results)), ""]
    if any(m in results["methods"] for m in TRUE_METHODS):
        parts += ["True / True-Affine: the inverse of each pair's known test transform (in full / its affine part), "
                  "the ceiling. Dice: the moving labels warped by the method (labels resampled twice: by the test "
                  "transform, then by the method). Dice, 1 resampling: the untransformed labels sent once through the "
                  "test transform composed with the method's field (True scores 100 by construction).", ""]
    parts += _ice_subset_note(results)
    parts += _affine_failure_notes(results)
    shares = results.get("nonrigid_share") or {}
    if shares:
        parts += ["Non-rigid share: (method − its affine part) / (True − True-Affine), on the mean Dice: how much of "
                  "what the test transforms' elastic part is worth the method recovers (1: all, 0: none beyond "
                  "its affine).", "",
                  markdown_table(["method", "Dice (%)", "its affine part (%)", "non-rigid share"],
                                 [[m, f"{100 * v['dice']:.2f}", f"{100 * v['affine_dice']:.2f}", f"{v['share']:.2f}"]
                                  for m, v in shares.items()]), ""]
    header, rows = affine_rows(results)
    if rows:
        parts += ["Affine error against the known transform, over the fixed brain: mean distance between where the "
                  "method's affine and the true one send each point; the error transform's translation (at the "
                  "brain's centroid), rotation, scale and shear (polar decomposition).", "",
                  markdown_table(header, rows), ""]
    header, rows = table4_rows(results)
    if rows:
        parts += ["Table 4: seconds per pair, one pair at a time, same CPU threads for all (ANTs' times include "
                  "antspyx writing its transforms to disk, Greedy's and elastix's are their calls in memory; a "
                  "peer's deformable method includes its affine stage; FIRE's are the network and the warp).", "",
                  markdown_table(header, rows), ""]
    for name, p in results.get("paired", {}).items():
        if p["n"]:
            ci = p.get("ci95")  # results.json files written before it have none
            interval = "" if ci is None else \
                f"; 95 % CI {100 * (p['mean_diff'] - ci):+.2f} to {100 * (p['mean_diff'] + ci):+.2f}"
            parts.append(f"{name}: mean Dice difference {100 * p['mean_diff']:+.2f} (std {100 * p['std_diff']:.2f}"
                         f"{interval}) points, better on {p['pct_pairs_better']:.0f} % of {p['n']} pairs.")
    targets = check_targets(results)
    if targets:
        parts += ["", "Targets:"] + [f"- {t}" for t in targets]
    return "\n".join(parts)


@dataclass(frozen=True)
class Targets:
    """What the benchmark checks FIRE against (:func:`check_targets`).

    Attributes:
        share: FIRE's non-rigid share at least this.
        fire_versus, fire_margin: FIRE's mean Dice at least ``fire_versus``'s + ``fire_margin`` (points).
        io_margin: FIRE+IO's mean Dice at least ANTs-SyN's + this (points).
        fire_speedup, io_speedup: speed-ups over ANTs-SyN per pair on the CPU.
        max_folding: % of voxels with det J ≤ 0, below this.
        max_rotation_deg: FIRE's affine rotation error at most this (None: not checked).
    """

    share: float
    fire_versus: str
    fire_margin: float
    io_margin: float = 1.0
    fire_speedup: float = 20.0
    io_speedup: float = 5.0
    max_folding: float = 0.5
    max_rotation_deg: float | None = None


#: per number of spatial dimensions. 2D: FIRE within a point of SyN and recovering 70 % of what the
#: elastic part is worth. 3D, where SyN itself recovers about a third of it on the phantom: FIRE at
#: least ANTs-Affine with half the elastic part, FIRE+IO a point above SyN, rotation within 2°.
TARGETS = {2: Targets(share=0.7, fire_versus="ANTs-SyN", fire_margin=-1.0),
           3: Targets(share=0.5, fire_versus="ANTs-Affine", fire_margin=0.0, max_rotation_deg=2.0)}


def check_targets(results: dict) -> list[str]:
    """The benchmark's targets (:data:`TARGETS`, by the data's spatial dimensions; 2D when the results do not
    say), each "met" / "MISSED" with the figures: FIRE's non-rigid share, FIRE's and FIRE+IO's mean Dice
    against their reference, their speed-ups over ANTs-SyN on the CPU, their folding, FIRE's rotation error."""
    m = results["methods"]
    if not all(k in m for k in ("ANTs-SyN", "FIRE")):
        return []
    t = TARGETS[int(results.get("meta", {}).get("data", {}).get("spatial_dims", 2))]
    dice = {k: 100 * m[k]["dice_mean"]["mean"] for k in (*METHODS[1:], IO_METHOD) if k in m}

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def versus(a: str, ref: str, margin: float) -> str:
        gap = dice[a] - dice[ref]
        return (f"{a} mean Dice ≥ {ref} {'+' if margin >= 0 else '−'} {abs(margin):g}: {verdict(gap >= margin)} "
                f"({dice[a]:.2f} vs {dice[ref]:.2f}, {gap:+.2f} points)")

    out = []
    share = (results.get("nonrigid_share") or {}).get("FIRE")
    if share is not None:
        out.append(f"FIRE non-rigid share ≥ {t.share:g}: {verdict(share['share'] >= t.share)} ({share['share']:.2f})")
    for method, ref, margin, speedup in (("FIRE", t.fire_versus, t.fire_margin, t.fire_speedup),
                                         (IO_METHOD, "ANTs-SyN", t.io_margin, t.io_speedup)):
        if method not in m or ref not in dice:
            continue
        speed = m["ANTs-SyN"]["seconds_per_pair"]["mean"] / m[method]["seconds_per_pair"]["mean"]
        fold = m[method]["folding_pct"]["mean"]
        out += [versus(method, ref, margin),
                f"{method} ≥ {speedup:g}× faster than ANTs-SyN per pair on the CPU: {verdict(speed >= speedup)} "
                f"({speed:.1f}×)",
                f"{method} folding < {t.max_folding:g} %: {verdict(fold < t.max_folding)} ({fold:.3f} %)"]
    rotation = m.get("FIRE-Affine", {}).get("affine_err_rotation_deg")
    if t.max_rotation_deg is not None and rotation:
        out.append(f"FIRE rotation error ≤ {t.max_rotation_deg:g}°: {verdict(rotation['mean'] <= t.max_rotation_deg)} "
                   f"({rotation['mean']:.2f}°)")
    return out


def write_reports(results: dict, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    (out_dir / "results.md").write_text(dice_table(results) + "\n")
    for name, (header, rows) in (("table2.csv", table2_rows(results)), ("table4.csv", table4_rows(results)),
                                 ("affine_error.csv", affine_rows(results))):
        with open(out_dir / name, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    keys = sorted({k for res in results["methods"].values() for k in res})
    with open(out_dir / "per_pair.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pair_id", "method", *keys])
        for m, res in results["methods"].items():
            for i, pid in enumerate(results["pair_ids"]):
                w.writerow([pid, m, *[("" if k not in res or res[k]["values"][i] is None else res[k]["values"][i])
                                      for k in keys]])


def figures(results: dict, example: dict | None, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    from .viz import method_panel

    if example is not None:
        fig = method_panel(example)
        fig.savefig(out_dir / "example.png", dpi=100)
        plt.close(fig)
    structures = results["structures"] + ["mean"]
    methods = list(results["methods"])
    fig, axes = plt.subplots(1, len(structures), figsize=(2.2 + 0.6 * len(methods) * len(structures), 3.4),
                             squeeze=False)
    for ax, s in zip(axes[0], structures):
        data = [[v for v in results["methods"][m][f"dice_{s}"]["values"] if v is not None] for m in methods]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"Dice {s}")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{results['meta']['n_pairs']} test pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "dice_boxplot.png", dpi=100)
    plt.close(fig)


def explain_reports(results: dict, example: dict | None, out_dir: Path) -> None:
    """``explain.md`` (also appended to ``results.md``), ``explain_correlation.png``, ``gradcam_example.png``."""
    import matplotlib.pyplot as plt

    from .explain import ExplainSettings
    from .explain_report import correlation_figure, tables
    from .viz import gradcam_panel

    e = results["explain"]
    settings = ExplainSettings(**{**e["settings"], "region": tuple(e["settings"]["region"])})
    text = (f"## Explainability (Grad-CAM, ExFIRE), {results['meta']['n_pairs']} test pairs\n\n"
            + tables(e["measures"], e["maps"], results["structures"], settings, e["correlations"]))
    (out_dir / "explain.md").write_text(text)
    with open(out_dir / "results.md", "a") as fh:
        fh.write("\n" + text)
    correlation_figure(e["correlations"], out_dir / "explain_correlation.png")
    if example is not None and "gradcam" in example:
        fig = gradcam_panel(example["gradcam"], 0, title=str(example.get("id", "")))
        fig.savefig(out_dir / "gradcam_example.png", dpi=100)
        plt.close(fig)
