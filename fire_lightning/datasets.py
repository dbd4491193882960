"""The datasets fire-lightning trains and benchmarks on, by ``data.name``.

The data modules (package ``data_modules``) build on fire_lightning's low-level modules (``schema``,
``spatial``, ``io``, ``batches``). So that the dependency runs one way, fire_lightning names the
classes it needs here, as ``"module:attribute"``, and imports them when a dataset is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .schema import ConfigError

#: data.name → its LightningDataModule, built from the typed ``data`` section
DATA_MODULES = {"phantom": "data_modules.phantom:PhantomDataModule",
                "mrbrains": "data_modules.mrbrains:MRBrainSDataModule",
                "acdc": "data_modules.acdc:ACDCDataModule"}
#: the shift benchmark's pairs (:mod:`.shift`) and its factors
SHIFT_PAIRS, SHIFT_FACTORS = "data_modules.shift:ShiftPairs", "data_modules.shift:FACTORS"


def resolve(target: str):
    """The object ``"module:attribute"`` names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def make_datamodule(cfg):
    """The data module named by ``cfg.data.name``, given the typed ``data`` section."""
    from .config import data_section

    if cfg.data.name not in DATA_MODULES:
        raise ConfigError(f"data.name: unknown dataset '{cfg.data.name}' (available: {', '.join(DATA_MODULES)})")
    return resolve(DATA_MODULES[cfg.data.name])(data_section(cfg))


#: the experiment whose data section ``fire data check --dataset NAME`` checks against when no config is given
DATASET_CONFIGS = {"acdc": "acdc2d", "mrbrains": "mrbrains2d_t1_flair"}  # shipped experiments


def check_dataset(root, dataset: str, config=None, overrides=()) -> list[str]:
    """``fire data check``: the report lines of a dataset read from ``root`` (subjects, files, the split),
    or the one-line error of what is wrong. ``config``: the experiment YAML (default: the dataset's own)."""
    from .config import load_config

    overrides = [*overrides, f"data.name={dataset}", f"data.root={root}"]
    if config is None and dataset in DATASET_CONFIGS:  # the dataset's own defaults (ACDC: 60/10/30)
        config = DATASET_CONFIGS[dataset]  # a shipped experiment, found by name
    dm = make_datamodule(load_config(config, overrides))
    if not callable(getattr(dm, "check", None)):
        raise ValueError(f"data.name={dataset}: this dataset has no check (it is not read from data.root)")
    return dm.check()


def held_out_pairs(target, overrides=()):
    """The test pairs of an experiment YAML or a run folder (its config.yaml): ``(dataset, spacing)``."""
    from .config import CONFIG_NAME, load_config, load_run_config

    target = Path(target)
    cfg = load_run_config(target, list(overrides)) if target.is_dir() and (target / CONFIG_NAME).is_file() \
        else load_config(target, list(overrides))
    dm = make_datamodule(cfg)
    dm.setup("test")
    return dm.test_dataset(), dm.spacing
