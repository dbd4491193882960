"""Same-sitting speed comparison of model variants: the training step and ``register``, interleaved.

    python benchmarks/interleaved.py experiments/phantom2d.yaml \\
        --variant model.channels_last=false --variant model.channels_last=true
    python benchmarks/interleaved.py experiments/phantom2d.yaml --variant cost_volume=shifted --variant cost_volume=auto

On a shared machine whose speed moves by a third between sittings, a 10 % change shows only when
the variants take turns in one process. Each variant is the config with its own ``key=value``
overrides (space-separated in one ``--variant``), built with the same seed, so with the same
weights; ``cost_volume=shifted`` makes the matching head's cost volume take the shifted-product
route on every grid (``auto``: the all-pairs route on coarse grids, the default; a number N: the
all-pairs route up to N points per offset), ``norm=instance`` puts torch's ``InstanceNorm`` where the
networks have their GroupNorm form of it, and ``conv3d=torch`` lets PyTorch choose the route of every 3D
convolution (``onednn``: the networks' own ``blocks.Conv3d``, the default). Per round, every
variant runs one FIRE training forward and backward (:func:`losses.fire_forward` +
:func:`losses.fire_loss`, the affine warm-up off; no optimiser step, so the weights stay put) on
the same training batch, then ``register`` on the same validation pair. It prints the median and
the fastest time of each and writes them as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SCRIPT_KEYS = {"cost_volume": {"auto": None, "shifted": 0}, "norm": {"group": None, "instance": None},
               "conv3d": {"onednn": None, "torch": None}}


def _torch_conv3d(module) -> None:
    """Give the networks' 3D convolutions (``blocks.Conv3d``) back torch's own forward, weights kept."""
    import torch

    from fire_lightning.nets.blocks import Conv3d

    for m in module.modules():
        if type(m) is Conv3d:
            m.__class__ = torch.nn.Conv3d


def _torch_instance_norms(module, n: int) -> None:
    """Swap the networks' instance norms (``blocks.inorm``, a GroupNorm) for ``InstanceNorm{n}d``, weights kept."""
    import torch

    for name, child in module.named_children():
        if isinstance(child, torch.nn.GroupNorm):
            norm = getattr(torch.nn, f"InstanceNorm{n}d")(child.num_channels, eps=child.eps, affine=True)
            norm.load_state_dict(child.state_dict())
            setattr(module, name, norm)
        else:
            _torch_instance_norms(child, n)


def _split(variant: str) -> tuple[list[str], dict[str, str]]:
    overrides, own = [], {}
    for token in variant.split():
        key, _, value = token.partition("=")
        if key in SCRIPT_KEYS:
            if value not in SCRIPT_KEYS[key] and not (key == "cost_volume" and value.isdigit()):
                number = " or a number of points per offset" if key == "cost_volume" else ""
                raise SystemExit(f"--variant {variant!r}: {key} must be one of {list(SCRIPT_KEYS[key])}{number}")
            own[key] = value
        else:
            overrides.append(token)
    return overrides, own


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides of every variant")
    p.add_argument("--variant", action="append", required=True, help="space-separated key=value overrides")
    p.add_argument("--rounds", type=int, default=14, help="training rounds (register: 4 calls a round)")
    p.add_argument("--skip", type=int, default=2, help="first rounds left out (allocations, caches)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON output (default: none)")
    args = p.parse_args(argv)

    import lightning as L
    import torch

    from fire_lightning.config import load_config
    from fire_lightning.module import FIREModule
    from fire_lightning.nets import cost_volume
    from fire_lightning.train import make_datamodule

    torch.set_num_threads(args.threads)
    dense_default = cost_volume.DENSE_POINTS_PER_OFFSET
    variants = {}
    batch = pair = None
    for v in args.variant:
        overrides, own = _split(v)
        cfg = load_config(args.config, [*args.overrides, *overrides, "optim.affine_warmup_steps=0"])
        if batch is None:
            L.seed_everything(cfg.seed, verbose=False)
            dm = make_datamodule(cfg)
            dm.setup("fit")
            batch = {k: t for k, t in next(iter(dm.train_dataloader())).items() if torch.is_tensor(t)}
            val = next(iter(dm.val_dataloader()))
            pair = val["moving"][:1], val["fixed"][:1]
        torch.manual_seed(cfg.seed)
        model = FIREModule(cfg, label_names=dm.label_names, spacing=dm.spacing)
        if own.get("norm") == "instance":
            _torch_instance_norms(model.net, cfg.data.spatial_dims)
        if own.get("conv3d") == "torch":
            _torch_conv3d(model.net)
        route = own.get("cost_volume", "auto")
        limit = int(route) if route.isdigit() else SCRIPT_KEYS["cost_volume"][route]
        variants[v] = (model, dense_default if limit is None else limit)

    step = {v: [] for v in variants}
    reg = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, (model, limit) in variants.items():
            cost_volume.DENSE_POINTS_PER_OFFSET = limit
            model.train().zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            _, loss = model._forward_loss(batch)
            loss.total.backward()
            step[v].append(time.perf_counter() - t0)
            model.eval()
            with torch.no_grad():
                for _ in range(4):
                    t0 = time.perf_counter()
                    model.register(*pair)
                    reg[v].append(time.perf_counter() - t0)
    cost_volume.DENSE_POINTS_PER_OFFSET = dense_default

    rows = {}
    for v in variants:
        s, r = step[v][args.skip:], reg[v][4 * args.skip:]
        rows[v] = {"step_ms_median": 1e3 * statistics.median(s), "step_ms_min": 1e3 * min(s),
                   "register_ms_median": 1e3 * statistics.median(r), "register_ms_min": 1e3 * min(r),
                   "rounds": len(s), "register_calls": len(r)}
    print("| variant | FIRE step, median (fastest) ms | register, median (fastest) ms |\n|---|---|---|")
    for v, row in rows.items():
        print(f"| `{v}` | {row['step_ms_median']:.0f} ({row['step_ms_min']:.0f}) | "
              f"{row['register_ms_median']:.1f} ({row['register_ms_min']:.1f}) |")
    result = {"config": args.config, "overrides": args.overrides, "threads": args.threads, "variants": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
