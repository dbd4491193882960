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
                  "model.affine.symmetric_passes_eval", "model.nonrigid.passes_eval",
                  "model.nonrigid.symmetric_passes_eval")


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
    from .train import load_run_config, make_datamodule

    run_dir, ckpt = run_and_checkpoint(target, checkpoint)
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
    check_same_anatomy(cfg.data, model.cfg.data, ckpt)
    for key in model_keys:  # inference-only keys (checked above)
        model.set_inference_key(key.split(".", 1)[1], OmegaConf.select(cfg, key))
    dm = make_datamodule(cfg)
    check_held_out(dm, run_dir, ckpt)
    dm.setup("test")
    if tuple(float(v) for v in dm.spacing) != tuple(float(v) for v in model.spacing):
        raise ValueError(f"{ckpt}: the model works at {tuple(model.spacing)} mm, the data at {tuple(dm.spacing)} mm")
    name = "benchmark" if ckpt.name == "last.ckpt" else f"benchmark-{ckpt.stem}"
    return model, cfg, dm, ckpt, (run_dir or ckpt.parent) / name


def run_and_checkpoint(target: str | Path, checkpoint: str | None = None) -> tuple[Path | None, Path]:
    """``(run folder or None, checkpoint)`` of a run folder (its ``checkpoints/last.ckpt``, or ``checkpoint``: a path
    or a name in its ``checkpoints/``) or of a checkpoint file (its run folder when it sits in one)."""
    from .config import CONFIG_NAME

    target = Path(target)
    if target.is_dir():
        return target, run_checkpoint(target, checkpoint)
    return (target.parent.parent if (target.parent.parent / CONFIG_NAME).is_file() else None), target


def check_same_anatomy(data, trained, ckpt: Path) -> None:
    """The data config ``data`` gives a model trained on ``trained`` (both ``data`` sections) test pairs from its
    own held-out anatomy (same dataset: no key of :data:`SPLIT_KEYS` moved), or at least its dimensions and
    voxel size (another dataset)."""
    from omegaconf import OmegaConf

    from .config import held_out_by_subject

    if data.name == trained.name:  # same data: the test pairs must come from the same held-out anatomy
        # the subjects decide the test anatomy when either side is held out by subject; when both hold out the
        # one brain's split (no subjects, or training subjects of the split's training slices), the split does
        keys = SPLIT_KEYS if held_out_by_subject(data) or held_out_by_subject(trained) else \
            tuple(k for k in SPLIT_KEYS if k != "phantom.subjects")
        moved = [k for k in keys if OmegaConf.select(data, k) != OmegaConf.select(trained, k)]
        if moved:
            raise ValueError(f"{ckpt}: the data config changes {', '.join('data.' + k for k in moved)} from what the "
                             "model was trained with; that moves the held-out test anatomy (and could test on "
                             "training anatomy)")
    elif data.spatial_dims != trained.spatial_dims or float(data.spacing) != float(trained.spacing):
        raise ValueError(f"{ckpt}: the model is {trained.spatial_dims}D at {trained.spacing} mm, the data "
                         f"config {data.spatial_dims}D at {data.spacing} mm")


def compared_models(runs, cfg, dm) -> tuple[dict, dict]:
    """``fire benchmark --compare RUN ...``: each run's (or checkpoint's) trained model, ``({run name: model},
    {run name: its checkpoint})``,
    checked to be scorable on the test pairs of ``cfg`` / ``dm`` (the benchmarked run's) as the benchmarked
    model is: its held-out anatomy, its voxel size, and (a real dataset) none of its training subjects."""
    from .module import load_module

    out, paths = {}, {}
    for run in runs:
        run_dir, ckpt = run_and_checkpoint(run)
        model = load_module(ckpt)
        check_same_anatomy(cfg.data, model.cfg.data, ckpt)
        check_held_out(dm, run_dir, ckpt)
        if tuple(float(v) for v in dm.spacing) != tuple(float(v) for v in model.spacing):
            raise ValueError(f"{ckpt}: the model works at {tuple(model.spacing)} mm, the data at "
                             f"{tuple(dm.spacing)} mm")
        name = run_dir.name if run_dir is not None else ckpt.stem
        if name in out:
            raise ValueError(f"--compare {run}: a run named {name} is already compared")
        out[name], paths[name] = model, str(ckpt)
    return out, paths


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
