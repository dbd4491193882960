"""Summaries of per-pair values and markdown tables, shared by the benchmark and the explainability report."""

from __future__ import annotations

import numpy as np


def summarise(values) -> dict:
    """``{"mean", "std", "values"}`` of per-pair values (NaN entries ignored in mean/std)."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    return {  # None, not NaN, where nothing is finite: results.json stays valid JSON
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "values": [None if not np.isfinite(v) else float(v) for v in arr],
    }


def paired(a: dict, b: dict) -> dict:
    """Per-pair difference ``a - b`` of two metric summaries: mean, std, % of pairs where a > b."""
    pairs = [(x, y) for x, y in zip(a["values"], b["values"]) if x is not None and y is not None]
    diff = np.array([x - y for x, y in pairs])
    if not diff.size:
        return {"mean_diff": None, "std_diff": None, "pct_pairs_better": None, "n": 0}
    return {"mean_diff": float(diff.mean()), "std_diff": float(diff.std(ddof=1)) if diff.size > 1 else 0.0,
            "pct_pairs_better": float((diff > 0).mean() * 100), "n": int(diff.size)}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
