"""How different the synthetic subjects are, and what one costs: for the first N training subjects of
an experiment's phantom, the seconds to make each, its mean tissue Dice against the template, and the
mean Dice between consecutive subjects.

    python benchmarks/subjects.py phantom3d_subjects --n 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from data_modules.phantom import prepare_phantom
from data_modules.phantom_subjects import subject_settings, whole_volume
from data_modules.subjects import make_subject, subject_seed
from fire_lightning.config import data_section, load_config


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice (%) over the labels present in ``a``."""
    ks = [k for k in np.unique(a) if k > 0]
    return 100 * float(np.mean([2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in ks]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="experiment (name or YAML) with data.phantom.subjects")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--n", type=int, default=5, help="subjects measured")
    args = p.parse_args(argv)
    cfg = data_section(load_config(args.config, args.overrides))
    prep = prepare_phantom(cfg)
    images, labels = whole_volume(prep, cfg)
    settings, previous = subject_settings(cfg), None
    print(f"grid {labels.shape} of {prep.spacing} mm; {settings}")
    for i in range(args.n):
        t0 = time.perf_counter()
        _, lab = make_subject(images, labels, prep.spacing, subject_seed("train", i), settings)
        seconds = time.perf_counter() - t0
        line = f"subject {i}: {seconds:.2f} s, Dice vs template {mean_dice(lab, labels):.1f} %"
        if previous is not None:
            line += f", vs subject {i - 1} {mean_dice(lab, previous):.1f} %"
        print(line)
        previous = lab


if __name__ == "__main__":
    main()
