"""``fire explain`` (one pair, NIfTI in, NIfTI + PNG + table out) and the explainability part of
``fire benchmark --explain`` (the same measures over every test pair, and their correlations).

Example::

    from fire_lightning.explain_report import explain_files

    summary = explain_files("runs/.../last.ckpt", "t1.nii.gz", "flair.nii.gz", "explain_out/",
                            fixed_labels="flair_labels.nii.gz")
    print(summary["table"])
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import explain as ex

log = logging.getLogger(__name__)

#: what each component's scalar is, for the tables
SCALAR_TEXT = {"displacement": "mean ‖φ‖", "nonrigid": "mean ‖φ_nr‖", "affine": "‖θ − I‖", "realness": "mean D score",
               "fakeness": "−mean D score"}


def file_stem(map_name: str) -> str:
    """``G/AtoB/x_A`` → ``G_AtoB_x_A`` (output file names)."""
    return map_name.replace("/", "_")


# ---------------------------------------------------------------------------------- per-pair values
def pair_values(maps: dict[str, ex.CamMap], u_ab: torch.Tensor, labels: dict, label_names: dict) -> dict[str, list]:
    """Every per-pair number of a batch: :func:`explain.pair_measures` plus ``scalar/<map>``; ``{key: [B floats]}``."""
    values = ex.pair_measures(maps, u_ab, labels, label_names)
    values.update({f"scalar/{k}": m.scalar for k, m in maps.items()})
    return {k: [float(x) for x in v.detach().cpu()] for k, v in values.items()}


def summarise(per: dict[str, list]) -> dict[str, dict]:
    """``{key: {"mean", "std", "values"}}`` as :func:`evaluate.summarise` (None, not NaN, where a
    value is undefined, e.g. the share of an all-zero map: the JSON stays valid)."""
    from .tables import summarise as one

    return {k: one(v) for k, v in per.items()}


def correlations(per: dict[str, list], dice: dict[str, list]) -> dict[str, dict]:
    """Across pairs: each discriminator's real-vs-synthetic map divergence against registration error.

    ``dice``: per-pair mean Dice of ``FIRE`` and ``FIRE-Affine``; the non-rigid divergence is set
    against 1 − Dice(FIRE), the rigid one against 1 − Dice(FIRE-Affine). ``D mean`` averages
    D^A and D^B per pair.
    """
    out = {}
    for kind, method in (("nonrigid", "FIRE"), ("rigid", "FIRE-Affine")):
        if method not in dice:
            continue
        error = [1 - d if d is not None and math.isfinite(d) else float("nan") for d in dice[method]]
        series = {comp: per.get(f"divergence/{comp}/{kind}") for comp in ex.DIVERGENCE_PAIRS}
        series = {c: s for c, s in series.items() if s is not None}
        if not series:
            continue
        if len(series) == 2:
            series["D mean"] = [(a + b) / 2 for a, b in zip(*series.values())]
        for comp, div in series.items():
            c = asdict(ex.correlation(div, error))
            out[f"{comp} {kind} divergence vs 1 − Dice({method})"] = {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in c.items()}
    return out


# ---------------------------------------------------------------------------------- tables
def _cell(entry: dict | None, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    """mean (std) over pairs; the value alone for one pair; – when undefined."""
    if not entry or entry["mean"] is None:
        return "–"
    text = fmt.format(entry["mean"] * scale)
    n = sum(v is not None for v in entry["values"])
    return text if n <= 1 else f"{text} ({fmt.format(entry['std'] * scale)})"


def _p(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def tables(summary: dict[str, dict], map_names: list[str], structures: list[str], settings: ex.ExplainSettings,
           corr: dict | None = None) -> str:
    """Markdown: share of Grad-CAM mass per structure, symmetry, discriminator divergence
    (and correlations when given). Cells are mean (std) over pairs; a single pair shows the value."""
    from .tables import markdown_table as _md

    key = {"D_A": "D", "D_B": "D"}
    rows = []
    for name in map_names:
        comp = key.get(name.split("/")[0], name.split("/")[0])
        explained = f"{SCALAR_TEXT[getattr(settings, f'scalar_{comp}')]} ({getattr(settings, f'method_{comp}')})"
        rows.append([name, explained, _cell(summary.get(f"scalar/{name}"), fmt="{:.3g}"),
                     *[_cell(summary.get(f"share/{name}/{s}"), 100, "{:.1f}") for s in structures]])
    for space in ("A", "B"):
        if any(f"area/{space}/{s}" in summary for s in structures):
            rows.append([f"uniform map over x^{space} (area)", "", "",
                         *[_cell(summary.get(f"area/{space}/{s}"), 100, "{:.1f}") for s in structures]])
    parts = ["### Share of Grad-CAM mass inside each structure (%)", "",
             _md(["map", "explained", "value", *structures], rows), "",
             "A map's share in a structure against the uniform map's (the structure's area) says whether the "
             "component attends to it more than chance. x^A maps use x^A's labels, all others x^B's."]
    sym = [[c, _cell(summary.get(f"symmetry/{c}"))] for c in ex.SYMMETRIC_MAPS]
    parts += ["", "### Symmetry of the A→B and B→A maps", "", _md(["component", "Pearson r"], sym), "",
              "r between each direction's map over its fixed image, the B→A one carried into x^B's space by "
              "φ^{A→B}: 1 = the two directions attend to the same anatomy (ExFIRE's inverse-consistency claim)."]
    div = [[c, f"{real} vs {synth}", _cell(summary.get(f"divergence/{c}/{kind}"))]
           for c, kinds in ex.DIVERGENCE_PAIRS.items() for kind, (real, synth) in kinds.items()
           if f"divergence/{c}/{kind}" in summary]
    if div:
        parts += ["", "### Discriminator maps, real against synthetic (Jensen–Shannon divergence, nats, 0 … ln 2)",
                  "", _md(["D", "maps", "JS divergence"], div)]
    if corr:
        crow = [[k, str(v["n"]), f"{_p(v['spearman'])} (p = {_p(v['spearman_p'])})",
                 f"{_p(v['pearson'])} (p = {_p(v['pearson_p'])})"] for k, v in corr.items()]
        parts += ["", "### Does the discriminator divergence track registration error? (across test pairs)", "",
                  _md(["series", "pairs", "Spearman ρ", "Pearson r"], crow)]
    return "\n".join(parts) + "\n"


def correlation_figure(corr: dict, path: Path) -> None:
    """Scatter of divergence against registration error, one panel per series."""
    import matplotlib.pyplot as plt

    keys = [k for k, v in corr.items() if v["x"] and v["spearman"] is not None]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.1), squeeze=False)
    for ax, k in zip(axes[0], keys):
        v = corr[k]
        ax.scatter(v["x"], v["y"], s=8, alpha=0.6)
        ax.set_xlabel(k.split(" vs ")[0], fontsize=7)
        ax.set_ylabel(k.split(" vs ")[1], fontsize=7)
        ax.set_title(f"Spearman ρ = {v['spearman']:.2f}, n = {v['n']}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------- fire explain
def explain_settings(cfg, overrides: list[str] | None = None) -> ex.ExplainSettings:
    """A checkpoint's ``explain`` settings with ``explain.*=value`` overrides (other keys refused)."""
    from .config import ConfigError, apply_overrides

    other = [o for o in overrides or [] if not o.startswith("explain.")]
    if other:
        raise ConfigError(f"{' '.join(other)}: only explain.* settings can be changed here")
    return ex.ExplainSettings.from_config(apply_overrides(cfg, overrides))


