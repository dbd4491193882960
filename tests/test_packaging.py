"""Packaging: every package is listed in pyproject.toml, and the experiment configs ship inside the
package (``fire_lightning.experiments``), found by name from an installed package as from a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fire_lightning.config import ConfigError, experiment_path, load_config, shipped_experiments

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_of_the_tree_is_listed_in_pyproject():
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("fire_lightning", "data_modules", "callbacks")
             for p in (ROOT / top).rglob("__init__.py")}
    mapped = {name for name, folder in PYPROJECT["package-dir"].items() if (ROOT / folder / "__init__.py").is_file()}
    assert set(PYPROJECT["packages"]) == found | mapped
    assert mapped == {"fire_lightning.experiments"}


def test_experiments_are_found_by_name_and_by_path(tmp_path, monkeypatch):
    shipped = shipped_experiments()
    assert {"phantom2d", "phantom3d", "acdc2d", "mrbrains2d_t1_flair"} <= set(shipped)
    assert any(name.startswith("sweeps/") for name in shipped)
    monkeypatch.chdir(tmp_path)  # away from the checkout: only the package's copy can answer
    for name in ("phantom2d", "phantom2d.yaml", "experiments/phantom2d.yaml"):
        assert experiment_path(name) == shipped["phantom2d"]
    assert load_config("phantom2d").experiment == "phantom2d"
    own = tmp_path / "phantom2d.yaml"  # a user's file of the same name wins
    own.write_text("seed: 7\n")
    assert load_config(own).seed == 7
    with pytest.raises(ConfigError, match=r"phantom9: config file not found \(nor a shipped experiment: .*phantom2d"):
        experiment_path("phantom9")


def test_the_wheel_carries_the_experiments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("fire_lightning-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fire_lightning/experiments/phantom2d.yaml", "fire_lightning/experiments/sweeps/phantom2d_small.yaml",
            "fire_lightning/nets/fire.py", "data_modules/pairs.py", "callbacks/gradcam.py"} <= names
