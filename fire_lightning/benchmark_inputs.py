"""What ``fire benchmark`` scores: the trained model, the data config of its test pairs and the output
folder, with the benchmark's rules: the network is scored as trained (only inference keys change), the
held-out test anatomy does not move, and named protocols give earlier test pairs."""

from __future__ import annotations

from pathlib import Path

#: data keys that decide which anatomy is test anatomy: a benchmark must not move them
SPLIT_KEYS = ("name", "spatial_dims", "spacing", "size", "min_brain_fraction", "phantom.seed", "phantom.split",
              "phantom.subjects", "subject_split", "split_seed", "acdc.subsets", "mrbrains.releases")


#: model keys that a benchmark may change on a trained network (they act at inference only)
INFERENCE_KEYS = ("model.affine.passes_eval", "model.affine.fine_passes_eval", "model.affine.full_passes_eval",
                  "model.affine.symmetric_passes_eval", "model.nonrigid.passes_eval")


#: named evaluation protocols (``fire benchmark --protocol NAME``): data overrides giving earlier test pairs.
#: ``mild``: the elastic part of the test transforms before the non-rigid work (7 control points over the image,
#: 6 mm, rotations ±10°), where True − True-Affine was worth under a Dice point
PROTOCOLS = {"mild": {"data.augment.elastic_control_points": 7, "data.augment.elastic_max_mm": 6.0,
                      "data.augment.rotate_deg": 10.0}}


def run_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """The checkpoint ``--checkpoint`` names for a run folder: a path, a file in ``RUN/checkpoints`` with or
    without ``.ckpt`` (``iter800``), or None for ``last.ckpt``. A name that matches nothing comes back as
    given, for the loader's "checkpoint not found"."""
    if not checkpoint:
        return run_dir / "checkpoints" / "last.ckpt"
    named = [Path(checkpoint), run_dir / "checkpoints" / checkpoint, run_dir / "checkpoints" / f"{checkpoint}.ckpt"]
    return next((c for c in named if c.exists()), Path(checkpoint))


def benchmark_inputs(target: str, checkpoint: str | None, data: str | None, overrides: list[str]):
    """``fire benchmark`` TARGET (run folder or checkpoint) → (model, config, data module, checkpoint, out folder)."""
    from omegaconf import OmegaConf

    from .config import apply_overrides, load_config
    from .module import load_module
    from .schema import rename_old_override
    from .train import CONFIG_NAME, load_run_config, make_datamodule

    target = Path(target)
    if target.is_dir():
        run_dir = target
        ckpt = run_checkpoint(target, checkpoint)
    else:
        ckpt = target
        run_dir = ckpt.parent.parent if (ckpt.parent.parent / CONFIG_NAME).is_file() else None
    overrides = [rename_old_override(o) for o in overrides]  # old key names: their new place, with a warning
    model_keys = [o.split("=", 1)[0] for o in overrides if o.startswith("model.")]
    fixed = [k for k in model_keys if k not in INFERENCE_KEYS]
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: a benchmark scores the trained network as it is; of the model's keys "
                         f"only {', '.join(INFERENCE_KEYS)} can change at inference")
    model = load_module(ckpt)
    if data is not None:
        cfg = load_config(data, overrides)
    elif run_dir is not None:
        cfg = load_run_config(run_dir, overrides)
    else:  # a lone checkpoint: the data config it was trained with
        cfg = apply_overrides(model.cfg, overrides)
    trained = model.cfg.data
    if cfg.data.name == trained.name:  # same data: the test pairs must come from the same held-out anatomy
        moved = [k for k in SPLIT_KEYS if OmegaConf.select(cfg.data, k) != OmegaConf.select(trained, k)]
        if moved:
            raise ValueError(f"{ckpt}: the data config changes {', '.join('data.' + k for k in moved)} from what the "
                             "model was trained with; that moves the held-out test anatomy (and could test on "
                             "training anatomy)")
    elif cfg.data.spatial_dims != trained.spatial_dims or float(cfg.data.spacing) != float(trained.spacing):
        raise ValueError(f"{ckpt}: the model is {trained.spatial_dims}D at {trained.spacing} mm, the data "
                         f"config {cfg.data.spatial_dims}D at {cfg.data.spacing} mm")
    for key in model_keys:  # inference-only keys (checked above)
        model.set_inference_key(key.split(".", 1)[1], OmegaConf.select(cfg, key))
    dm = make_datamodule(cfg)
    check_held_out(dm, run_dir, ckpt)
    dm.setup("test")
    if tuple(float(v) for v in dm.spacing) != tuple(float(v) for v in model.spacing):
        raise ValueError(f"{ckpt}: the model works at {tuple(model.spacing)} mm, the data at {tuple(dm.spacing)} mm")
    name = "benchmark" if ckpt.name == "last.ckpt" else f"benchmark-{ckpt.stem}"
    return model, cfg, dm, ckpt, (run_dir or ckpt.parent) / name


def check_held_out(dm, run_dir: Path | None, ckpt: Path) -> None:
    """Real datasets: the test subjects must not be subjects the run trained or validated on
    (``data_split.json`` in the run folder), whatever moved them (a new subject folder, ...)."""
    import json

    split_file = run_dir / "data_split.json" if run_dir is not None else None
    if split_file is None or not split_file.is_file() or not callable(getattr(dm, "describe", None)):
        return
    trained = json.loads(split_file.read_text())
    seen = set(trained.get("train", [])) | set(trained.get("val", []))
    leaked = sorted(seen & set(dm.describe().get("test", [])))
    if leaked:
        raise ValueError(f"{ckpt}: test subjects {', '.join(leaked)} were training/validation subjects of this run "
                         f"({split_file}); the data must keep the run's split")
