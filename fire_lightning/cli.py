"""``fire`` command line: ``train``, ``evaluate``, ``benchmark``, ``profile``, ``register``, ``demo``.

Examples::

    fire train experiments/phantom2d.yaml trainer.max_steps=200 model.synthesis.width=16
    fire train experiments/phantom2d.yaml --resume            # newest run of that experiment
    fire train experiments/phantom2d.yaml --resume runs/phantom2d-20261121-101500
    fire evaluate runs/phantom2d-20261121-101500              # uses checkpoints/last.ckpt
    fire benchmark runs/phantom2d-20261121-101500             # Tables 2 and 4 against ANTs, in RUN/benchmark
    fire ablation runs/a runs/b --out ablation/               # one table of several benchmarked runs
    fire profile experiments/phantom2d.yaml                   # loader, training step, memory, inference
    fire sweep experiments/sweeps/phantom2d_small.yaml        # Optuna (or --backend wandb) sweep + leaderboard
    fire demo                                                 # train on the phantom + the benchmark
    fire data check /path/to/mrbrains --dataset mrbrains      # subjects, files, split (or what is wrong)
    fire data check /path/to/ACDC --dataset acdc              # ACDC patients, ED/ES frames, split
    fire register --checkpoint RUN/checkpoints/last.ckpt --moving t1.nii.gz --fixed flair.nii.gz \
        --out t1_in_flair.nii.gz [--field field.nii.gz --affine affine.mat]   # or --csv pairs.csv
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from .errors import Preempted
from .schema import ConfigError

log = logging.getLogger("fire")

DEFAULT_EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "phantom2d.yaml"


def load_config(path, overrides=None):
    """:func:`config.load_config`, imported when a command needs it: ``fire register`` does not load
    an experiment, and importing OmegaConf would cost it a tenth of a second."""
    from .config import load_config as load

    return load(path, overrides)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Third-party chatter that says nothing to a user of this tool.
    for pattern in (".*LeafSpec.*", ".*does not have many workers.*", ".*no pre-optimization state.*",
                    ".*is deprecated.*", ".*TensorBoard.*", ".*Starting from v1.9.0.*"):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def _cmd_train(args) -> int:
    from .train import latest_run_dir, load_run_config, train

    resume_dir = None
    if args.resume is not None and "=" in args.resume:  # `--resume k=v`: an override, not a folder
        args.overrides = [args.resume, *args.overrides]
        args.resume = "latest"
    if args.config is not None and "=" in args.config:  # `fire train --resume RUN k=v`: no config given
        args.overrides = [args.config, *args.overrides]
        args.config = None
    if args.config is None and (args.resume is None or args.resume == "latest"):
        raise ValueError("train needs an experiment config (e.g. experiments/phantom2d.yaml), or --resume RUN_DIR")
    if args.resume is not None:
        if args.resume == "latest":
            cfg = load_config(args.config, args.overrides)
            resume_dir = latest_run_dir(cfg)
        else:
            resume_dir = Path(args.resume)
        cfg = load_run_config(resume_dir, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume_dir=resume_dir)
    print(f"run folder: {result['run_dir']}\nlast checkpoint: {result['checkpoint']}")
    if args.evaluate:
        _evaluate_run(result["run_dir"], result["model"], result["datamodule"], checkpoint=result["checkpoint"],
                      cfg=cfg)
    return 0


def _evaluate_run(run_dir, model=None, dm=None, checkpoint=None, out_dir=None, ants=None, threads=None,
                  max_pairs=None, cfg=None, explain: bool = False, refine=None, split: str = "test") -> dict:
    """Score ``model`` (or the run's checkpoint) on the test pairs of ``dm`` (or the run's data), or on its
    validation pairs (``split="val"``: to choose inference settings without looking at the test pairs)."""
    from omegaconf import OmegaConf

    from .evaluate import dice_table, evaluate
    from .module import load_module
    from .train import load_run_config, make_datamodule

    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint or run_dir / "checkpoints" / "last.ckpt")
    if model is None:
        model = load_module(checkpoint)
    if dm is None:
        cfg = load_run_config(run_dir)
        dm = make_datamodule(cfg)
        dm.setup("test")
    if split == "val":
        dm.setup("fit")
        dataset = dm.val_dataloader().dataset
    else:
        dataset = dm.test_dataset()
    meta = {"checkpoint": str(checkpoint), "split": split, **model.inference_passes()}
    if cfg is not None:
        meta["data"] = OmegaConf.to_container(cfg.data, resolve=True)
    out_dir = Path(out_dir or run_dir)
    settings = None
    if explain:
        from .explain import ExplainSettings

        settings = ExplainSettings.from_config(cfg if cfg is not None else model.cfg)
    results = evaluate(model, dataset, out_dir, ants=ants, threads=threads, max_pairs=max_pairs, meta=meta,
                       explain=settings, refine=refine)
    from .wandb_report import log_evaluation

    log_evaluation(run_dir, cfg if cfg is not None else model.cfg, results, out_dir, split)
    print(dice_table(results))
    if explain:
        print("\n" + (out_dir / "explain.md").read_text())
    print(f"\nresults: {out_dir / 'results.json'} (also results.md, table2.csv, table4.csv, per_pair.csv, "
          "dice_boxplot.png, example.png)")
    return results


def _cmd_evaluate(args) -> int:
    _evaluate_run(args.run, checkpoint=args.checkpoint)
    return 0


#: data keys that decide which anatomy is test anatomy: a benchmark must not move them
SPLIT_KEYS = ("name", "spatial_dims", "spacing", "size", "split", "min_brain_fraction", "phantom_seed",
              "subject_split", "split_seed", "acdc_subsets", "releases")


#: model keys that a benchmark may change on a trained network (they act at inference only)
INFERENCE_KEYS = ("model.affine.passes_eval", "model.affine.fine_passes_eval", "model.affine.full_passes_eval",
                  "model.affine.symmetric_passes_eval", "model.nonrigid.passes_eval")


def _benchmark_inputs(target: str, checkpoint: str | None, data: str | None, overrides: list[str]):
    """``fire benchmark`` TARGET (run folder or checkpoint) → (model, config, data module, checkpoint, out folder)."""
    from omegaconf import OmegaConf

    from .config import apply_overrides
    from .module import load_module
    from .train import CONFIG_NAME, load_run_config, make_datamodule

    target = Path(target)
    if target.is_dir():
        run_dir = target
        ckpt = Path(checkpoint) if checkpoint else target / "checkpoints" / "last.ckpt"
        if checkpoint and not ckpt.exists() and (target / "checkpoints" / checkpoint).exists():
            ckpt = target / "checkpoints" / checkpoint  # `--checkpoint iter800.ckpt`
    else:
        ckpt = target
        run_dir = ckpt.parent.parent if (ckpt.parent.parent / CONFIG_NAME).is_file() else None
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
        moved = [k for k in SPLIT_KEYS if k in trained and cfg.data[k] != trained[k]]
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
    _check_held_out(dm, run_dir, ckpt)
    dm.setup("test")
    if tuple(float(v) for v in dm.spacing) != tuple(float(v) for v in model.spacing):
        raise ValueError(f"{ckpt}: the model works at {tuple(model.spacing)} mm, the data at {tuple(dm.spacing)} mm")
    name = "benchmark" if ckpt.name == "last.ckpt" else f"benchmark-{ckpt.stem}"
    return model, cfg, dm, ckpt, (run_dir or ckpt.parent) / name


def _check_held_out(dm, run_dir: Path | None, ckpt: Path) -> None:
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


def _cmd_profile(args) -> int:
    from .profiling import default_output, profile, table, write

    cfg = load_config(args.config, args.overrides)
    result = profile(cfg, steps=args.steps, warmup_steps=args.warmup_steps, loader_batches=args.loader_batches,
                     inference_pairs=args.inference_pairs, config_name=Path(args.config).name)
    out = write(result, args.out or default_output(cfg, result))
    print(table(result))
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0


def _cmd_benchmark(args) -> int:
    from .baselines import AntsParams
    from .refine import settings_from_cli

    refine = settings_from_cli(args.refine, args.refine_lr_affine, args.refine_lr_field)
    curve_steps = None
    if args.refine_curve is not None:
        from .refine_curve import parse_steps

        curve_steps = parse_steps(args.refine_curve)
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in PROTOCOLS.get(args.protocol or "", {}).items()]
    model, cfg, dm, ckpt, default_out = _benchmark_inputs(args.target, args.checkpoint, args.data, overrides)
    if args.protocol:
        default_out = default_out.with_name(f"{default_out.name}-{args.protocol}")
    if args.shift:
        from .shift import run_shift

        if args.split == "val" or curve_steps is not None or args.explain:
            raise ValueError("--shift scores its own held-out pairs; it takes no --split, --refine-curve or --explain")
        ants = None if args.no_ants else AntsParams.preset(args.ants_preset, ice_every=0)
        run_shift(model, cfg.data, Path(args.out or default_out.with_name("shift")), ants=ants, refine=refine,
                  threads=args.threads, max_per_level=args.max_pairs)
        return 0
    if args.split == "val" and (curve_steps is not None or args.explain):
        raise ValueError("--split val scores the validation pairs only; --refine-curve and --explain are test-pair reports")
    if args.split == "val" and not args.out:
        default_out = default_out.with_name(default_out.name + "-val")
    out_dir = Path(args.out or default_out)
    ants = None if args.no_ants else AntsParams.preset(args.ants_preset, ice_every=args.ants_ice_every)
    results = _evaluate_run(default_out.parent, model, dm, checkpoint=ckpt, out_dir=out_dir, ants=ants,
                            threads=args.threads, max_pairs=args.max_pairs, cfg=cfg, explain=args.explain,
                            refine=refine, split=args.split)
    if curve_steps is not None:
        from .refine import RefineSettings
        from .refine_curve import refine_curve

        curve = refine_curve(model, dm.test_dataset(), curve_steps, out_dir, settings=refine or RefineSettings(),
                             reference=results, max_pairs=args.max_pairs, threads=args.threads)
        print("\n" + (out_dir / "refine_curve.md").read_text())
        print(f"refinement curve: {out_dir / 'refine_curve.png'} (also refine_curve.json, .csv, .md); "
              f"{len(curve['rows'])} values of N")
    return 0


#: named evaluation protocols (``fire benchmark --protocol NAME``): data overrides giving earlier test pairs.
#: ``mild``: the elastic part of the test transforms before the non-rigid work (7 control points over the image,
#: 6 mm, rotations ±10°), where True − True-Affine was worth under a Dice point
PROTOCOLS = {"mild": {"data.augment.elastic_control_points": 7, "data.augment.elastic_max_mm": 6.0,
                      "data.augment.rotate_deg": 10.0}}


#: FIRE+IO steps in the demo's benchmark (the trade-off measured in the README's refinement curve)
DEMO_REFINE_STEPS = 10
#: the demo's ANTs registers one pair in 3 both ways for its inverse-consistency error: the other runs
#: took half of the benchmark's ANTs time (about 70 s of a demo that must stay within 15 min on 2 cores)
DEMO_ANTS_ICE_EVERY = 3


def _cmd_demo(args) -> int:
    from .baselines import AntsParams
    from .refine import settings_from_cli
    from .train import train

    refine = settings_from_cli(args.refine, args.refine_lr_affine, args.refine_lr_field)
    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    run_dir = Path(result["run_dir"])
    ants = None if args.no_ants else AntsParams(ice_every=args.ants_ice_every)
    _evaluate_run(run_dir, result["model"], result["datamodule"], checkpoint=result["checkpoint"],
                  out_dir=run_dir / "benchmark", ants=ants, cfg=cfg, explain=True, refine=refine)
    return 0


def _cmd_sweep(args) -> int:
    import os

    from .sweep import load_sweep, run_optuna, run_wandb, spawn_workers, sweep_dir

    sweep = load_sweep(args.sweep)
    folder = sweep_dir(sweep, args.out)
    exp = load_config(sweep.experiment, sweep.fixed)
    backend = args.backend
    if backend is None:  # W&B's own sweeps when W&B is online, else Optuna
        online = os.environ.get("WANDB_MODE", exp.logger.wandb_mode if exp.logger.wandb else "offline") == "online"
        backend = "wandb" if online else "optuna"
    gpus = [g for g in (args.gpus or "").split(",") if g]
    if backend == "wandb":
        project = args.project or exp.logger.wandb_project
        if len(gpus) > 1:
            sweep_id = args.sweep_id or run_wandb(sweep, folder, None, 0, project)
            rest = ["--backend", "wandb", "--sweep-id", sweep_id, "--project", project, "--out", str(folder)]
            return spawn_workers([str(sweep.path), *rest, *(["--count", str(args.count)] if args.count else [])], gpus)
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        run_wandb(sweep, folder, args.sweep_id, args.count, project)
        return 0
    if len(gpus) > 1:
        folder.mkdir(parents=True, exist_ok=True)
        rest = ["--backend", "optuna", "--out", str(folder), *(["--storage", args.storage] if args.storage else []),
                *(["--count", str(args.count)] if args.count else [])]
        code = spawn_workers([str(sweep.path), *rest], gpus, seed=args.seed)
    else:
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        run_optuna(sweep, folder, args.storage, args.count, args.seed)
        code = 0
    print(f"sweep folder: {folder}\n" + (folder / "leaderboard.md").read_text())
    return code


def _cmd_ablation(args) -> int:
    from .ablation import ablation

    print(ablation(args.runs, args.base, args.out))
    if args.out:
        print(f"written: {Path(args.out) / 'ablation.md'} and ablation.csv")
    return 0


def _cmd_export_pairs(args) -> int:
    from .export import export_pairs
    from .train import CONFIG_NAME, load_run_config, make_datamodule

    target = Path(args.config)
    cfg = load_run_config(target, args.overrides) if target.is_dir() and (target / CONFIG_NAME).is_file() \
        else load_config(target, args.overrides)
    dm = make_datamodule(cfg)
    dm.setup("test")
    path = export_pairs(dm.test_dataset(), args.out, dm.spacing, args.max_pairs, args.orientation)
    print(f"written: {path} and its NIfTI files ({args.orientation}); register and score them with\n"
          f"  fire register --checkpoint RUN/checkpoints/last.ckpt --csv {path}")
    return 0


def _cmd_register(args) -> int:
    from .refine import settings_from_cli
    from .register import Registrar, register_csv

    refine = settings_from_cli(args.refine, args.refine_lr_affine, args.refine_lr_field)
    single = {"--moving": args.moving, "--fixed": args.fixed, "--out": args.out, "--moving-labels": args.moving_labels,
              "--out-labels": args.out_labels, "--field": args.field, "--affine": args.affine}
    if args.csv is not None:
        given = [k for k, v in single.items() if v is not None]
        if given:
            raise ValueError(f"{args.csv}: --csv takes every path from the CSV file; drop {', '.join(given)}")
        from tqdm import tqdm

        report = register_csv(args.checkpoint, args.csv, device=args.device,
                              on_error=lambda msg: tqdm.write("fire: error: " + msg, file=sys.stderr), refine=refine)
        if report.failures:
            rows = ", ".join(str(i) for i, _ in report.failures)
            print(f"fire: error: {len(report.failures)} of {report.rows} pairs in {args.csv} failed (rows {rows})",
                  file=sys.stderr)
            return 2
        print(f"registered {report.rows} pairs from {args.csv}")
        if report.dice:
            import numpy as np

            mean = np.array([d["mean"] for d in report.dice])
            print(f"mean Dice of the warped labels against fixed_labels: {100 * mean.mean():.2f} % "
                  f"(std {100 * (mean.std(ddof=1) if mean.size > 1 else 0):.2f}) over {mean.size} pairs; per pair: "
                  f"{Path(args.csv).with_name(Path(args.csv).stem + '_dice.csv')}")
        return 0
    missing = [k for k in ("--moving", "--fixed", "--out") if single[k] is None]
    if missing:
        raise ValueError(f"register needs {', '.join(missing)} (or --csv PAIRS.csv)")
    try:
        result = Registrar(args.checkpoint, device=args.device, refine=refine).register_files(
            args.moving, args.fixed, args.out, moving_labels=args.moving_labels, out_labels=args.out_labels,
            field=args.field, affine=args.affine)
    except OSError as e:  # a failed write: one line like the other errors
        raise ValueError(" ".join(str(e).split())) from None
    print(f"warped image: {args.out} ({result.seconds:.1f} s)")
    return 0


def _cmd_explain(args) -> int:
    from .explain_report import explain_files

    out = args.out or f"{Path(args.fixed).name.split('.')[0]}_explain"
    result = explain_files(args.checkpoint, args.moving, args.fixed, out, moving_labels=args.moving_labels,
                           fixed_labels=args.fixed_labels, overrides=args.overrides, device=args.device)
    print(result["table"])
    print(f"Grad-CAM maps (NIfTI, fixed image's space), gradcam_panel.png, explain.json: {out}/")
    return 0


#: the experiment whose data section ``fire data check --dataset NAME`` checks against when no --config is given
DATASET_CONFIGS = {"acdc": "acdc2d.yaml", "mrbrains": "mrbrains2d_t1_flair.yaml"}


def _cmd_data_check(args) -> int:
    from .train import make_datamodule

    overrides = [*args.overrides, f"data.name={args.dataset}", f"data.root={args.root}"]
    config = args.config
    if config is None and args.dataset in DATASET_CONFIGS:  # the dataset's own defaults (ACDC: 60/10/30)
        config = DEFAULT_EXPERIMENT.parent / DATASET_CONFIGS[args.dataset]
    cfg = load_config(config, overrides)
    dm = make_datamodule(cfg)
    if not callable(getattr(dm, "check", None)):
        raise ValueError(f"data.name={args.dataset}: this dataset has no check (it is not read from data.root)")
    for line in dm.check():
        print(line)
    print("ok")
    return 0


def _refine_options(parser) -> None:
    parser.add_argument("--refine", default=None, metavar="N", help="FIRE+IO: N steps of per-pair optimisation "
                        "(MI + smoothness) from the network's transform; 0 reproduces the network's output")
    parser.add_argument("--refine-lr-affine", default=None, metavar="LR", help="Adam step of the affine part (default 1e-2)")
    parser.add_argument("--refine-lr-field", default=None, metavar="LR", help="Adam step of the non-rigid field (default 2e-3)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fire", description="FIRE / ExFIRE multi-modal image registration")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from an experiment config")
    t.add_argument("config", nargs="?", help="experiment YAML, e.g. experiments/phantom2d.yaml (not needed with "
                   "--resume RUN_DIR, which uses the run's own config.yaml)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=200")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                   help="continue a run from its checkpoints/last.ckpt (default: the newest run of the experiment)")
    t.add_argument("--evaluate", action="store_true", help="evaluate on the test pairs after training")
    t.set_defaults(func=_cmd_train)

    sw = sub.add_parser("sweep", help="a hyperparameter sweep from a W&B-format sweep file (Optuna or W&B)",
                        description="Runs the trials of SWEEP.yaml (W&B's sweep format: method, metric, parameters "
                                    "naming config keys, early_terminate, run_cap, command naming the experiment). "
                                    "Each trial is a run folder under the sweep folder, which also gets "
                                    "leaderboard.md/.csv and metric_vs_params.png. Stopped and started again, a sweep "
                                    "goes on where it stopped; no trial runs twice.")
    sw.add_argument("sweep", help="sweep file, e.g. experiments/sweeps/phantom2d_small.yaml")
    sw.add_argument("--backend", choices=("optuna", "wandb"), default=None,
                    help="optuna (default unless W&B is online): a study in SQLite under the sweep folder or "
                         "--storage; wandb: a W&B sweep with wandb.agent workers")
    sw.add_argument("--gpus", default=None, help="comma-separated GPU ids: one worker per GPU (default: trials one "
                    "after another in this process)")
    sw.add_argument("--count", type=int, default=None, help="trials this worker runs at most (default: up to "
                    "run_cap, or the whole grid)")
    sw.add_argument("--storage", default=None, help="Optuna database URL shared by workers on several machines "
                    "(e.g. postgresql://user@host/db; default sqlite:///SWEEP_FOLDER/optuna.db)")
    sw.add_argument("--out", default=None, help="sweep folder (default runs/sweeps/<sweep name>)")
    sw.add_argument("--seed", type=int, default=0, help="the sampler's seed (Optuna)")
    sw.add_argument("--sweep-id", default=None, help="join this W&B sweep instead of creating one")
    sw.add_argument("--project", default=None, help="W&B project (default: the experiment's logger.wandb_project)")
    sw.set_defaults(func=_cmd_sweep)

    e = sub.add_parser("evaluate", help="evaluate a run on its held-out test pairs")
    e.add_argument("run", help="run folder (holds config.yaml and checkpoints/)")
    e.add_argument("--checkpoint", default=None, help="checkpoint (default: RUN/checkpoints/last.ckpt)")
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("profile", help="where training time goes: data pipeline, training step, inference",
                        description="Measures, on this machine's device, the training loader alone (samples/s), "
                                    "training iterations/s with the time inside and between steps and the peak "
                                    "memory, and inference ms per pair; prints a table, writes JSON and says "
                                    "whether data or compute bounds training.")
    pr.add_argument("config", help="experiment YAML, e.g. experiments/phantom2d.yaml")
    pr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.precision=bf16-mixed")
    pr.add_argument("--steps", type=int, default=30, help="FIRE training iterations measured (default 30)")
    pr.add_argument("--warmup-steps", type=int, default=5, help="affine warm-up iterations measured, when the "
                    "config has a warm-up (default 5)")
    pr.add_argument("--loader-batches", type=int, default=30, help="batches drawn from the loader alone (default 30)")
    pr.add_argument("--inference-pairs", type=int, default=20, help="pairs timed at inference (default 20)")
    pr.add_argument("--out", default=None, help="JSON output (default: RUN_ROOT/profile/<experiment>-<cpu|cuda>.json)")
    pr.set_defaults(func=_cmd_profile)

    b = sub.add_parser("benchmark", help="Tables 2 and 4: FIRE against ANTs-Affine and ANTs-SyN on the test pairs")
    b.add_argument("target", help="run folder (uses checkpoints/last.ckpt and its config) or a checkpoint file")
    b.add_argument("overrides", nargs="*", help="key=value overrides of the data config, e.g. data.n_test_images=2, "
                   "and of the inference-only model keys: model.affine.passes_eval=5, model.affine.fine_passes_eval=3, "
                   "model.affine.full_passes_eval=2 (a model trained with those levels), "
                   "model.affine.symmetric_passes_eval=2")
    b.add_argument("--split", default="test", choices=["test", "val"], help="score the test pairs (default) or the "
                   "validation pairs, to choose inference settings without the test pairs (output: RUN/benchmark-val)")
    b.add_argument("--checkpoint", default=None, help="checkpoint, a path or a name in RUN/checkpoints/ "
                   "(default: last.ckpt; output then in RUN/benchmark-<name>)")
    b.add_argument("--data", default=None, help="experiment YAML whose data section gives the test pairs "
                   "(default: the run's own)")
    b.add_argument("--out", default=None, help="output folder (default: RUN/benchmark)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for FIRE and ANTs alike (default: all)")
    b.add_argument("--max-pairs", type=int, default=None, help="only the first N test pairs")
    b.add_argument("--no-ants", action="store_true", help="skip the ANTs baselines")
    b.add_argument("--ants-preset", default="fair", choices=["fair", "antspyx-default"],
                   help="ANTs settings: dense sampling and full-resolution SyN (fair, default), or antspyx's defaults")
    b.add_argument("--ants-ice-every", type=int, default=1, metavar="K", help="register one pair in K the other way "
                   "round too, for ANTs' inverse-consistency error (untimed runs that double ANTs' time; default 1: "
                   "every pair, 0: none)")
    b.add_argument("--explain", action="store_true", help="add the Grad-CAM measures of every test pair: share per "
                   "structure, A→B/B→A symmetry, discriminator divergence and its correlation with registration "
                   "error (explain.md, gradcam_example.png, and explain_correlation.png for adversarial models); explain.* "
                   "overrides choose what is explained")
    _refine_options(b)
    b.add_argument("--shift", action="store_true", help="the shift benchmark instead: held-out pairs with one factor "
                   "at a time (elastic size and spacing, rotation, scale, translation, resolution, contrast, slice) "
                   "pushed beyond the training range, every method at each level (RUN/shift: shift.md, shift.png; "
                   "--max-pairs: pairs per level)")
    b.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS), help="score the test pairs of a named "
                   "earlier protocol (mild: the weak elastic part of the first benchmark; output RUN/benchmark-mild)")
    b.add_argument("--refine-curve", default=None, metavar="N1,N2,...", help="also FIRE+IO's Dice and seconds per "
                   "pair at each N (e.g. 0,10,25,50,100,200) against the ANTs rows: refine_curve.png/.md/.csv/.json")
    b.set_defaults(func=_cmd_benchmark)

    d = sub.add_parser("demo", help="the main job: train on the embedded phantom, then the benchmark against ANTs "
                                    "with the Grad-CAM measures (fire benchmark --explain)")
    d.add_argument("--config", default=str(DEFAULT_EXPERIMENT))
    d.add_argument("overrides", nargs="*")
    d.add_argument("--no-ants", action="store_true", help="skip the ANTs baselines in the benchmark")
    d.add_argument("--ants-ice-every", type=int, default=DEMO_ANTS_ICE_EVERY, metavar="K", help="ANTs' "
                   f"inverse-consistency error on one pair in K (default {DEMO_ANTS_ICE_EVERY}; 1: every pair)")
    _refine_options(d)
    d.set_defaults(refine=str(DEMO_REFINE_STEPS))
    d.set_defaults(func=_cmd_demo)

    a = sub.add_parser("ablation", help="one table of several runs' benchmarks (same test pairs), each row with "
                                        "the command that reproduces it")
    a.add_argument("runs", nargs="+", help="run folders, each benchmarked (RUN/benchmark/results.json)")
    a.add_argument("--base", default=str(DEFAULT_EXPERIMENT),
                   help="the experiment the commands start from (default: experiments/phantom2d.yaml)")
    a.add_argument("--out", default=None, help="folder for ablation.md and ablation.csv")
    a.set_defaults(func=_cmd_ablation)

    xp = sub.add_parser("export-pairs", help="a data config's test pairs as NIfTI files and a pairs CSV for "
                                             "`fire register --csv` (which then scores the warped labels)")
    xp.add_argument("config", help="experiment YAML or run folder (its config.yaml)")
    xp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.test_seed=2026")
    xp.add_argument("--out", required=True, help="output folder")
    xp.add_argument("--max-pairs", type=int, default=None, help="only the first N test pairs")
    xp.add_argument("--orientation", default="LPS", choices=["RAS", "LPS"],
                    help="array orientation of the files (default LPS, as DICOM-derived NIfTI often is)")
    xp.set_defaults(func=_cmd_export_pairs)

    dt = sub.add_parser("data", help="inspect a dataset").add_subparsers(dest="data_command", required=True)
    c = dt.add_parser("check", help="list a dataset's subjects, files, shapes, spacings, labels and the split, "
                                    "or the one-line error of what is wrong")
    c.add_argument("root", help="the dataset folder (as data.root)")
    c.add_argument("--dataset", default="mrbrains", help="data.name (default: mrbrains)")
    c.add_argument("--config", default=None, help="experiment YAML (default: the dataset's own, "
                   "experiments/acdc2d.yaml or experiments/mrbrains2d_t1_flair.yaml)")
    c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.subject_split=[5,1,1]")
    c.set_defaults(func=_cmd_data_check)

    r = sub.add_parser("register", help="register NIfTI images with a trained checkpoint",
                       description="Warp --moving onto --fixed (outputs in the fixed image's space), or every "
                                   "pair of --csv (columns moving,fixed,out[,moving_labels,out_labels,field,affine]; "
                                   "relative paths from the CSV's folder).")
    r.add_argument("--checkpoint", required=True, help="e.g. RUN/checkpoints/last.ckpt")
    r.add_argument("--moving", help="moving image (.nii / .nii.gz, 2D or 3D as the checkpoint)")
    r.add_argument("--fixed", help="fixed image (the outputs live on its grid)")
    r.add_argument("--out", help="warped moving image (.nii / .nii.gz)")
    r.add_argument("--moving-labels", help="label map on the moving image's grid (needs --out-labels)")
    r.add_argument("--out-labels", help="warped labels, nearest neighbour (needs --moving-labels)")
    r.add_argument("--field", help="ITK displacement field, fixed grid, LPS mm (.nii.gz, .nrrd, .mha; 2D: .nrrd, .mha)")
    r.add_argument("--affine", help="FIRE's affine part as an ITK transform (.mat ANTs/Matlab, .txt/.tfm text)")
    r.add_argument("--csv", help="batch mode: a CSV of pairs")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto (default): CUDA when present, else CPU")
    _refine_options(r)
    r.set_defaults(func=_cmd_register)

    x = sub.add_parser("explain", help="Grad-CAM maps of every FIRE component for one pair (ExFIRE)",
                       description="Grad-CAM of G, T_af and T_nr (both directions) and D^A, D^B (adversarial "
                                   "models) for --moving → --fixed: each map as NIfTI in the fixed image's space, "
                                   "a panel like ExFIRE Figs 2-4, and a table of the share of each map inside each "
                                   "structure (with labels), the A→B/B→A symmetry and the discriminators' "
                                   "real-vs-synthetic divergence.")
    x.add_argument("--checkpoint", required=True, help="e.g. RUN/checkpoints/last.ckpt")
    x.add_argument("--moving", required=True, help="moving image x^A (.nii / .nii.gz)")
    x.add_argument("--fixed", required=True, help="fixed image x^B (the maps are written on its grid)")
    x.add_argument("--moving-labels", help="label map on the moving image's grid (share of Grad-CAM per structure)")
    x.add_argument("--fixed-labels", help="label map on the fixed image's grid (share per structure; explain.region)")
    x.add_argument("--out", help="output folder (default: <fixed name>_explain)")
    x.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    x.add_argument("overrides", nargs="*", help="explain.* settings, e.g. explain.scalar_T_nr=nonrigid "
                                               "explain.region=[3] explain.layer=output")
    x.set_defaults(func=_cmd_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`--resume RUN trainer.max_steps=10`).
    stray = [e for e in extra if "=" not in e or e.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except Preempted as e:  # SIGTERM / SIGUSR1: state saved; a non-zero code so that a scheduler requeues
        print("fire: " + str(e), file=sys.stderr)
        return e.exit_code
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print("fire: error: " + " ".join(str(e).split()), file=sys.stderr)  # always one line
        return 2
    except Exception as e:  # anything else (out of memory, an ANTs failure, ...): one line too, unless -v
        if args.verbose:
            raise
        print(f"fire: error: {type(e).__name__}: " + " ".join(str(e).split())[:500] + " (run with -v for the traceback)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fire: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
