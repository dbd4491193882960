"""Where the aten ops of one FIRE training step come from: per function of the package, forward and backward.

    python benchmarks/step_ops.py experiments/phantom2d_gpu.yaml
    python benchmarks/step_ops.py experiments/phantom2d.yaml data.batch_size=16 --top 15

On a GPU every op that is not a view is at least one kernel launch, with PyTorch's per-op host
overhead; a step of thousands of small ops is bound by that, not by arithmetic (docs/performance.md).
This counts them (:class:`profiling.OpCounter`'s rule) for one forward + backward on random inputs
of the config's batch and shape, on the CPU, and names for each op in the forward the
innermost ``fire_lightning`` function it was called from; the backward's ops are counted as one
group (autograd runs them). It also counts the step's copies between host and device
(:func:`profiling.step_host_copies`, on the meta device). It prints the table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import traceback
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/step_ops.json"))
    args = p.parse_args(argv)

    import torch

    from fire_lightning.config import load_config
    from fire_lightning.module import FIREModule
    from fire_lightning.profiling import OpCounter, step_host_copies

    class BySite(OpCounter):
        def __init__(self):
            super().__init__()
            self.sites: Counter = Counter()
            self.backward = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            before = self.kernels
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if self.kernels > before:
                site = "(backward)"
                if not self.backward:
                    ours = [f for f in traceback.extract_stack() if "/fire_lightning/" in f.filename]
                    site = f"{Path(ours[-1].filename).stem}.{ours[-1].name}" if ours else "(elsewhere)"
                self.sites[site] += 1
            return out

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    model = FIREModule(cfg).train()
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(cfg.data.batch_size, 1, *cfg.data.size, generator=g) * 2 - 1 for k in ("moving", "fixed")}
    model._forward_loss(batch)[1].total.backward()  # first calls (caches) off the count
    model.zero_grad(set_to_none=True)
    with BySite() as ops:
        out, loss = model._forward_loss(batch)
        forward = ops.kernels
        ops.backward = True
        loss.total.backward()
    total = ops.kernels
    copies = step_host_copies(cfg)
    print(f"{args.config} {' '.join(args.overrides)}: batch {cfg.data.batch_size}, shape {list(cfg.data.size)}, "
          f"width {cfg.model.synthesis.width}\n{total} ops (views aside): forward {forward}, "
          f"backward {total - forward}; "
          f"{ops.syncs} read a value back to the host; {copies.total} host↔device copies (on the meta device)"
          + "".join(f"; {site}: {n}" for site, n in copies.sites.items()) + "\n")
    print("| where | ops | share |\n|---|---|---|")
    for site, n in ops.sites.most_common(args.top):
        print(f"| {site} | {n} | {100 * n / total:.1f} % |")
    result = {"config": args.config, "overrides": args.overrides, "ops": total, "forward": forward,
              "backward": total - forward, "host_syncs": ops.syncs, "host_copies": copies.sites,
              "by_site": dict(ops.sites.most_common()),
              "by_op": dict(sorted(ops.by_op.items(), key=lambda kv: -kv[1]))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.out}")
    return result


if __name__ == "__main__":
    main()
