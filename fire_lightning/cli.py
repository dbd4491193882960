"""``fire`` command line: ``train``, ``evaluate``, ``benchmark``, ``profile``, ``register``, ``demo``.

Examples::

    fire train experiments/phantom2d.yaml trainer.max_steps=200 model.synthesis.width=16
    fire train experiments/phantom2d.yaml --resume            # newest run of that experiment
    fire train experiments/phantom2d.yaml --resume runs/phantom2d-20261121-101500
    fire evaluate runs/phantom2d-20261121-101500              # uses checkpoints/last.ckpt
    fire benchmark runs/phantom2d-20261121-101500             # Tables 2 and 4 against ANTs, in RUN/benchmark
    fire benchmark runs/demo --compare runs/micnn --no-ants   # + another run (FIRE or MI-CNN) on the same pairs
    fire benchmark runs/phantom2d-20261121-101500 --peers ants,greedy,elastix   # ... and Greedy, elastix
    fire ablation runs/a runs/b --out docs/results/affine-ablation              # one table of several benchmarked runs
    fire profile experiments/phantom2d.yaml                   # loader, training step, memory, inference
    fire sweep experiments/sweeps/phantom2d_small.yaml        # Optuna (or --backend wandb) sweep + leaderboard
    fire demo                                                 # train on the phantom + the benchmark
    fire data check /path/to/mrbrains --dataset mrbrains      # subjects, files, split (or what is wrong)
    fire data check /path/to/ACDC --dataset acdc              # ACDC patients, ED/ES frames, split
    fire register --checkpoint RUN/checkpoints/last.ckpt --moving t1.nii.gz --fixed flair.nii.gz \
        --out t1_in_flair.nii.gz [--field field.nii.gz --affine affine.mat]   # or --csv pairs.csv

The parser is :mod:`.cli_parser`; each command below hands its arguments to one library function.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from .cli_parser import DEFAULT_EXPERIMENT, build_parser  # noqa: F401  (re-exported)
from .demo import DEMO_ANTS_ICE_EVERY, DEMO_REFINE_STEPS  # noqa: F401  (re-exported)
from .errors import Preempted
from .schema import ConfigError

log = logging.getLogger("fire")


def load_config(path, overrides=None):
    """:func:`config.load_config`, imported when a command needs it: ``fire register`` does not load
    an experiment, and importing OmegaConf would cost it a tenth of a second."""
    from .config import load_config as load

    return load(path, overrides)


def _refine(args):
    from .refine import settings_from_cli

    return settings_from_cli(args.refine, args.refine_lr_affine, args.refine_lr_field, args.refine_smooth)


def setup_logging(verbose: bool) -> None:
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
        from .benchmark_run import evaluate_run

        evaluate_run(result["run_dir"], result["model"], result["datamodule"], checkpoint=result["checkpoint"], cfg=cfg)
    return 0


def _cmd_evaluate(args) -> int:
    from .benchmark_run import evaluate_run

    evaluate_run(args.run, checkpoint=args.checkpoint)
    return 0


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
    from .benchmark_run import BenchmarkOptions, BenchmarkTarget, run_benchmark
    from .peers import PEERS

    refine = _refine(args)
    curve_steps = None
    if args.refine_curve is not None:
        from .refine_curve import parse_steps

        curve_steps = parse_steps(args.refine_curve)
    compare = [c for c in args.compare if "=" not in c]  # `--compare RUN k=v`: the override is an override
    overrides = [*args.overrides, *(c for c in args.compare if "=" in c)]
    what = BenchmarkTarget(args.target, args.checkpoint, args.data, tuple(overrides), args.protocol, args.split,
                           args.out)
    names = [n for n in args.peers if not (args.no_ants and n == "ants")]
    ants = AntsParams.preset(args.ants_preset, ice_every=args.ants_ice_every) if "ants" in names else None
    peers = {n: PEERS[n].make_params(ice_every=args.ants_ice_every) for n in names if n != "ants"}
    run_benchmark(what, BenchmarkOptions(ants, args.threads, args.max_pairs, args.explain, refine,
                                                tuple(compare), peers),
                  shift=args.shift, curve_steps=curve_steps)
    return 0


def _cmd_demo(args) -> int:
    from .baselines import AntsParams
    from .demo import run_demo

    refine = _refine(args)
    cfg = load_config(args.config, args.overrides)
    run_demo(cfg, ants=None if args.no_ants else AntsParams(ice_every=args.ants_ice_every), refine=refine)
    return 0


def _cmd_sweep(args) -> int:
    from .sweep_launch import SweepLaunch, launch_sweep

    return launch_sweep(args.sweep, SweepLaunch(args.backend, args.gpus, args.count, args.storage, args.out, args.seed,
                                                args.sweep_id, args.project))


def _cmd_ablation(args) -> int:
    from .ablation import ablation

    print(ablation(args.runs, args.base, args.out))
    if args.out:
        print(f"written: {Path(args.out) / 'ablation.md'} and ablation.csv")
    return 0


def _cmd_export_pairs(args) -> int:
    from .datasets import held_out_pairs
    from .export import export_pairs

    dataset, spacing = held_out_pairs(args.config, args.overrides)
    path = export_pairs(dataset, args.out, spacing, args.max_pairs, args.orientation)
    print(f"written: {path} and its NIfTI files ({args.orientation}); register and score them with\n"
          f"  fire register --checkpoint RUN/checkpoints/last.ckpt --csv {path}")
    return 0


def _cmd_register(args) -> int:
    from .register import Registrar, register_csv

    refine = _refine(args)
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


def _cmd_data_check(args) -> int:
    from .datasets import check_dataset

    for line in check_dataset(args.root, args.dataset, args.config, args.overrides):
        print(line)
    print("ok")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "profile": _cmd_profile, "benchmark": _cmd_benchmark,
            "demo": _cmd_demo, "sweep": _cmd_sweep, "ablation": _cmd_ablation, "export_pairs": _cmd_export_pairs,
            "register": _cmd_register, "explain": _cmd_explain, "data_check": _cmd_data_check}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(COMMANDS)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`--resume RUN trainer.max_steps=10`).
    stray = [e for e in extra if "=" not in e or e.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    setup_logging(args.verbose)
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
        message = " ".join(str(e).split())[:500]
        print(f"fire: error: {type(e).__name__}: {message} (run with -v for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fire: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
