"""``fire`` command line: ``train``, ``evaluate``, ``demo``.

Examples::

    fire train experiments/phantom2d.yaml trainer.max_steps=200 model.width=16
    fire train experiments/phantom2d.yaml --resume            # newest run of that experiment
    fire train experiments/phantom2d.yaml --resume runs/phantom2d-20261121-101500
    fire evaluate runs/phantom2d-20261121-101500              # uses checkpoints/last.ckpt
    fire demo                                                 # train + evaluate the phantom
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from .config import ConfigError, load_config

log = logging.getLogger("fire")

DEFAULT_EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "phantom2d.yaml"


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
        _evaluate_run(result["run_dir"], result["model"], result["datamodule"])
    return 0


def _evaluate_run(run_dir, model=None, dm=None, checkpoint=None) -> dict:
    from .evaluate import dice_table, evaluate, load_module
    from .train import load_run_config, make_datamodule

    run_dir = Path(run_dir)
    if model is None:
        model = load_module(checkpoint or run_dir / "checkpoints" / "last.ckpt")
    if dm is None:
        dm = make_datamodule(load_run_config(run_dir))
        dm.setup("test")
    results = evaluate(model, dm.test_dataset(), run_dir)
    print(dice_table(results))
    print(f"\nresults: {run_dir / 'results.json'} (figures: example.png, dice_boxplot.png)")
    return results


def _cmd_evaluate(args) -> int:
    _evaluate_run(args.run, checkpoint=args.checkpoint)
    return 0


def _cmd_demo(args) -> int:
    from .train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    _evaluate_run(result["run_dir"], result["model"], result["datamodule"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fire", description="FIRE / ExFIRE multi-modal image registration")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from an experiment config")
    t.add_argument("config", help="experiment YAML, e.g. experiments/phantom2d.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=200")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                   help="continue a run from its checkpoints/last.ckpt (default: the newest run of the experiment)")
    t.add_argument("--evaluate", action="store_true", help="evaluate on the test pairs after training")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run on its held-out test pairs")
    e.add_argument("run", help="run folder (holds config.yaml and checkpoints/)")
    e.add_argument("--checkpoint", default=None, help="checkpoint (default: RUN/checkpoints/last.ckpt)")
    e.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser("demo", help="the main job: train on the embedded phantom, evaluate, report")
    d.add_argument("--config", default=str(DEFAULT_EXPERIMENT))
    d.add_argument("overrides", nargs="*")
    d.set_defaults(func=_cmd_demo)
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
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print("fire: error: " + " ".join(str(e).split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("fire: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
