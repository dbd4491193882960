"""The first joint iterations from a checkpoint, one line each: does the non-rigid field stay bounded?

    python benchmarks/joint_start.py runs/<run>/checkpoints/iter300.ckpt --steps 20 --lr-nonrigid 1e-3

A checkpoint taken during the affine warm-up has T_nr at zero; this runs ``--steps`` FIRE iterations
(the run's loss, one Adam per sub-network as in training, the learning rates given here, the
training's gradient clipping) on the run's training pairs and prints, per iteration, the loss terms
that tell a field that learns from one that diverges: the registration similarity (7) against the
affine stage's, inverse consistency, the smoothness term, the largest raw field value and the
largest displacement (normalised units: 2 is the image's width), and each sub-network's gradient
norm. Nothing is saved. A field whose maximum passes ~0.5 within a few iterations while (7) gets
worse has diverged.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr-affine", type=float, default=None, help="default: the run's")
    p.add_argument("--lr-nonrigid", type=float, default=None, help="default: the run's")
    p.add_argument("--lr-synthesis", type=float, default=None, help="default: the run's")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from fire_lightning.datasets import make_datamodule
    from fire_lightning.module import load_module

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = load_module(args.checkpoint)
    module.train()
    optim = module.cfg.optim
    lrs = {"T_af": args.lr_affine or optim.lr_affine, "T_nr": args.lr_nonrigid or optim.lr_nonrigid,
           "G_F": args.lr_synthesis or optim.lr_synthesis}
    groups = module.net.parameter_groups()
    opts = {k: torch.optim.Adam(groups[k], lr=lr, betas=tuple(optim.betas)) for k, lr in lrs.items()}
    dm = make_datamodule(module.cfg)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    print(f"learning rates {lrs}")
    for step in range(args.steps):
        start = time.perf_counter()
        out, loss = module._forward_loss(next(batches))
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        loss.total.backward()
        norms = {}
        for k, params in groups.items():
            if k in opts:
                norms[k] = float(torch.nn.utils.clip_grad_norm_(params, optim.grad_clip or float("inf")))
        for opt in opts.values():
            opt.step()
        terms = " ".join(f"{k} {float(getattr(loss, k)):+.3f}"
                         for k in ("reg_acc", "r_affine_sim", "reg_ic", "r_smooth"))
        print(f"{step:3d} {terms} | field max {float(out.t_ab.nr_feat.abs().max()):.3f} "
              f"displacement max {float(out.t_ab.disp_nr.abs().max()):.3f} | grad norm "
              + " ".join(f"{k} {v:.2f}" for k, v in norms.items()) + f" | {time.perf_counter() - start:.1f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
