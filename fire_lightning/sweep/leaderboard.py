"""A sweep's leaderboard: ``leaderboard.md`` / ``.csv`` (best first) and ``metric_vs_params.png``."""

from __future__ import annotations

import csv
from pathlib import Path

from ..tables import markdown_table
from .sweep_file import Sweep


def write_leaderboard(study, sweep: Sweep, folder: Path) -> list[dict]:
    """``leaderboard.md`` / ``.csv`` (best first) and ``metric_vs_params.png`` in the sweep folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name, **{k: t.params.get(k, "") for k in sweep.parameters},
               f"best {sweep.metric}": "" if t.value is None else round(float(t.value), 5),
               "run folder": t.user_attrs.get("run_dir", "")}
        rows.append(row)
    key = f"best {sweep.metric}"
    rows.sort(key=lambda r: (r[key] == "", -r[key] if r[key] != "" and sweep.maximize else r[key] or 0))
    header = ["trial", "state", *sweep.parameters, key, "run folder"]
    with open(folder / "leaderboard.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    md = markdown_table(header, [[str(r[h]) for h in header] for r in rows])
    (folder / "leaderboard.md").write_text(f"# Sweep {sweep.name} ({sweep.method}, {sweep.goal} {sweep.metric})\n\n"
                                           f"{md}\n")
    _plot(rows, sweep, folder)
    return rows


def _plot(rows: list[dict], sweep: Sweep, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"best {sweep.metric}"
    done = [r for r in rows if r[key] != ""]
    params = list(sweep.parameters)
    fig, axes = plt.subplots(1, len(params), figsize=(3.6 * len(params), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        xs = [r[p] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        pos = xs if numeric else [str(x) for x in xs]
        ax.scatter(pos, [r[key] for r in done], c=["C3" if r["state"] == "PRUNED" else "C0" for r in done])
        if numeric and sweep.parameters[p].get("distribution", "").startswith(("log", "q_log")):
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.name}: {len(done)} trials (red: pruned)")
    fig.tight_layout()
    fig.savefig(folder / "metric_vs_params.png", dpi=90)
    plt.close(fig)
