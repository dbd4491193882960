"""``ruff check`` over the tree (the rules in pyproject.toml; ``make lint`` runs the same), when ruff is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (make venv installs it with the dev extras)")
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    problems = [line for line in proc.stdout.splitlines() if ".py:" in line]
    assert not problems, "\n".join(problems)
    assert proc.returncode in (0, 1), proc.stderr
