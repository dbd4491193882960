"""A fair chance for the classical peers: a small grid of each peer's documented parameters, scored on the
VALIDATION pairs of a run (never its test pairs), to choose the defaults of :mod:`fire_lightning.peers`.

    python benchmarks/tune_peers.py RUN --max-pairs 16 --threads 1                 # the built-in grid
    python benchmarks/tune_peers.py RUN --setting "greedy sigmas=3,1" --setting "elastix grid_spacing_mm=9"

Each setting is a peer (ants, greedy, elastix) and overrides of its parameters (the fields of
``AntsParams`` / ``GreedyParams`` / ``ElastixParams``: ``key=value``, tuples as ``100x50x20`` or ``3,1``);
without ``--setting`` the grid :data:`GRID` runs. Every setting registers the same pairs (one way: no
ICE), with the benchmark's conversion and scoring code, and gets a row: the mean Dice of its affine and its
deformable method, the affine error against the known transform (and how many pairs exceed 5 mm, the
benchmark's affine-failure mark), folding, seconds per pair (deformable, with its affine stage), the process'
CPU seconds per pair (the whole call, conversions included: what a busy machine moves less) and the pairs
where the peer failed twice (named; those pairs are left out of that row's means). Rows for the unaligned
pairs and the ceiling (the known transforms, where the pairs have them) frame them. Writes
``tune_peers.md`` / ``.csv`` / ``.json`` into ``--out`` (default RUN/tune-peers).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

#: the built-in grid: per peer, settings around the defaults (the first: the defaults themselves)
GRID = {
    "ants": ["", "aff_search=none", "aff_search=10,0.15,10", "aff_search=20,0.1,10"],
    "greedy": ["", "affine_dofs=12", "affine_dofs=6,12", "affine_init=centers", "affine_iterations=100x50x10",
               "iterations=200x100x50", "iterations=100x50", "iterations=200", "sigmas=1.2,0.5", "sigmas=3,1",
               "metric=MI", "stationary_velocity=1", "step=0.5", "step=2"],
    "elastix": ["", "sampler=Full", "bins=16", "grid_spacing_mm=12", "grid_spacing_mm=24", "grid_spacing_mm=30",
                "iterations=512", "affine_resolutions=4 resolutions=4", "bending_weight=1"],
}


def parse_value(text: str):
    """``100x50x20`` → (100, 50, 20); ``3,1`` → (3, 1); ``none`` → () (a tuple setting off); numbers → int /
    float; else the string."""
    def number(t: str):
        for kind in (int, float):
            try:
                return kind(t)
            except ValueError:
                pass
        return t

    if text == "none":
        return ()
    if "," in text:
        return tuple(number(t) for t in text.split(","))
    parts = text.split("x")
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return number(text)


def parse_setting(text: str) -> tuple[str, dict]:
    """``"greedy sigmas=3,1 step=0.5"`` → ("greedy", {"sigmas": (3, 1), "step": 0.5})."""
    from fire_lightning.peers import PEERS

    name, *items = text.split()
    if name not in PEERS:
        raise SystemExit(f"unknown peer {name!r}: the peers are {', '.join(PEERS)}")
    kw = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: settings are key=value")
        kw[key] = parse_value(value)
    return name, kw


def val_pairs(run: Path, max_pairs: int | None) -> tuple[dict, tuple, dict]:
    """The run's validation pairs as one batch (``(B, 1, *S)`` images and labels; known transforms when the
    data has them), the voxel size and the label names."""
    from fire_lightning.batches import collate_pairs
    from fire_lightning.train import load_run_config, make_datamodule

    dm = make_datamodule(load_run_config(run))
    dm.setup("fit")
    dataset = dm.val_dataloader().dataset
    n = min(len(dataset), max_pairs or len(dataset))
    return collate_pairs([dataset[i] for i in range(n)]), tuple(float(s) for s in dm.spacing), dm.label_names


def score_setting(batch: dict, spacing, names: dict, peer, params) -> dict:
    """One setting on every pair: mean Dice (%) of the peer's two methods, affine error, folding, seconds,
    failures."""
    import torch

    from fire_lightning import metrics
    from fire_lightning.benchmark_methods import affine_theta
    from fire_lightning.peers.common import PeerFailed

    outs, ok, failed, cpu = [], [], [], 0.0
    for i in range(batch["moving"].shape[0]):
        t0 = time.process_time()
        try:
            outs.append(peer.register(batch["moving"][i], batch["fixed"][i], spacing, params, False))
            ok.append(i)
        except PeerFailed as e:
            failed.append(f"{batch['id'][i]} ({e})")
        cpu += time.process_time() - t0
    row = {"pairs": len(ok), "failed": failed, "cpu_seconds": cpu / batch["moving"].shape[0]}
    if not ok:
        return row
    fields = {m: torch.stack([o[m]["field"] for o in outs]) for m in peer.methods}
    known = "true_theta" in batch
    truth = {k: batch[k][ok] for k in ("true_theta", "true_elastic")} if known else None
    thetas = {peer.affine: affine_theta(fields[peer.affine])} if known else None
    scores = metrics.score_methods(batch["moving_label"][ok], batch["fixed_label"][ok], fields, names, spacing,
                                   truth=truth, thetas=thetas)
    row.update(affine_dice=100 * float(scores[peer.affine]["dice_mean"].mean()),
               dice=100 * float(scores[peer.deformable]["dice_mean"].mean()),
               folding_pct=float(scores[peer.deformable]["folding_pct"].mean()),
               seconds=float(sum(o[peer.deformable]["seconds"] for o in outs) / len(outs)))
    if known:
        err = scores[peer.affine]["affine_err_mm"]
        row.update(affine_err_mm=float(err.mean()), affine_fail=int((err > 5.0).sum()))
    return row


def reference_rows(batch: dict, spacing, names: dict) -> list[dict]:
    """Unaligned, and the ceiling (True-Affine / True: the known transforms inverted) where there is one."""
    from fire_lightning import metrics
    from fire_lightning.truth import true_fields

    fields = {"Unaligned": None}
    if "true_theta" in batch:
        fields.update(true_fields(batch["true_theta"], batch["true_elastic"]))
    scores = metrics.dice_by_method(batch["moving_label"], batch["fixed_label"], fields, names)
    dice = {m: 100 * float(s["dice_mean"].mean()) for m, s in scores.items()}
    rows = [{"peer": "Unaligned", "setting": "", "dice": dice["Unaligned"]}]
    if "True" in dice:
        rows.append({"peer": "True", "setting": "the known transforms", "affine_dice": dice["True-Affine"],
                     "dice": dice["True"]})
    return rows


COLUMNS = [("peer", "peer", "{}"), ("setting", "setting (defaults + ...)", "{}"),
           ("affine_dice", "affine Dice (%)", "{:.2f}"), ("dice", "deformable Dice (%)", "{:.2f}"),
           ("affine_err_mm", "affine error (mm)", "{:.2f}"), ("affine_fail", "affine > 5 mm", "{}"),
           ("folding_pct", "% det J ≤ 0", "{:.3f}"), ("seconds", "s / pair", "{:.3f}"),
           ("cpu_seconds", "CPU s / pair", "{:.3f}"), ("pairs", "pairs", "{}")]


def table(rows: list[dict]) -> str:
    from fire_lightning.tables import markdown_table

    body = [[fmt.format(r[k]) if r.get(k) is not None else "–" for k, _, fmt in COLUMNS] for r in rows]
    return markdown_table([h for _, h, _ in COLUMNS], body)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder (its config.yaml gives the pairs)")
    p.add_argument("--split", default="val", choices=["val"], help="the validation pairs (the only choice: "
                   "settings are never chosen on test pairs)")
    p.add_argument("--setting", action="append", default=None, metavar="'PEER key=value ...'",
                   help="a setting to score (repeatable; default: the built-in grid)")
    p.add_argument("--peers", default=None, help="only these peers of the grid, comma-separated")
    p.add_argument("--max-pairs", type=int, default=16, help="the first N validation pairs (default 16)")
    p.add_argument("--threads", type=int, default=1, help="threads of every peer (default 1)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/tune-peers)")
    args = p.parse_args(argv)

    import torch

    from fire_lightning.peers import PEERS

    torch.set_num_threads(args.threads)
    if args.setting:
        texts = args.setting
    else:
        keep = args.peers.split(",") if args.peers else list(GRID)
        texts = [f"{name} {s}" for name in keep for s in GRID[name]]
    settings = [(t, parse_setting(t)) for t in texts]
    batch, spacing, names = val_pairs(args.run, args.max_pairs)
    rows = reference_rows(batch, spacing, names)
    for text, (name, kw) in settings:
        peer = PEERS[name]
        params = peer.make_params(**{"threads": args.threads, **kw})
        t0 = time.perf_counter()
        row = {"peer": name, "setting": text.partition(" ")[2].strip(),
               **score_setting(batch, spacing, names, peer, params)}
        rows.append(row)
        print(f"{name} {row['setting'] or '(defaults)'}: {row.get('affine_dice', float('nan')):.2f} / "
              f"{row.get('dice', float('nan')):.2f} % in {time.perf_counter() - t0:.0f} s"
              + (f"; failed on {len(row['failed'])} pairs" if row["failed"] else ""), flush=True)
    out = args.out or args.run / "tune-peers"
    out.mkdir(parents=True, exist_ok=True)
    text = (f"Peers' settings on the first {batch['moving'].shape[0]} validation pairs of {args.run.name} "
            f"({args.threads} thread(s); registered one way).\n\n" + table(rows) + "\n")
    failures = [f"- {r['peer']} {r['setting']}: {'; '.join(r['failed'])}" for r in rows if r.get("failed")]
    if failures:
        text += "\nFailed twice (left out of the row's means):\n" + "\n".join(failures) + "\n"
    (out / "tune_peers.md").write_text(text)
    (out / "tune_peers.json").write_text(json.dumps(rows, indent=1))
    with open(out / "tune_peers.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([k for k, _, _ in COLUMNS] + ["failed"])
        w.writerows([[r.get(k, "") for k, _, _ in COLUMNS] + ["; ".join(r.get("failed", []))] for r in rows])
    print("\n" + text + f"\nwritten: {out / 'tune_peers.md'} (also .csv, .json)")
    return rows


if __name__ == "__main__":
    main()
