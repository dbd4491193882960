"""Activation memory of one FIRE training step, plain against ``model.synthesis.checkpoint_activations``.

    python benchmarks/activation_memory.py --config experiments/phantom3d.yaml --shape 64 64 32 --width 16
    python benchmarks/activation_memory.py --config experiments/mrbrains3d_t1_flair.yaml \
        --shape 176 176 112 --width 64 --fake        # paper width: projected, on any machine

Each variant runs in a fresh process (so that the peak resident set is its own) on ``--batch``
random pairs of ``--shape`` (default 1) at the config's model, overridden by ``--width`` and any ``key=value``:
one forward (:func:`losses.fire_forward` + :func:`losses.fire_loss`) and backward. It prints,
and writes as JSON (``--out``), the bytes saved for the backward, the peak memory of the step
(on a GPU ``torch.cuda.max_memory_allocated``; on a CPU the peak resident set above the
process's size before the step), the peak tensor memory that :class:`profiling.LiveTensorMemory`
counts (what ``max_memory_allocated`` shows on a GPU, allocator fragmentation and cuDNN workspaces
aside), the step's seconds (the median of ``--steps``), ``register``'s ms on one pair of the
batch (eval mode: no checkpointing; the median of 5 after a first) and the loss, which must be the same.

``--fake`` runs the same step on fake tensors (shapes without data, ``FakeTensorMode``): no
arithmetic and no memory, so a step at paper width is projected in seconds on a laptop. It gives
the saved bytes and the counted peak (equal to a real step's: ``tests/test_profile.py``), the
weights, and the iteration's projected total: the weights with their two Adam moments (3x) plus
the step's peak, which holds the gradients.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20


def one(config: str, shape: list[int], width: int, checkpoint: bool, overrides: list[str], device: str,
        fake: bool = False, batch_size: int = 1, steps: int = 1) -> dict:
    import torch

    from fire_lightning.config import load_config
    from fire_lightning.module import FIREModule
    from fire_lightning.profiling import fake_tensors, saved_for_backward, step_memory

    torch.manual_seed(0)
    cfg = load_config(config, [f"model.synthesis.width={width}",
                               f"model.synthesis.checkpoint_activations={str(checkpoint).lower()}",
                               f"data.spatial_dims={len(shape)}", f"data.size={list(shape)}", *overrides])
    if fake:
        cfg.model.channels_last = False  # fake weights cannot be converted to it; the bytes are the same
        with fake_tensors():
            model = FIREModule(cfg).train()
            batch = {k: torch.rand(batch_size, 1, *shape) * 2 - 1 for k in ("moving", "fixed")}
            saved, peak = saved_for_backward(model, batch), step_memory(model, batch)
        weights = sum(p.nbytes for p in model.parameters())
        return {"checkpoint_activations": checkpoint, "saved_for_backward_mib": saved / 2**20,
                "tracked_peak_step_gib": peak / 2**30, "weights_mib": weights / 2**20,
                "projected_iteration_gib": (peak + 3 * weights) / 2**30}
    model = FIREModule(cfg).to(device).train()
    g = torch.Generator().manual_seed(1)
    batch = {k: (torch.rand(batch_size, 1, *shape, generator=g) * 2 - 1).to(device) for k in ("moving", "fixed")}
    small = {k: v[(..., *[slice(0, max(8, s // 4)) for s in shape])] for k, v in batch.items()}
    model._forward_loss(small)[1].total.backward()  # libraries and kernels loaded before measuring
    model.zero_grad(set_to_none=True)
    saved = saved_for_backward(model, batch)
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_gib()
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = model._forward_loss(batch)[1].total
        loss.backward()
        sync()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base
    model.zero_grad(set_to_none=True)
    tracked = step_memory(model, batch)  # untimed: the dispatch mode slows every op
    model.eval()
    pair = batch["moving"][:1], batch["fixed"][:1]
    infer = []
    for _ in range(6):  # the first, off the clock: kernels chosen for this shape
        sync()
        t0 = time.perf_counter()
        model.register(*pair)
        sync()
        infer.append(time.perf_counter() - t0)
    return {"checkpoint_activations": checkpoint, "saved_for_backward_mib": saved / 2**20, "peak_step_gib": peak,
            "tracked_peak_step_gib": tracked / 2**30, "step_s": statistics.median(times), "steps_s": times,
            "inference_ms": 1000 * statistics.median(infer[1:]), "loss": float(loss)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="experiments/phantom3d.yaml")
    p.add_argument("--shape", type=int, nargs="+", default=[64, 64, 32])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=1, help="pairs per step")
    p.add_argument("--steps", type=int, default=1, help="timed steps (the median is reported)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    p.add_argument("--fake", action="store_true", help="fake tensors: the memory projected, nothing computed")
    p.add_argument("--out", default=None, help="JSON (default runs/benchmarks/activation_memory[-fake].json)")
    p.add_argument("--one", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)  # a child process
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    if a.device == "auto":
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.one:
        print(json.dumps(one(a.config, a.shape, a.width, a.one == "checkpointed", a.overrides, a.device, a.fake,
                             a.batch, a.steps)))
        return 0
    rows = []
    for kind in ("plain", "checkpointed"):
        cmd = [sys.executable, __file__, "--one", kind, "--config", a.config, "--shape", *map(str, a.shape),
               "--width", str(a.width), "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device,
               *(["--fake"] if a.fake else []),
               *a.overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} variant failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    plain, ckpt = rows
    where = "fake tensors (projected)" if a.fake else a.device
    print(f"one FIRE step, {a.config} {' '.join(a.overrides)}, batch {a.batch}, shape {a.shape}, width {a.width}, "
          f"{where}")
    if a.fake:
        print("| model.synthesis.checkpoint_activations | saved for the backward (MiB) | peak of the step (GiB) "
              "| weights (MiB) "
              "| iteration: 3 x weights + peak (GiB) |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {str(r['checkpoint_activations']).lower()} | {r['saved_for_backward_mib']:.1f} | "
                  f"{r['tracked_peak_step_gib']:.2f} | {r['weights_mib']:.1f} | {r['projected_iteration_gib']:.2f} |")
    else:
        print("| model.synthesis.checkpoint_activations | saved for the backward (MiB) | peak of the step (GiB) "
              "| counted tensor peak (GiB) | step (s) | inference (ms) | loss |\n|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {str(r['checkpoint_activations']).lower()} | {r['saved_for_backward_mib']:.1f} | "
                  f"{r['peak_step_gib']:.2f} | {r['tracked_peak_step_gib']:.2f} | {r['step_s']:.3g} | "
                  f"{r['inference_ms']:.1f} | {r['loss']:.6f} |")
        print(f"checkpointed / plain: peak {ckpt['peak_step_gib'] / plain['peak_step_gib']:.2f}, "
              f"time {ckpt['step_s'] / plain['step_s']:.2f}; same loss (to 1e-6; chunks round apart): "
              f"{math.isclose(ckpt['loss'], plain['loss'], rel_tol=1e-6)}")
    print(f"checkpointed / plain: saved {ckpt['saved_for_backward_mib'] / plain['saved_for_backward_mib']:.2f}, "
          f"counted peak {ckpt['tracked_peak_step_gib'] / plain['tracked_peak_step_gib']:.2f}")
    out = Path(a.out or f"runs/benchmarks/activation_memory{'-fake' if a.fake else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": a.config, "overrides": a.overrides, "batch": a.batch, "shape": a.shape,
                               "width": a.width,
                               "device": "fake" if a.fake else a.device, "rows": rows}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
