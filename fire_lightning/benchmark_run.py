"""``fire evaluate`` / ``fire benchmark`` / the demo's benchmark: a trained model scored on a run's
held-out pairs, with the reports printed and logged (:func:`evaluate_run`), and the benchmark's
variants (:func:`run_benchmark`: validation pairs, a named protocol, the shift benchmark, the
refinement curve)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class BenchmarkOptions:
    """How the pairs are scored: ``ants`` (:class:`baselines.AntsParams`, or None: no ANTs), CPU
    ``threads`` (None: all), only the first ``max_pairs`` pairs, the Grad-CAM measures (``explain``),
    FIRE+IO (``refine``: :class:`refine.RefineSettings` or None), other trained runs scored alongside
    (``compare``: run folders or checkpoints), the other classical ``peers`` (name → parameters,
    :mod:`.peers`: greedy, elastix)."""

    ants: object = None
    threads: int | None = None
    max_pairs: int | None = None
    explain: bool = False
    refine: object = None
    compare: tuple = ()
    peers: dict | None = None


def evaluate_run(run_dir, model=None, dm=None, checkpoint=None, out_dir=None, cfg=None,
                 options: BenchmarkOptions | None = None, split: str = "test") -> dict:
    """Score ``model`` (or the run's checkpoint) on the test pairs of ``dm`` (or the run's data), or on its
    validation pairs (``split="val"``: to choose inference settings without looking at the test pairs); with
    ``options.compare``, other runs' models on the same pairs, in the same tables."""
    from omegaconf import OmegaConf

    from .benchmark_inputs import compared_models
    from .evaluate import dice_table, evaluate
    from .module import load_module
    from .train import load_run_config, make_datamodule

    o = options or BenchmarkOptions()
    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint or run_dir / "checkpoints" / "last.ckpt")
    if model is None:
        model = load_module(checkpoint)
    if o.explain and model.net.NAME != "FIRE":
        raise ValueError(f"--explain: Grad-CAM explains FIRE's components; the {model.net.NAME} model has none")
    if dm is None:
        cfg = load_run_config(run_dir)
        dm = make_datamodule(cfg)
        dm.setup("test")
    compare, compared = compared_models(o.compare, cfg if cfg is not None else model.cfg, dm) if o.compare \
        else (None, None)
    if split == "val":
        dm.setup("fit")
        dataset = dm.val_dataloader().dataset
    else:
        dataset = dm.test_dataset()
    meta = {"checkpoint": str(checkpoint), "split": split, **model.inference_passes()}
    if compared:
        meta["compare"] = compared  # run name → checkpoint
    if cfg is not None:
        meta["data"] = OmegaConf.to_container(cfg.data, resolve=True)
    out_dir = Path(out_dir or run_dir)
    settings = None
    if o.explain:
        from .explain import ExplainSettings

        settings = ExplainSettings.from_config(cfg if cfg is not None else model.cfg)
    results = evaluate(model, dataset, out_dir, ants=o.ants, threads=o.threads, max_pairs=o.max_pairs, meta=meta,
                       explain=settings, refine=o.refine, compare=compare,
                       peers=o.peers)
    from .wandb_report import log_evaluation

    log_evaluation(run_dir, cfg if cfg is not None else model.cfg, results, out_dir, split)
    print(dice_table(results))
    if o.explain:
        print("\n" + (out_dir / "explain.md").read_text())
    print(f"\nresults: {out_dir / 'results.json'} (also results.md, table2.csv, table4.csv, per_pair.csv, "
          "dice_boxplot.png, example.png)")
    return results


@dataclass
class BenchmarkTarget:
    """What ``fire benchmark`` scores: ``target`` (a run folder or a checkpoint), ``checkpoint`` (a path
    or a name in RUN/checkpoints/), ``data`` (an experiment YAML giving the test pairs), ``overrides``,
    a named ``protocol``, the ``split`` (test or val) and the output folder ``out`` (None: the default)."""

    target: str
    checkpoint: str | None = None
    data: str | None = None
    overrides: tuple = ()
    protocol: str | None = None
    split: str = "test"
    out: str | None = None


def run_benchmark(what: BenchmarkTarget, options: BenchmarkOptions, shift: bool = False,
                  curve_steps: list[int] | None = None) -> None:
    """``fire benchmark``: every method scored on the test (or validation) pairs, or on the shift
    benchmark's pairs (``shift``: the peers register them one way only); with ``curve_steps`` also FIRE+IO's
    refinement curve over those numbers of steps."""

    from .benchmark_inputs import PROTOCOLS, benchmark_inputs
    from .refine import RefineSettings

    overrides = list(what.overrides) + [f"{k}={v}" for k, v in PROTOCOLS.get(what.protocol or "", {}).items()]
    model, cfg, dm, ckpt, default_out = benchmark_inputs(what.target, what.checkpoint, what.data, overrides)
    if what.protocol:
        default_out = default_out.with_name(f"{default_out.name}-{what.protocol}")
    if shift:
        from .shift import run_shift

        if what.split == "val" or curve_steps is not None or options.explain or options.compare:
            raise ValueError("--shift scores its own held-out pairs; it takes no --split, --refine-curve, --explain "
                             "or --compare")
        run_shift(model, cfg.data, Path(what.out or default_out.with_name("shift")), ants=options.ants,
                  refine=options.refine, threads=options.threads, max_per_level=options.max_pairs, peers=options.peers)
        return
    if what.split == "val" and (curve_steps is not None or options.explain):
        raise ValueError("--split val scores the validation pairs only; "
                         "--refine-curve and --explain are test-pair reports")
    if what.split == "val" and not what.out:
        default_out = default_out.with_name(default_out.name + "-val")
    out_dir = Path(what.out or default_out)
    results = evaluate_run(default_out.parent, model, dm, checkpoint=ckpt, out_dir=out_dir, cfg=cfg, options=options,
                           split=what.split)
    if curve_steps is not None:
        from .refine_curve import refine_curve

        curve = refine_curve(model, dm.test_dataset(), curve_steps, out_dir,
                             settings=options.refine or RefineSettings(),
                             reference=results, max_pairs=options.max_pairs, threads=options.threads)
        print("\n" + (out_dir / "refine_curve.md").read_text())
        print(f"refinement curve: {out_dir / 'refine_curve.png'} (also refine_curve.json, .csv, .md); "
              f"{len(curve['rows'])} values of N")
