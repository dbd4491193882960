"""``fire demo`` (``make demo``): train FIRE on the embedded 2D phantom, then the benchmark against ANTs
with the Grad-CAM measures, in the run folder's ``benchmark/``."""

from __future__ import annotations

from pathlib import Path

#: FIRE+IO steps in the demo's benchmark (the trade-off measured in docs/benchmark.md's refinement curve)
DEMO_REFINE_STEPS = 10
#: the demo's ANTs registers one pair in 3 both ways for its inverse-consistency error: the other runs
#: took half of the benchmark's ANTs time (about 70 s of a demo that must stay within 15 min on 2 cores)
DEMO_ANTS_ICE_EVERY = 3


def run_demo(cfg, ants=None, refine=None) -> dict:
    """Train on the experiment ``cfg``, then benchmark the run (``ants``: :class:`baselines.AntsParams`
    or None; ``refine``: FIRE+IO's settings or None; the Grad-CAM measures for FIRE). Returns the benchmark's
    results."""
    from .benchmark_run import BenchmarkOptions, evaluate_run
    from .train import train

    result = train(cfg)
    run_dir = Path(result["run_dir"])
    return evaluate_run(run_dir, result["model"], result["datamodule"], checkpoint=result["checkpoint"],
                        out_dir=run_dir / "benchmark", cfg=cfg,
                        options=BenchmarkOptions(ants=ants, explain=cfg.model.name == "fire", refine=refine))
