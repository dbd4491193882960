"""The datasets fire-lightning trains and benchmarks on, by ``data.name``.

The data modules (package ``data_modules``) build on fire_lightning's low-level modules (``schema``,
``spatial``, ``io``, ``batches``). So that the dependency runs one way, fire_lightning names the
classes it needs here, as ``"module:attribute"``, and imports them when a dataset is used.
"""

from __future__ import annotations

import importlib

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
