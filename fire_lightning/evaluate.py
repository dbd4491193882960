"""Evaluate and benchmark a trained model on held-out test pairs (the FIRE paper's Tables 2 and 4).

Methods, in the paper's order: ``Unaligned``, ``ANTs-Affine``, ``FIRE-Affine``, ``ANTs-SyN``,
``FIRE`` (the ANTs ones only when asked: :mod:`.baselines`). Every method hands over a
normalised displacement field on the fixed grid and is scored by :func:`metrics.score_methods`
on exactly the same pairs: Dice and HD95 (mm) per structure, % det J ≤ 0, std of log det J,
inverse-consistency error (mm), seconds per pair.

Timing (Table 4) is per pair, one pair at a time, with the same number of CPU threads for
FIRE (torch) and ANTs (ITK); FIRE on the GPU too when one is present.

Writes into ``out_dir``:

* ``results.json``: ``{"methods": {method: {metric: {"mean", "std", "values"}}}, "paired",
  "pair_ids", "structures", "meta"}`` (``meta`` records threads, devices and every ANTs parameter);
* ``results.md``: Table 2 (mean (std) per structure and metric) and Table 4 (seconds per pair,
  FIRE/ANTs-SyN speed-up), plus paired differences;
* ``table2.csv``, ``table4.csv``, ``per_pair.csv``;
* ``dice_boxplot.png`` (per method and structure) and ``example.png`` (one pair: moving, fixed,
  each method's warped image and deformation grid).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from . import metrics, spatial
from .batches import collate_pairs
from .truth import ERROR_COLUMNS, true_fields
from .module import FIREModule
from .tables import markdown_table, paired, summarise

log = logging.getLogger(__name__)

METHODS = ("Unaligned", "ANTs-Affine", "FIRE-Affine", "ANTs-SyN", "FIRE")
FIRE_METHODS = ("Unaligned", "FIRE-Affine", "FIRE")
#: the ceiling, where the pairs' transform is known (:mod:`.truth`): its true inverse, affine part and full
TRUE_METHODS = ("True", "True-Affine")
#: FIRE's transform refined on each pair (:mod:`.refine`), when the benchmark is asked for it
IO_METHOD = "FIRE+IO"
#: extra metric columns of Table 2: key → (header, format)
COLUMNS = {"dice1r_mean": ("Dice mean, 1 resampling (%)", "{:.2f}"), "hd95_mean": ("HD95 (mm)", "{:.2f}"),
           "folding_pct": ("% det J ≤ 0", "{:.3f}"), "logjac_std": ("std log J", "{:.3f}"),
           "ice_mm": ("ICE (mm)", "{:.2f}"), "affine_err_mm": ("affine error (mm)", "{:.2f}"),
           "field_err_mm": ("field error (mm)", "{:.2f}"),
           "field_err_nonaffine_mm": ("non-affine field error (mm)", "{:.2f}")}
PERCENT_COLUMNS = ("dice1r_mean",)
#: a method → the method holding its affine part, for the non-rigid share (FIRE+IO's affine part is its own
#: refined affine, scored as ``dice_affine_part_mean``)
AFFINE_PARTS = {"True": "True-Affine", "FIRE": "FIRE-Affine", "ANTs-SyN": "ANTs-Affine"}
#: the benchmark keeps the pairs' images for its timing when they take at most this much memory (else
#: the timing makes them again: a synthetic pair costs tens of ms, three times over 120 pairs)
TIMING_KEEP_BYTES = 256 << 20


def time_register(model: FIREModule, dataset, device: torch.device, repeats: int = 1, refine=None) -> list[float]:
    """Seconds per pair of ``model.register`` (with ``refine``: FIRE+IO end to end), one pair of
    ``dataset`` (items with ``moving`` / ``fixed`` ``(1, *S)``: a data set, or a list of them) at a time,
    after one warm-up call; pairs are fetched one by one, so no more than one is moved for timing."""
    model = model.to(device)

    def pair(i: int):
        item = dataset[i]
        return item["moving"][None].to(device), item["fixed"][None].to(device)

    model.register(*pair(0), refine=refine)  # warm-up: allocations, kernels, caches
    return [seconds_to_register(model, *pair(i), repeats=repeats, refine=refine) for i in range(len(dataset))]


def seconds_to_register(model: FIREModule, moving: torch.Tensor, fixed: torch.Tensor, repeats: int = 1,
                        refine=None) -> float:
    """Seconds of one ``model.register`` of a pair ``(1, 1, *S)`` on the model's device (mean of ``repeats``)."""
    sync = torch.cuda.synchronize if moving.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.register(moving, fixed, refine=refine)
    sync()
    return (time.perf_counter() - t0) / repeats


