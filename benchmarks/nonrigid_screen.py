"""A cheap screen for T_nr designs: train a fresh non-rigid head on a trained model's frozen G and T_af.

    python benchmarks/nonrigid_screen.py runs/<run> --head unet --steps 1000
    python benchmarks/nonrigid_screen.py runs/<run> --head conv --steps 1000 --supervised

The run's G and affine stage are frozen; pairs are the run's data config's (training-range slices for
training, the validation pairs for scoring), all with known transforms, made once and kept. The head
is trained for ``--steps`` batches either unsupervised, as FIRE's registration term (7) with the
demo's choice of MI on the images, plus the bending term (10) with its λ (13), or ``--supervised`` on
the known non-rigid residual (what a perfect T_nr would output after the model's own affine). Every
``--every`` steps it prints, on the validation pairs: Dice of the model's affine alone and with the
head's field, the correlation of the head's non-affine displacement with the true one over the
brain, the mean end-point error (mm) of the whole field, and the folding. A design that cannot learn
the field supervised will not learn it unsupervised.

Heads (``--head``):

* ``conv``: the paper's T_nr on G's S/4 features (:class:`fire_lightning.nonrigid.NonRigidNet`);
* ``unet``: the U-Net on the images (:class:`fire_lightning.nonrigid.UNetNonRigid`), ``--passes``,
  ``--channels``, ``--out-level``;
* ``unet`` with ``--g-levels 0,1,2``: G's features of those levels (S/1, S/2, S/4; instance-normalised)
  joined to the U-Net's at the same grid, as a T_nr that reads G would;
* ``flow``: a cost-volume head (optical-flow style): at S/4 then S/2, learned descriptors of G's
  features, a local correlation, and convolutions from the correlations to a velocity increment.

Prints one line per evaluation and writes them as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn


def _pairs(cfg, count: int, seed: int) -> dict:
    """``count`` training-range pairs with known transforms (seeded), and the validation pairs, as batches."""
    import numpy as np

    from data_modules.loading import collate_pairs
    from data_modules.phantom import FixedPairs, items_in, prepare_phantom
    from fire_lightning.config import data_section

    data = data_section(cfg)
    prep = prepare_phantom(data)
    val = FixedPairs(prep, data, "val", data.n_val_images, data.val_transforms_per_image)
    train_items = items_in(prep.ranges["train"], val.thickness or 1)
    train = []
    for i in range(count):
        rng = np.random.default_rng([seed, 7, i])
        z = train_items[int(rng.integers(len(train_items)))]
        train.append(val.pair(prep.images, prep.labels, z, rng, None, f"screen-{i}", known=True))
    return {"train": collate_pairs(train), "val": collate_pairs([val[i] for i in range(len(val))])}


@torch.no_grad()
def _encode(model, batch: dict, chunk: int = 40) -> dict:
    """The frozen model's part of every pair: G's pyramid of both images (``g<level>`` = (moving, fixed)),
    the affine, the true non-rigid residual after it."""
    from fire_lightning import spatial
    from fire_lightning.truth import true_fields

    parts: dict = {"theta": []}
    for i in range(0, batch["moving"].shape[0], chunk):
        xm, xf = batch["moving"][i:i + chunk], batch["fixed"][i:i + chunk]
        g2, (g1, g0) = model.net.G.pyramid(torch.cat([xm, xf]), 2)
        for level, g in ((0, g0), (1, g1), (2, g2)):
            parts.setdefault(level, []).append(g.split(xm.shape[0]))
        parts["theta"].append(model.register(xm, xf)["theta"])
    out = {f"g{level}": tuple(torch.cat(side) for side in zip(*parts[level])) for level in (0, 1, 2)}
    out["theta"] = torch.cat(parts["theta"])
    truth = true_fields(batch["true_theta"], batch["true_elastic"])["True"]
    ident = spatial.identity_grid(batch["moving"].shape[2:])
    out["target"] = spatial.apply_affine(spatial.invert_affine(out["theta"]), ident + truth) - ident
    out.update(true=truth, xm=batch["moving"], xf=batch["fixed"], lm=batch["moving_label"], lf=batch["fixed_label"])
    return out


class GUNet(nn.Module):
    """The U-Net with G's features of some levels joined in (a T_nr that reads G and the images)."""

    def __init__(self, n: int, g_channels: dict, channels, out_level: int, passes: int):
        super().__init__()
        from fire_lightning.nets.blocks import leaky_conv
        from fire_lightning.nets.nonrigid import UNetNonRigid

        self.unet = UNetNonRigid(n, channels, out_level, passes)
        self.join = nn.ModuleDict({str(level): leaky_conv(n, channels[level] + 2 * c, channels[level])
                                   for level, c in g_channels.items()})
        self.g = {}

    def forward(self, moving, fixed, theta, to_disp):
        from fire_lightning import spatial

        unet, joins = self.unet, self.join
        shape = moving.shape[2:]

        def field(m, f, disp):
            skips, h = [], None
            for i, (down, merge) in enumerate(zip(unet.down, unet.merge)):
                h = merge(torch.cat([m, f], 1) if i == 0 else down(h))
                if str(i) in joins:
                    gm, gf = self.g[i]
                    gm = spatial.warp(gm, spatial.resize_field(disp, gm.shape[2:]))
                    h = joins[str(i)](torch.cat([h, gm, gf], 1))
                skips.append(h)
            for up, skip in zip(unet.up, reversed(skips[unet.out_level:-1])):
                h = up(torch.cat([nn.functional.interpolate(h, size=skip.shape[2:], mode=unet.mode), skip], 1))
            return unet.head(h) * unet.OUTPUT_SCALE

        v = None
        for _ in range(unet.passes):
            disp = spatial.affine_to_displacement(theta, shape) if v is None else \
                spatial.compose_affine_displacement(theta, spatial.resize_field(to_disp(v), shape))
            dv = field(spatial.warp(moving, disp), fixed, disp)
            v = dv if v is None else v + dv
        return v


