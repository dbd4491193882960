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
    """Per-pair difference ``a - b`` of two metric summaries: mean, std, % of pairs where a > b, and
    ``ci95``, the half-width of the 95 % confidence interval of the mean difference (Student's t on the
    pairs' differences; None for fewer than two pairs): a difference whose interval holds 0 is not resolved
    by these pairs."""
    pairs = [(x, y) for x, y in zip(a["values"], b["values"]) if x is not None and y is not None]
    diff = np.array([x - y for x, y in pairs])
    if not diff.size:
        return {"mean_diff": None, "std_diff": None, "ci95": None, "pct_pairs_better": None, "n": 0}
    std = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    ci95 = None
    if diff.size > 1:
        from scipy import stats  # here: most importers of this module want only its tables, not scipy.stats

        ci95 = float(stats.t.ppf(0.975, diff.size - 1) * std / np.sqrt(diff.size))
    return {"mean_diff": float(diff.mean()), "std_diff": std, "ci95": ci95,
            "pct_pairs_better": float((diff > 0).mean() * 100), "n": int(diff.size)}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
