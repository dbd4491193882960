"""Wall time of ``fire register`` on one pair, process start included, against ``import torch`` alone.

    fire export-pairs runs/<run> --out /tmp/pairs --max-pairs 1
    python benchmarks/register_startup.py --checkpoint runs/<run>/checkpoints/last.ckpt \\
        --moving /tmp/pairs/pair_000_moving.nii.gz --fixed /tmp/pairs/pair_000_fixed.nii.gz --rounds 10
    # and an older checkout in the same sitting (git worktree add /tmp/base <commit>):
    python benchmarks/register_startup.py ... --baseline /tmp/base

A single registration is mostly process start: Python, then torch's own import (1.1-2.4 s on the
project's 2-core CPU, depending on the hour), then what ``fire register`` adds. On a shared machine
only a same-sitting comparison means anything, so per round each command runs once, in turn, in a
fresh process: ``python -c "import torch"``, ``fire register`` (this checkout's ``fire_lightning``),
and, with ``--baseline``, the same command with that checkout's package first on ``sys.path``. It prints the median,
fastest and slowest wall time of each, its median CPU time (user + system), and what each adds to
``import torch`` (medians of the per-round differences), and writes them as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fire(source: Path, argv: list[str]) -> list[str]:
    """The ``fire`` command with ``source``'s ``fire_lightning`` (first on ``sys.path``, ahead of the installed one)."""
    code = f"import sys; sys.path.insert(0, {str(source)!r}); from fire_lightning.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, *argv]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cmd`` in a fresh process; CPU time (user + system, all threads) moves
    less than wall time when other work shares the cores."""
    t, c = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t, _cpu() - c
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, cpu


def _stats(v: list[float], base: list[float]) -> dict:
    return {"median_s": statistics.median(v), "fastest_s": min(v), "slowest_s": max(v),
            "added_to_import_torch_median_s": statistics.median([a - b for a, b in zip(v, base)]), "runs_s": v}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--moving", required=True)
    p.add_argument("--fixed", required=True)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--baseline", type=Path, help="another source checkout, timed the same way")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/register-startup.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        register = ["register", "--checkpoint", str(args.checkpoint), "--moving", str(args.moving), "--fixed",
                    str(args.fixed), "--out", str(Path(tmp) / "warped.nii.gz"), "--device", "cpu"]
        commands = {"import torch": [sys.executable, "-c", "import torch"],
                    "fire register": _fire(ROOT, register)}
        if args.baseline is not None:
            commands["fire register (baseline)"] = _fire(args.baseline.resolve(), register)
        for cmd in commands.values():  # a first run off the clock: file caches, bytecode
            _run(cmd)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(args.rounds):
            for name, cmd in commands.items():
                w, c = _run(cmd)
                wall[name].append(w)
                cpu[name].append(c)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in wall.items()),
                  flush=True)
    result = {"rounds": args.rounds, "checkpoint": str(args.checkpoint), "baseline": str(args.baseline or ""),
              "wall": {name: _stats(v, wall["import torch"]) for name, v in wall.items()},
              "cpu": {name: _stats(v, cpu["import torch"]) for name, v in cpu.items()}}
    print("\n| command | wall: median (fastest–slowest) s | added to `import torch` | CPU: median s | added |\n"
          "|---|---|---|---|---|")
    for name in commands:
        w, c = result["wall"][name], result["cpu"][name]
        print(f"| {name} | {w['median_s']:.2f} ({w['fastest_s']:.2f}–{w['slowest_s']:.2f}) | "
              f"{w['added_to_import_torch_median_s']:.2f} | {c['median_s']:.2f} | "
              f"{c['added_to_import_torch_median_s']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.out}")
    return result


if __name__ == "__main__":
    main()