class FlowLevel(nn.Module):
    """One level of the cost-volume head: descriptors, local correlations, convolutions to a velocity."""

    def __init__(self, n: int, cin: int, desc: int = 16, hidden: int = 32, radius: int = 2):
        super().__init__()
        from fire_lightning.nets.blocks import ConvBlock, conv, leaky_conv, zero_conv

        self.n, self.radius = n, radius
        self.project = nn.Sequential(ConvBlock(n, cin, hidden, 3, leaky=True), conv(n, hidden, desc, 1))
        d = (2 * radius + 1) ** n
        self.estimate = nn.Sequential(leaky_conv(n, d + n, hidden), leaky_conv(n, hidden, hidden),
                                      zero_conv(n, hidden, n))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))

    def forward(self, fm: torch.Tensor, ff: torch.Tensor) -> torch.Tensor:
        from fire_lightning.nets.affine import MatchAffineNet

        size = fm.shape[2:]
        radii = tuple(min(self.radius, (int(s) - 1) // 2) for s in size)
        unit = lambda t: nn.functional.normalize(self.project(t), dim=1)  # noqa: E731
        cost = MatchAffineNet.cost_volume(unit(fm), unit(ff), radii)
        prob = torch.softmax(cost / self.log_temperature.exp(), 1)
        mean = torch.einsum("bd...,nd->bn...", prob, MatchAffineNet.offsets(radii, fm.device, fm.dtype))
        step = torch.tensor([2.0 / s for s in size]).view(1, self.n, *([1] * self.n))
        return self.estimate(torch.cat([cost, mean], 1)) * step


class FlowHead(nn.Module):
    """The cost-volume head over G's S/4 then S/2 features; the velocity is the levels' sum."""

    def __init__(self, n: int, width: int):
        super().__init__()
        self.levels = nn.ModuleList([FlowLevel(n, 4 * width), FlowLevel(n, 2 * width)])
        self.g = {}

    def forward(self, moving, fixed, theta, to_disp):
        from fire_lightning import spatial

        v = None
        for level, key in zip(self.levels, (2, 1)):
            gm, gf = self.g[key]
            shape = gm.shape[2:]
            disp = spatial.affine_to_displacement(theta, shape) if v is None else \
                spatial.compose_affine_displacement(theta, to_disp(spatial.resize_field(v, shape)))
            dv = level(spatial.warp(gm, disp), gf)
            v = dv if v is None else spatial.resize_field(v, shape) + dv
        return v


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a trained run folder (its last checkpoint and data config)")
    p.add_argument("--head", default="unet", choices=("conv", "unet", "flow"))
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--channels", default="16,32,32,32")
    p.add_argument("--out-level", type=int, default=1)
    p.add_argument("--g-levels", default="", help="unet: G's levels joined in (0: S/1, 1: S/2, 2: S/4), e.g. 0,1,2")
    p.add_argument("--supervised", action="store_true", help="train on the known non-rigid residual instead of MI")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--lr", type=float, default=None, help="Adam's step (default: 3e-3, the demo's U-Net rate; 1e-3 "
                   "for conv, the paper's head, whose tanh output diverges at 3e-3, and for --supervised, where the "
                   "U-Net learns nothing at 3e-3)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pairs", type=int, default=800, help="training pairs made once (default 800)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default RUN/nonrigid_screen/<head>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from fire_lightning import metrics, spatial
    from fire_lightning.inference import load_model
    from fire_lightning.losses import MutualInformation, smoothness, smoothness_weight
    from fire_lightning.nets.nonrigid import NonRigidNet, UNetNonRigid
    from fire_lightning.train import load_run_config

    run = Path(args.run)
    cfg = load_run_config(run)
    model = load_model(run / "checkpoints" / "last.ckpt")
    n, width = cfg.data.spatial_dims, cfg.model.synthesis.width
    t0 = time.time()
    data = _pairs(cfg, args.pairs, cfg.seed)
    train, val = _encode(model, data["train"]), _encode(model, data["val"])
    print(f"{args.pairs} training and {val['xm'].shape[0]} validation pairs encoded in {time.time() - t0:.0f} s")
    channels = tuple(int(c) for c in args.channels.split(","))
    g_levels = [int(c) for c in args.g_levels.split(",") if c != ""]
    if args.head == "conv":
        head = NonRigidNet(n, 4 * width, 2 * width)
    elif args.head == "flow":
        head = FlowHead(n, width)
    elif g_levels:
        head = GUNet(n, {lv: width * 2 ** lv for lv in g_levels}, channels, args.out_level, args.passes)
    else:
        head = UNetNonRigid(n, channels, args.out_level, args.passes)
    to_disp = (lambda v: spatial.integrate_velocity(v, cfg.model.nonrigid.integration_steps)) \
        if cfg.model.nonrigid.diffeomorphic else (lambda v: v)
    shape = tuple(train["xm"].shape[2:])
    norm = nn.functional.instance_norm

    def run_head(s: dict, idx) -> torch.Tensor:
        theta = s["theta"][idx]
        gs = {lv: tuple(norm(t) for t in (s[f"g{lv}"][0][idx], s[f"g{lv}"][1][idx])) for lv in (0, 1, 2)}
        if isinstance(head, NonRigidNet):
            gm, gf = s["g2"][0][idx], s["g2"][1][idx]
            return head(spatial.warp(gm, spatial.affine_to_displacement(theta, gm.shape[2:])), gf)
        if isinstance(head, (GUNet, FlowHead)):
            head.g = gs if isinstance(head, GUNet) else {k: (s[f"g{k}"][0][idx], s[f"g{k}"][1][idx]) for k in (1, 2)}
        return head(s["xm"][idx], s["xf"][idx], theta, to_disp)

    def evaluate() -> dict:
        head.eval()
        with torch.no_grad():
            u_nr = spatial.resize_field(to_disp(run_head(val, slice(None))), shape)
        head.train()
        full = spatial.compose_affine_displacement(val["theta"], u_nr)
        affine = spatial.affine_to_displacement(val["theta"], shape)
        dice = {name: 100 * metrics.dice_per_label(spatial.warp_labels(val["lm"], f), val["lf"],
                                                   [1, 2, 3]).mean().item()
                for name, f in (("affine", affine), ("field", full), ("true", val["true"]))}
        brain = val["lf"] > 0
        both = brain.expand(-1, n, *([-1] * n))
        t, u = val["target"][both], u_nr[both]
        corr = float(((t - t.mean()) * (u - u.mean())).sum()
                     / ((t - t.mean()).norm() * (u - u.mean()).norm()).clamp_min(1e-12))
        errors = metrics.field_errors(full, val["true"], brain, model.spacing)
        return {"dice_affine": dice["affine"], "dice_field": dice["field"], "dice_true": dice["true"],
                "corr_nonrigid": corr, "field_err_mm": errors["field_err_mm"].mean().item(),
                "folding_pct": metrics.folding_percent(full).mean().item()}

    mi = MutualInformation(cfg.model.loss.mi_bins, cfg.model.loss.mi_sigma_ratio)
    lam = smoothness_weight(n, shape)
    opt = torch.optim.Adam(head.parameters(), lr=args.lr or (1e-3 if args.head == "conv" or args.supervised else 3e-3))
    g = torch.Generator().manual_seed(0)
    mm = torch.tensor([s * sp / 2 for s, sp in zip(shape, model.spacing)]).view(1, n, *([1] * n))
    rows, t0 = [], time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            row = {"step": step, "seconds": round(time.time() - t0, 1), **evaluate()}
            rows.append(row)
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        if step == args.steps:
            break
        idx = torch.randint(0, train["xm"].shape[0], (args.batch,), generator=g)
        raw = run_head(train, idx)
        disp = to_disp(raw)
        if args.supervised:
            loss = ((disp - spatial.resize_field(train["target"][idx], disp.shape[2:])) * mm).pow(2).mean()
        else:
            u = spatial.compose_affine_displacement(train["theta"][idx], spatial.resize_field(disp, shape))
            loss = mi(spatial.warp(train["xm"][idx], u), train["xf"][idx]) + lam * smoothness(disp, shape)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = args.out or run / "nonrigid_screen" / f"{args.head}{'-sup' if args.supervised else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "parameters": sum(q.numel() for q in head.parameters()), "rows": rows}, indent=1))
    print(f"{sum(q.numel() for q in head.parameters())} parameters; {out}")
    return rows


if __name__ == "__main__":
    main()