def explain_files(checkpoint, moving, fixed, out_dir, moving_labels=None, fixed_labels=None,
                  overrides: list[str] | None = None, device=None) -> dict:
    """Grad-CAM maps of one NIfTI pair, written in the fixed image's space.

    Every input is checked before any work starts (:class:`register.Registrar`); the outputs are
    written all or none. Writes into ``out_dir``:

    * ``<component>_<direction>_<image>.nii.gz``: each map scaled to a maximum of 1, on the fixed
      image's grid with its header. Maps that lie in the moving image's space (G on x^A, T^{B→A})
      are carried into the fixed space by FIRE's φ^{A→B}, so every map overlays the fixed image
      and ``fire register``'s warped output;
    * ``gradcam_panel.png``: the maps laid out like ExFIRE Figs 2–4 (model grid; x^A maps over x^A);
    * ``explain.json``: settings, explained scalars, each map's raw Grad-CAM maximum, the measures;
    * ``explain.md``: the table printed.

    Args:
        moving_labels, fixed_labels: optional label maps on the moving / fixed image's grid; the
            share of mass per structure (the checkpoint's structures) needs them.
        overrides: ``explain.*=value`` changes to the checkpoint's ``explain`` config (what is explained).

    Returns:
        ``{"table", "measures", "written"}``.
    """
    from .io import image_like, nifti_writer, save_atomic, spatial_shape
    from .register import Registrar, grid_to_fixed
    from .viz import gradcam_panel

    reg = Registrar(checkpoint, device=device)
    module = reg.module
    if module.net.NAME != "FIRE":
        raise ValueError(f"{checkpoint}: Grad-CAM explains FIRE's components; the {module.net.NAME} model has none")
    settings = explain_settings(module.cfg, overrides)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if settings.region and (moving_labels is None or fixed_labels is None):
        raise ValueError(f"explain.region={list(settings.region)} needs --moving-labels and --fixed-labels (each "
                         "direction's displacement is averaged over its own fixed image's region)")
    inputs = reg.prepare(moving, fixed, moving_labels=moving_labels, fixed_labels=fixed_labels)
    x_a, x_b, lab_a, lab_b = inputs.moving, inputs.fixed, inputs.moving_labels, inputs.fixed_labels
    fix, grid = inputs.fixed_image, inputs.grid
    net = module.net.eval()
    maps = ex.explain_pair(net, x_a, x_b, settings, fixed_label=lab_b, moving_label=lab_a)
    u_ab = module.register(x_a, x_b)["field"]
    values = pair_values(maps, u_ab, {"A": lab_a, "B": lab_b}, module.label_names)
    summary = summarise(values)
    table = tables(summary, list(maps), list(module.label_names.values()), settings)

    writers = {}
    for name, m in maps.items():
        data = grid_to_fixed(ex.unit_max(ex.carry_to_fixed(m, u_ab)), grid, fix.affine, spatial_shape(fix))
        img = image_like(fix, data, np.float32, f"fire explain: Grad-CAM {name}")
        writers[out_dir / f"{file_stem(name)}.nii.gz"] = nifti_writer(img)
    fig = gradcam_panel(maps, 0, title=f"{Path(inputs.moving_name).name} → {Path(inputs.fixed_name).name}")
    writers[out_dir / "gradcam_panel.png"] = lambda p, fig=fig: fig.savefig(p, dpi=110, format="png")
    record = {"checkpoint": str(checkpoint), "moving": inputs.moving_name, "fixed": inputs.fixed_name,
              "moving_labels": None if moving_labels is None else str(moving_labels),
              "fixed_labels": None if fixed_labels is None else str(fixed_labels),
              "settings": asdict(settings), "structures": module.label_names,
              "raw_max": {k: float(m.cam.max()) for k, m in maps.items()},
              "measures": {k: v["values"][0] for k, v in summary.items()}}
    writers[out_dir / "explain.json"] = lambda p: p.write_text(json.dumps(record, indent=1, default=str,
                                                                          allow_nan=False))
    writers[out_dir / "explain.md"] = lambda p: p.write_text(table)
    try:
        written = save_atomic(writers)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    stale = [p for p in out_dir.glob("*.nii.gz") if p.name.split("_")[0] in ("G", "T", "D") and p not in written]
    for p in stale:  # maps of an earlier run that this one did not write (e.g. D's, from another checkpoint)
        p.unlink()
    log.info("wrote %d files into %s%s", len(written), out_dir, f" (removed {len(stale)} stale maps)" if stale else "")
    return {"table": table, "measures": values, "written": written}
