"""``ruff check`` over the tree (the rules in pyproject.toml; ``make lint`` runs the same), when ruff is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Files not yet brought to the rules: other parts of the restructuring, fixed after the merge (being removed
# by the restructuring; the list empties then).
NOT_YET_LINTED = {
    "benchmarks/nonrigid_screen.py",
    "benchmarks/register_startup.py",
    "data_modules/acdc.py",
    "data_modules/augment.py",
    "data_modules/device_augment.py",
    "data_modules/mrbrains.py",
    "data_modules/phantom.py",
    "data_modules/volumes.py",
    "fire_lightning/ablation.py",
    "fire_lightning/baselines.py",
    "fire_lightning/cli.py",
    "fire_lightning/config.py",
    "fire_lightning/evaluate.py",
    "fire_lightning/explain.py",
    "fire_lightning/explain_report.py",
    "fire_lightning/module.py",
    "fire_lightning/networks.py",
    "fire_lightning/nonrigid.py",
    "fire_lightning/refine.py",
    "fire_lightning/refine_curve.py",
    "fire_lightning/register.py",
    "fire_lightning/schema.py",
    "fire_lightning/shift.py",
    "fire_lightning/truth.py",
    "fire_lightning/viz.py",
    "tests/test_acdc_datamodule.py",
    "tests/test_benchmark_scripts.py",
    "tests/test_evaluate.py",
    "tests/test_explain.py",
    "tests/test_metrics.py",
    "tests/test_mrbrains.py",
    "tests/test_networks.py",
    "tests/test_nonrigid.py",
    "tests/test_phantom.py",
    "tests/test_register.py",
    "tests/test_shift.py",
    "tests/test_training.py",
}


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (make venv installs it with the dev extras)")
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    problems = [line for line in proc.stdout.splitlines()
                if ".py:" in line and line.split(":")[0] not in NOT_YET_LINTED]
    assert not problems, "\n".join(problems)
    assert proc.returncode in (0, 1), proc.stderr
