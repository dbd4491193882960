"""Activation memory of one FIRE training step, plain against ``model.checkpoint_activations``.

    python benchmarks/activation_memory.py --config experiments/phantom3d.yaml --shape 64 64 32 --width 16

Each variant runs in a fresh process (so that the peak resident set is its own) on random
inputs of ``--shape`` at the config's model, overridden by ``--width`` and any ``key=value``:
one forward (:func:`losses.fire_forward` + :func:`losses.fire_loss`) and backward. It prints,
and writes as JSON (``--out``), the bytes saved for the backward, the peak memory of the step
(on a GPU ``torch.cuda.max_memory_allocated``; on a CPU the peak resident set above the
process's size before the step), the step's seconds and its loss, which must be the same.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20


def one(config: str, shape: list[int], width: int, checkpoint: bool, overrides: list[str], device: str) -> dict:
    import torch

    from fire_lightning.config import load_config
    from fire_lightning.module import FIREModule
    from fire_lightning.profiling import saved_for_backward

    torch.manual_seed(0)
    cfg = load_config(config, [f"model.width={width}", f"model.checkpoint_activations={str(checkpoint).lower()}",
                               f"data.spatial_dims={len(shape)}", *overrides])
    model = FIREModule(cfg).to(device).train()
    g = torch.Generator().manual_seed(1)
    batch = {k: (torch.rand(1, 1, *shape, generator=g) * 2 - 1).to(device) for k in ("moving", "fixed")}
    small = {k: v[(..., *[slice(0, max(8, s // 4)) for s in shape])] for k, v in batch.items()}
    model._forward_loss(small)[1].total.backward()  # libraries and kernels loaded before measuring
    model.zero_grad(set_to_none=True)
    saved = saved_for_backward(model, batch)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_gib()
    t0 = time.perf_counter()
    loss = model._forward_loss(batch)[1].total
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base
    return {"checkpoint_activations": checkpoint, "saved_for_backward_mib": saved / 2**20, "peak_step_gib": peak,
            "step_s": time.perf_counter() - t0, "loss": float(loss)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="experiments/phantom3d.yaml")
    p.add_argument("--shape", type=int, nargs="+", default=[64, 64, 32])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    p.add_argument("--out", default="runs/benchmarks/activation_memory.json")
    p.add_argument("--one", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)  # a child process
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    if a.device == "auto":
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.one:
        print(json.dumps(one(a.config, a.shape, a.width, a.one == "checkpointed", a.overrides, a.device)))
        return 0
    rows = []
    for kind in ("plain", "checkpointed"):
        cmd = [sys.executable, __file__, "--one", kind, "--config", a.config, "--shape", *map(str, a.shape),
               "--width", str(a.width), "--device", a.device, *a.overrides]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    plain, ckpt = rows
    print(f"one FIRE step, {a.config}, shape {a.shape}, width {a.width}, {a.device}")
    print("| model.checkpoint_activations | saved for the backward (MiB) | peak of the step (GiB) | step (s) | loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {str(r['checkpoint_activations']).lower()} | {r['saved_for_backward_mib']:.1f} | "
              f"{r['peak_step_gib']:.2f} | {r['step_s']:.1f} | {r['loss']:.6f} |")
    print(f"checkpointed / plain: saved {ckpt['saved_for_backward_mib'] / plain['saved_for_backward_mib']:.2f}, "
          f"peak {ckpt['peak_step_gib'] / plain['peak_step_gib']:.2f}, time {ckpt['step_s'] / plain['step_s']:.2f}; "
          f"same loss: {ckpt['loss'] == plain['loss']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"config": a.config, "shape": a.shape, "width": a.width, "device": a.device,
                                       "rows": rows}, indent=2))
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