@torch.no_grad()
def evaluate(model: FIREModule, dataset, out_dir: str | Path, ants=None, threads: int | None = None,
             batch_size: int = 16, device: str | None = None, max_pairs: int | None = None,
             meta: dict | None = None, explain=None, refine=None) -> dict:
    """Score every pair of ``dataset`` (dicts as produced by the data modules) and write the reports.

    Args:
        ants: :class:`baselines.AntsParams` to run ANTs-Affine and ANTs-SyN too; None for FIRE only.
        threads: CPU threads for FIRE and ANTs alike (default: all cores).
        max_pairs: score only the first ``max_pairs`` pairs (recorded in ``meta``).
        meta: more to record in ``results.json``'s ``meta`` (the checkpoint, the data config).
        explain: :class:`explain.ExplainSettings` to add the explainability measures of every
            pair (``results["explain"]``, ``explain.md``, ``explain_correlation.png``,
            ``gradcam_example.png``); None to skip them.
        refine: :class:`refine.RefineSettings` with ``steps > 0`` to add the method ``FIRE+IO`` (the
            network's transform refined on each pair, timed end to end like the others).

    Returns:
        the ``results.json`` content.
    """
    threads = int(threads or os.cpu_count() or 1)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results, example = _run(model, dataset, ants, threads, batch_size, device, max_pairs, explain, refine)
    finally:
        torch.set_num_threads(prev_threads)
    results["meta"].update(meta or {}, max_pairs=max_pairs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty folder
    _write_reports(results, out_dir)
    _figures(results, example, out_dir)
    if explain is not None:
        _explain_reports(results, example, out_dir)
    return results


def _run(model: FIREModule, dataset, ants, threads: int, batch_size: int, device, max_pairs,
         explain=None, refine=None) -> tuple[dict, dict]:
    """The benchmark itself (see :func:`evaluate`) → (results without the extra meta, example pair)."""
    if ants is not None:
        from .baselines import register_pair

        ants = dataclasses.replace(ants, threads=threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if max_pairs:
        dataset = Subset(dataset, range(min(int(max_pairs), len(dataset))))
    model = model.to(device).eval()
    names, spacing = model.label_names, model.spacing
    known = "true_theta" in dataset[0]  # evaluation pairs with a known transform: the ceiling and affine errors
    io = refine is not None and refine.steps > 0
    methods = (TRUE_METHODS if known else ()) + (METHODS if ants is not None else FIRE_METHODS) + (IO_METHOD,) * io
    per: dict = {m: {} for m in methods}
    per_explain: dict[str, list] = {}
    ids: list[str] = []
    example = None

    # Table 4 on the CPU: with ANTs, FIRE (and FIRE+IO) are timed on each pair just before ANTs registers it,
    # so that both are measured over the same minutes (this machine's speed moves by 15 % from one minute to
    # the next: one 4-second pass over the 120 pairs measured 24-31 ms per pair in six exploratory repeats);
    # else afterwards
    interleaved = ants is not None and device.type == "cpu"
    cpu_seconds: dict[str, list[float]] = {"FIRE": [], IO_METHOD: []}
    # the pairs' images for Table 4's timing passes (GPU, or CPU without ANTs), unless they outgrow TIMING_KEEP_BYTES
    kept: list[dict] | None = None if interleaved and not torch.cuda.is_available() else []
    kept_bytes = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pairs)
    bar = tqdm(total=len(dataset), desc="benchmark" if ants is not None else "evaluate", unit="pair")
    try:
        for batch in loader:
            if kept is not None:
                kept_bytes += 2 * batch["moving"].numel() * batch["moving"].element_size()
                if kept_bytes > TIMING_KEEP_BYTES:
                    kept = None
                else:
                    kept.extend({"moving": m, "fixed": f} for m, f in zip(batch["moving"], batch["fixed"]))
            mov, fix = batch["moving"].to(device), batch["fixed"].to(device)
            reg = model.register(mov, fix)
            back = model.net.transform("BtoA", reg["g_fixed"], reg["g_moving"], fix, mov)
            shape = mov.shape[2:]
            fields = {"Unaligned": None, "FIRE-Affine": reg["affine_field"].cpu(), "FIRE": reg["field"].cpu()}
            inverse = {"FIRE-Affine": back.affine_field(shape).cpu(), "FIRE": back.field(shape).cpu()}
            if io:  # both directions refined, as FIRE's T^{B→A} gives the inverse
                t_io = model.refined(reg["transform"], mov, fix, refine)
                fields[IO_METHOD], refined_theta = t_io.field(shape).cpu(), t_io.theta.cpu()
                inverse[IO_METHOD] = model.refined(back, fix, mov, refine).field(shape).cpu()
            ants_out, one_way = [], []  # one_way: pairs not registered the other way round (no ICE)
            if ants is not None:
                if interleaved and not cpu_seconds["FIRE"]:  # warm-up: allocations, caches
                    for r in (None, refine) if io else (None,):
                        model.register(mov[:1], fix[:1], refine=r)
                for i in range(mov.shape[0]):
                    if interleaved:  # FIRE timed on the pair right before ANTs: the same minutes of the machine
                        cpu_seconds["FIRE"].append(seconds_to_register(model, mov[i:i + 1], fix[i:i + 1]))
                        if io:
                            cpu_seconds[IO_METHOD].append(seconds_to_register(model, mov[i:i + 1], fix[i:i + 1],
                                                                              refine=refine))
                    both = ants.ice_every > 0 and (len(ids) + i) % ants.ice_every == 0
                    try:
                        ants_out.append(register_pair(batch["moving"][i], batch["fixed"][i], spacing, ants, both))
                    except RuntimeError as e:
                        raise RuntimeError(f"test pair {batch['id'][i]}: {e}") from None
                    if not both:
                        one_way.append(i)
                    bar.update(1)
                for name in ("ANTs-Affine", "ANTs-SyN"):
                    fields[name] = torch.stack([o[name]["field"] for o in ants_out])
                    inverse[name] = torch.stack([o[name].get("inverse", torch.zeros_like(o[name]["field"]))
                                                 for o in ants_out])
                    per[name].setdefault("seconds_per_pair", []).extend(o[name]["seconds"] for o in ants_out)
            else:
                bar.update(mov.shape[0])
            truth, thetas = None, None
            if known:
                truth = {k: batch[k] for k in ("true_theta", "true_elastic")}
                fields.update(true_fields(truth["true_theta"], truth["true_elastic"]))
                thetas = {"FIRE-Affine": reg["theta"].cpu()}
                if io:
                    thetas[IO_METHOD] = refined_theta
                if ants is not None:
                    thetas["ANTs-Affine"] = spatial.fit_affine_to_field(fields["ANTs-Affine"].double()).float()
            scores = metrics.score_methods(batch["moving_label"], batch["fixed_label"], fields, names, spacing,
                                           inverse_fields=inverse, truth=truth, thetas=thetas)
            for name in ("ANTs-Affine", "ANTs-SyN") if one_way else ():
                scores[name]["ice_mm"][one_way] = float("nan")
            if io:  # FIRE+IO's own affine part, for its non-rigid share
                scores[IO_METHOD]["dice_affine_part_mean"] = metrics.dice_by_method(
                    batch["moving_label"], batch["fixed_label"],
                    {"a": spatial.affine_to_displacement(refined_theta, shape)}, names)["a"]["dice_mean"]
            for method in methods:
                for key, vals in scores[method].items():
                    per[method].setdefault(key, []).extend(vals.numpy().tolist())
            ids.extend(batch["id"])
            maps = None
            if explain is not None:
                maps = _explain_batch(model, batch, reg["field"], explain, per_explain, device)
            if example is None:
                example = _example(batch, {m: fields[m] for m in methods})
                if maps is not None:
                    example["gradcam"] = {k: dataclasses.replace(m, cam=m.cam[:1].cpu(), background=m.background[:1].cpu(),
                                                                 scalar=m.scalar[:1].cpu()) for k, m in maps.items()}
    finally:
        bar.close()

    # Table 4: one pair at a time, same threads as ANTs; the pairs kept above, else made again
    if kept is not None:
        dataset = kept
    for method, r in (("FIRE", None), (IO_METHOD, refine)) if io else (("FIRE", None),):
        per[method]["seconds_per_pair"] = (cpu_seconds[method] if interleaved else
                                           time_register(model, dataset, torch.device("cpu"), refine=r))
    gpu_name = None
    if torch.cuda.is_available():
        per["FIRE"]["seconds_per_pair_gpu"] = time_register(model, dataset, torch.device("cuda"), repeats=5)
        if io:
            per[IO_METHOD]["seconds_per_pair_gpu"] = time_register(model, dataset, torch.device("cuda"), refine=refine)
        gpu_name = torch.cuda.get_device_name(0)
    model.to(device)

    summary = {m: {k: summarise(v) for k, v in per[m].items()} for m in methods}
    results = {
        "methods": summary,
        "nonrigid_share": nonrigid_shares(summary),
        "paired": {f"{a} vs {m}": paired(summary[a]["dice_mean"], summary[m]["dice_mean"])
                   for a in ("FIRE", IO_METHOD) if a in summary for m in methods
                   if m != a and (a == "FIRE" or m in ("FIRE", "ANTs-SyN", "ANTs-Affine"))},
        "pair_ids": ids,
        "structures": list(names.values()),
        "meta": {
            "n_pairs": len(ids), "device": str(device), "spacing_mm": list(spacing),
            "iterations": int(model.iteration), "threads": threads, "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "gpu": gpu_name, "torch": torch.__version__,
            "timing": "seconds per pair, one pair at a time; FIRE = model.register (both fields, warped image) "
                      "after one warm-up call; ANTs = ants.registration calls (ANTs-SyN includes its affine stage)"
                      + ("; FIRE and FIRE+IO timed on each pair just before ANTs registers it" if interleaved else ""),
            "ants": ants.record() if ants is not None else None,
            "refine": dataclasses.asdict(refine) if io else None,
        },
    }
    if explain is not None:
        from .explain_report import correlations, summarise as summarise_explain

        dice = {m: per[m]["dice_mean"] for m in ("FIRE", "FIRE-Affine")}
        results["explain"] = {"settings": dataclasses.asdict(explain), "measures": summarise_explain(per_explain),
                              "correlations": correlations(per_explain, dice),
                              "maps": list(example["gradcam"]) if example and "gradcam" in example else []}
    return results, example


#: Grad-CAM runs on this many voxels' worth of pairs at a time (they keep activations and gradients):
#: 16 of the 2D phantom's 64x72 pairs (a quarter faster per pair than 4 on the 2-core CPU), one 3D volume
EXPLAIN_CHUNK_VOXELS = 16 * 64 * 72


def _explain_batch(model: FIREModule, batch: dict, field: torch.Tensor, settings, per: dict, device,
                   chunk: int | None = None) -> dict:
    """Grad-CAM maps of a batch (``chunk`` pairs at a time; default: :data:`EXPLAIN_CHUNK_VOXELS`' worth)
    and their per-pair measures, appended to ``per`` (``{key: [floats]}``); returns the first chunk's maps."""
    from .explain import explain_pair
    from .explain_report import pair_values

    chunk = chunk or max(1, EXPLAIN_CHUNK_VOXELS // batch["moving"][0].numel())
    first = None
    for lo in range(0, batch["moving"].shape[0], chunk):
        sl = slice(lo, lo + chunk)
        labels = {"A": batch["moving_label"][sl].to(device), "B": batch["fixed_label"][sl].to(device)}
        maps = explain_pair(model.net, batch["moving"][sl].to(device), batch["fixed"][sl].to(device), settings,
                            fixed_label=labels["B"], moving_label=labels["A"])
        for k, v in pair_values(maps, field[sl].to(device), labels, model.label_names).items():
            per.setdefault(k, []).extend(v)
        first = first or maps
    return first


def _explain_reports(results: dict, example: dict | None, out_dir: Path) -> None:
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _example(batch: dict, fields: dict) -> dict:
    """The first pair of a batch with every method's field, on the CPU."""
    return {"moving": batch["moving"][0], "fixed": batch["fixed"][0], "fixed_label": batch["fixed_label"][0],
            "id": batch["id"][0], "fields": {m: (None if u is None else u[0].cpu()) for m, u in fields.items()}}


def nonrigid_shares(summary: dict) -> dict:
    """How much of the Dice that the test transforms' elastic part is worth each method recovers:
    ``(method − its affine part) / (True − True-Affine)`` on the mean Dice (1: all of it, 0: an affine
    registration). Over the means, not per pair: a pair's own ceiling gap can be near 0. Empty
    without known transforms.

    Returns:
        method → {``dice``, ``affine_dice`` (its affine part's), ``share``}, Dice in [0, 1].
    """
    def mean(method: str, key: str = "dice_mean"):
        entry = summary.get(method, {}).get(key)
        return None if not entry else entry["mean"]

    ceiling = (mean("True") or 0.0) - (mean("True-Affine") or 0.0)
    if "True" not in summary or abs(ceiling) < 1e-9:
        return {}
    out = {}
    parts = {**AFFINE_PARTS, IO_METHOD: None}
    for method, part in parts.items():
        dice = mean(method)
        affine = mean(part) if part else mean(method, "dice_affine_part_mean")
        if dice is not None and affine is not None:
            out[method] = {"dice": dice, "affine_dice": affine, "share": (dice - affine) / ceiling}
    return out


# ---------------------------------------------------------------------------------- reports
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
    """A note when ANTs registered only some pairs both ways (``AntsParams.ice_every``): over which pairs
    its ICE is, and FIRE's ICE on those same pairs."""
    ice = results["methods"].get("ANTs-SyN", {}).get("ice_mm")
    n = results["meta"]["n_pairs"]
    if not ice:
        return []
    on = [i for i, v in enumerate(ice["values"]) if v is not None]
    if len(on) == n:
        return []
    every = results["meta"].get("ants", {}).get("ice_every")
    if not on:
        return [f"ICE of ANTs-Affine and ANTs-SyN: not measured (ANTs registered no pair the other way round, "
                f"`--ants-ice-every {every}`).", ""]
    note = (f"ICE of ANTs-Affine and ANTs-SyN: over the {len(on)} of the {n} pairs that ANTs also registered the "
            f"other way round (one pair in {every}, `--ants-ice-every`; the other runs are untimed and double ANTs' "
            "time).")
    same = []
    for m in ("FIRE-Affine", "FIRE", IO_METHOD):
        values = results["methods"].get(m, {}).get("ice_mm", {}).get("values")
        if values:
            sub = summarise([float("nan") if values[i] is None else values[i] for i in on])
            same.append(f"{m} {sub['mean']:.2f} ({sub['std']:.2f})")
    if same:
        note += " On the same pairs, ICE (mm): " + ", ".join(same) + "."
    return [note, ""]


#: an affine error (mm) above which a method's affine stage counts as failed on a pair
AFFINE_FAILURE_MM = 5.0


def _ants_failure_note(results: dict) -> list[str]:
    """Where ANTs-Affine failed on some pairs (affine error > :data:`AFFINE_FAILURE_MM`, known transforms
    only): how many, and FIRE against ANTs-SyN on the other pairs, so that a mean difference can be told
    apart from a few failures of ANTs' initialisation."""
    m = results["methods"]
    errors = m.get("ANTs-Affine", {}).get("affine_err_mm", {}).get("values")
    if not errors or "ANTs-SyN" not in m:
        return []
    ok = [i for i, e in enumerate(errors) if e is not None and e <= AFFINE_FAILURE_MM]
    failed = len(errors) - len(ok)
    if not failed or not ok:
        return []
    means = []
    for method in ("ANTs-SyN", "FIRE", IO_METHOD):
        values = m.get(method, {}).get("dice_mean", {}).get("values")
        if values:
            sub = summarise([float("nan") if values[i] is None else values[i] for i in ok])
            means.append(f"{method} {100 * sub['mean']:.2f} ({100 * sub['std']:.2f})")
    return [f"ANTs-Affine's affine error exceeds {AFFINE_FAILURE_MM:g} mm on {failed} of {len(errors)} pairs (ANTs-SyN "
            f"starts from it). On the other {len(ok)} pairs, Dice mean (%): " + ", ".join(means) + ".", ""]


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
    parts += _ants_failure_note(results)
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
                  "antspyx writing its transforms to disk; FIRE's are the network and the warp).", "",
                  markdown_table(header, rows), ""]
    for name, p in results.get("paired", {}).items():
        if p["n"]:
            parts.append(f"{name}: mean Dice difference {100 * p['mean_diff']:+.2f} (std {100 * p['std_diff']:.2f}) "
                         f"points, better on {p['pct_pairs_better']:.0f} % of {p['n']} pairs.")
    targets = check_targets(results)
    if targets:
        parts += ["", "Targets:"] + [f"- {t}" for t in targets]
    return "\n".join(parts)


#: the benchmark's targets: FIRE's non-rigid share, and Dice margins over ANTs-SyN (points)
TARGET_SHARE, FIRE_SYN_MARGIN, IO_SYN_MARGIN = 0.7, -1.0, 1.0
#: speed-ups over ANTs-SyN per pair on the CPU, and the folding ceiling (%)
FIRE_SPEEDUP, IO_SPEEDUP, MAX_FOLDING = 20.0, 5.0, 0.5


def check_targets(results: dict) -> list[str]:
    """The benchmark's targets against ANTs-SyN, each "met" / "MISSED" with the figures: FIRE's non-rigid share,
    FIRE ≥ ANTs-SyN − 1 and FIRE+IO ≥ ANTs-SyN + 1 (mean Dice), their speed-ups on the CPU and their folding."""
    m = results["methods"]
    if not all(k in m for k in ("ANTs-SyN", "FIRE")):
        return []
    dice = {k: 100 * m[k]["dice_mean"]["mean"] for k in (*METHODS[1:], IO_METHOD) if k in m}

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def versus(a: str, margin: float) -> str:
        gap = dice[a] - dice["ANTs-SyN"]
        return (f"{a} mean Dice ≥ ANTs-SyN {'+' if margin >= 0 else '−'} {abs(margin):g}: {verdict(gap >= margin)} "
                f"({dice[a]:.2f} vs {dice['ANTs-SyN']:.2f}, {gap:+.2f} points)")

    out = []
    share = (results.get("nonrigid_share") or {}).get("FIRE")
    if share is not None:
        out.append(f"FIRE non-rigid share ≥ {TARGET_SHARE:g}: {verdict(share['share'] >= TARGET_SHARE)} "
                   f"({share['share']:.2f})")
    for method, margin, speedup in (("FIRE", FIRE_SYN_MARGIN, FIRE_SPEEDUP), (IO_METHOD, IO_SYN_MARGIN, IO_SPEEDUP)):
        if method not in m:
            continue
        speed = m["ANTs-SyN"]["seconds_per_pair"]["mean"] / m[method]["seconds_per_pair"]["mean"]
        fold = m[method]["folding_pct"]["mean"]
        out += [versus(method, margin),
                f"{method} ≥ {speedup:g}× faster than ANTs-SyN per pair on the CPU: {verdict(speed >= speedup)} "
                f"({speed:.1f}×)",
                f"{method} folding < {MAX_FOLDING:g} %: {verdict(fold < MAX_FOLDING)} ({fold:.3f} %)"]
    return out


def _write_reports(results: dict, out_dir: Path) -> None:
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


def _figures(results: dict, example: dict | None, out_dir: Path) -> None:
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
