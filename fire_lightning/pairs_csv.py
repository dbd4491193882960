"""``fire register --csv``: every pair of a CSV file registered with one loaded model, and the Dice
of the warped labels where the CSV names the fixed image's labels."""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from .registrar import Registrar

log = logging.getLogger(__name__)

CSV_REQUIRED = ("moving", "fixed", "out")
CSV_OPTIONAL = ("moving_labels", "out_labels", "field", "affine", "fixed_labels")


@dataclass
class CSVReport:
    """Outcome of :func:`register_csv`: ``rows`` pairs tried; ``failures``: ``(row, message)``
    with rows numbered from 1 (the first line below the header); ``dice``: per scored row (one with
    ``fixed_labels``), ``{"row", "label value" → Dice, "mean"}``."""

    rows: int
    failures: list = dc_field(default_factory=list)
    dice: list = dc_field(default_factory=list)


def label_dice(warped_labels, fixed_labels) -> dict:
    """Dice of every non-zero label value of two label NIfTI files (or images) on the same grid:
    ``{value: Dice, ..., "mean": mean over the values}``; a value absent from both is left out."""
    a_img, b_img = (nib.load(str(x)) if not isinstance(x, nib.Nifti1Image) else x
                    for x in (warped_labels, fixed_labels))
    a, b = np.asarray(a_img.dataobj), np.asarray(b_img.dataobj)
    if a.shape != b.shape or not np.allclose(a_img.affine, b_img.affine, atol=1e-3):
        raise ValueError(f"{fixed_labels}: fixed_labels are not on the fixed image's grid ({b.shape} vs {a.shape})")
    out = {}
    for v in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}):
        x, y = a == v, b == v
        out[int(v)] = float(2 * (x & y).sum() / max(int(x.sum() + y.sum()), 1))
    out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def read_pairs_csv(csv_path) -> list[dict]:
    """The rows of a pairs CSV as dicts of paths (None where a cell is empty); relative paths are
    relative to the CSV file's folder. Header: ``moving,fixed,out`` and optionally
    ``moving_labels,out_labels,field,affine,fixed_labels`` (``fixed_labels``: score the warped
    labels against them, see :func:`register_csv`)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: pairs CSV not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in CSV_REQUIRED if c not in header]
        unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
        if missing or unknown:
            raise ValueError(f"{csv_path}: the header must name {','.join(CSV_REQUIRED)} (and optionally "
                             f"{','.join(CSV_OPTIONAL)}); missing {missing}, unknown {unknown}")
        raw_rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not raw_rows:
        raise ValueError(f"{csv_path}: no pairs below the header")

    def resolve(cell: str):
        if not cell:
            return None
        p = Path(cell).expanduser()
        return p if p.is_absolute() else csv_path.parent / p

    return [{k: resolve(row.get(k, "")) for k in CSV_REQUIRED + CSV_OPTIONAL} for row in raw_rows]


def register_csv(checkpoint, csv_path, device=None, on_error: Callable[[str], None] | None = None,
                 refine=None) -> CSVReport:
    """Register every pair of a CSV (see :func:`read_pairs_csv`) with one loaded model.

    A row that fails (missing or bad file, ...) is reported through ``on_error`` (one line naming
    the CSV, the row and the file; default: logged as an error) and the others still run; a
    failed row writes nothing. Rows with ``fixed_labels`` (and ``out_labels``) are scored: Dice per
    label value of the written warped labels against them, in ``<csv>_dice.csv`` next to the CSV
    (one line per scored row, then the mean and std).
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    rows = read_pairs_csv(csv_path)
    registrar = Registrar(checkpoint, device=device, refine=refine)
    report = CSVReport(rows=len(rows))
    on_error = on_error or log.error
    with logging_redirect_tqdm():
        for i, row in enumerate(tqdm(rows, desc="register", unit="pair", file=sys.stderr, disable=None), start=1):
            missing = [k for k in CSV_REQUIRED if row[k] is None]
            try:
                if missing:
                    raise ValueError(f"empty {', '.join(missing)}")
                row = dict(row)
                fixed_labels = row.pop("fixed_labels")
                if fixed_labels is not None and row["out_labels"] is None:
                    raise ValueError(f"{fixed_labels}: fixed_labels needs moving_labels and out_labels to score")
                registrar.register_files(**row)
                if fixed_labels is not None:
                    report.dice.append({"row": i, **label_dice(row["out_labels"], fixed_labels)})
            except Exception as e:  # one bad pair must not stop the batch
                kind = "" if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: "
                message = f"{csv_path}: row {i}: {kind}{' '.join(str(e).split())}"
                report.failures.append((i, message))
                on_error(message)
    log.info("%d of %d pairs registered", report.rows - len(report.failures), report.rows)
    if report.dice:
        _write_dice(report.dice, Path(csv_path).with_name(Path(csv_path).stem + "_dice.csv"))
    return report


def _write_dice(rows: list[dict], path: Path) -> None:
    keys = sorted({k for r in rows for k in r if k not in ("row", "mean")}) + ["mean"]
    table = [[r["row"], *[r.get(k, "") for k in keys]] for r in rows]
    stats = [[name, *[f(np.array([r[k] for r in rows if k in r])) for k in keys]]
             for name, f in (("mean", np.mean), ("std", lambda v: v.std(ddof=1) if v.size > 1 else 0.0))]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["row", *[f"dice_{k}" for k in keys]], *table, *stats])
