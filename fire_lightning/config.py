"""Typed configuration: YAML file + command-line overrides → :class:`Config`.

Configs flow one way: ``load_config(path, overrides)`` merges the experiment YAML and
``key=value`` overrides onto the schema (:mod:`.schema`'s dataclasses, as an OmegaConf structured
config, so a misspelt key or a wrongly typed value is an error that names it), and everything
downstream reads the resulting object. Experiment files hold only what differs from these defaults.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .schema import (  # noqa: F401  (re-exported: `from fire_lightning.config import Config` keeps working)
    AugmentConfig, Config, ConfigError, DataConfig, ExplainConfig, LoggerConfig, ModelConfig, NonRigidConfig, OptimConfig,
    RunConfig, SplitConfig, SplitFractions, TrainerConfig,
)


LR_DECAYS = ("none", "cosine")  # optim.lr_decay
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # trainer.compile_mode
EXPLAIN_SCALARS = ("displacement", "nonrigid", "affine")  # G, T_af, T_nr (fire_lightning/explain.py)
EXPLAIN_D_SCALARS = ("realness", "fakeness")
EXPLAIN_METHODS = ("gradcam", "hirescam")
EXPLAIN_LAYERS = ("feature", "output")


def _suggest(key: str, cfg: DictConfig) -> str:
    parent_path, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
        options = list(parent.keys()) if isinstance(parent, DictConfig) else []
    except OmegaConfBaseException:
        options = []
    close = difflib.get_close_matches(leaf, [str(o) for o in options], n=1)
    return f" (did you mean '{parent_path + '.' if parent_path else ''}{close[0]}'?)" if close else ""


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        raise ConfigError(f"{source}: unknown config key '{key}'{_suggest(str(key), base)}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "")
        raise ConfigError(f"{source}: bad value for '{key}': {e.msg if hasattr(e, 'msg') else e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema defaults ← YAML file ← ``key=value`` overrides; validated; read-only structure.

    Raises:
        ConfigError: missing/unreadable file, unknown key, wrong type, bad value.
    """
    cfg = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as e:  # yaml errors
            raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
        file_cfg = rename_data_keys(file_cfg, str(path))
        cfg = _merge(cfg, file_cfg, str(path))
        if cfg.experiment == "default":
            cfg.experiment = path.stem
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """``cfg`` (on the schema) ← ``key=value`` overrides; validated; returned as a new config."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), rename_data_keys(cfg, "saved config"))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        overrides = rename_data_overrides(overrides)
        try:
            dot = OmegaConf.from_dotlist(list(overrides))
        except Exception as e:  # OmegaConf's own errors, and YAML's for a malformed value
            raise ConfigError(f"cannot parse overrides {overrides}: {e}") from None
        cfg = _merge(cfg, dot, "command line")
    validate(cfg)
    OmegaConf.set_readonly(cfg, False)
    OmegaConf.set_struct(cfg, True)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks that the schema's types cannot express."""
    from .losses import SIMILARITIES

    d = cfg.data
    if d.spatial_dims not in (2, 3):
        raise ConfigError(f"data.spatial_dims must be 2 or 3, got {d.spatial_dims}")
    if len(d.size) != d.spatial_dims:
        raise ConfigError(f"data.size needs {d.spatial_dims} values for spatial_dims={d.spatial_dims}, got {list(d.size)}")
    if any(s % 4 for s in d.size):
        raise ConfigError(f"data.size must be divisible by 4 (G downsamples twice), got {list(d.size)}")
    for key, seq, k in (("data.augment.change_range", d.augment.change_range, 2), ("optim.betas", cfg.optim.betas, 2),
                        ("data.modalities", d.modalities, 2), ("model.affine_channels", cfg.model.affine_channels, 3)):
        if len(seq) != k:
            raise ConfigError(f"{key} needs {k} values, got {list(seq)}")
    lo, hi = d.augment.change_range
    if not 0 <= lo <= hi < 1:
        raise ConfigError(f"data.augment.change_range must satisfy 0 <= lo <= hi < 1, got {[lo, hi]}")
    if cfg.model.similarity not in SIMILARITIES:
        close = difflib.get_close_matches(cfg.model.similarity, SIMILARITIES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"model.similarity must be one of {SIMILARITIES}, got '{cfg.model.similarity}'{hint}")
    if cfg.model.similarity_input not in ("synthesised", "image"):
        raise ConfigError(f"model.similarity_input must be 'synthesised' or 'image', got '{cfg.model.similarity_input}'")
    if cfg.model.smooth_units not in ("voxel", "normalised"):
        raise ConfigError(f"model.smooth_units must be 'voxel' or 'normalised', got '{cfg.model.smooth_units}'")
    from .networks import AFFINE_HEADS, AFFINE_INITS, MatchAffineNet

    for key, allowed in (("affine_head", AFFINE_HEADS), ("affine_init", AFFINE_INITS),
                         ("affine_weighting", MatchAffineNet.WEIGHTINGS)):
        if cfg.model[key] not in allowed:
            raise ConfigError(f"model.{key} must be one of {allowed}, got '{cfg.model[key]}'")
    if cfg.model.affine_passes < 1:
        raise ConfigError(f"model.affine_passes must be >= 1, got {cfg.model.affine_passes}")
    for key in ("affine_fine_passes", "affine_full_passes", "affine_symmetric_passes_eval", "checkpoint_chunk"):
        if cfg.model[key] < 0:
            raise ConfigError(f"model.{key} must be >= 0, got {cfg.model[key]}")
    if cfg.model.affine_full_passes and not cfg.model.affine_fine_passes:
        raise ConfigError("model.affine_full_passes > 0 needs the S/2 level before it: set model.affine_fine_passes >= 1")
    for key in ("affine_passes_eval", "affine_fine_passes_eval", "affine_full_passes_eval"):
        if cfg.model.get(key) is not None and cfg.model[key] < 1:
            raise ConfigError(f"model.{key} must be >= 1 (or null), got {cfg.model[key]}")
    from .nonrigid import NONRIGID_HEADS

    nr = cfg.model.nonrigid
    if nr.head not in NONRIGID_HEADS:
        raise ConfigError(f"model.nonrigid.head must be one of {NONRIGID_HEADS}, got '{nr.head}'")
    if len(nr.channels) < 2 or not 0 <= nr.out_level < len(nr.channels):
        raise ConfigError(f"model.nonrigid needs >= 2 channels (levels) and 0 <= out_level < levels, got "
                          f"{list(nr.channels)} and {nr.out_level}")
    if nr.passes < 1 or (nr.passes_eval is not None and nr.passes_eval < 1):
        raise ConfigError(f"model.nonrigid.passes (and passes_eval) must be >= 1, got {nr.passes}, {nr.passes_eval}")
    if cfg.optim.lr_decay not in LR_DECAYS:
        raise ConfigError(f"optim.lr_decay must be one of {LR_DECAYS}, got '{cfg.optim.lr_decay}'")
    if cfg.model.down_kernel not in (3, 4):
        raise ConfigError(f"model.down_kernel must be 3 (paper) or 4 (grid-aligned), got {cfg.model.down_kernel}")
    if cfg.optim.affine_warmup_steps < 0 or cfg.optim.affine_warmup_steps >= cfg.trainer.max_steps:
        raise ConfigError(f"optim.affine_warmup_steps must be in [0, trainer.max_steps), got "
                          f"{cfg.optim.affine_warmup_steps} (max_steps {cfg.trainer.max_steps}); set both")
    if cfg.model.affine_mi_weight < 0:
        raise ConfigError(f"model.affine_mi_weight must be >= 0, got {cfg.model.affine_mi_weight}")
    if cfg.model.width < 1:
        raise ConfigError(f"model.width must be positive, got {cfg.model.width}")
    if cfg.model.adv_weight < 0:
        raise ConfigError(f"model.adv_weight must be >= 0, got {cfg.model.adv_weight}")
    check_explain_settings(cfg.explain)
    if cfg.explain.every_n_epochs < 0 or cfg.explain.n_pairs < 1:
        raise ConfigError(f"explain.every_n_epochs must be >= 0 and explain.n_pairs >= 1, got "
                          f"{cfg.explain.every_n_epochs} and {cfg.explain.n_pairs}")
    if cfg.trainer.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile_mode must be one of {COMPILE_MODES}, got '{cfg.trainer.compile_mode}'")
    if cfg.trainer.max_steps < 1:
        raise ConfigError(f"trainer.max_steps must be >= 1, got {cfg.trainer.max_steps}")


def check_explain_settings(e) -> None:
    """The ``explain`` section's choices (a config section or :class:`explain.ExplainSettings`)."""
    choices = {**{f"scalar_{c}": EXPLAIN_SCALARS for c in ("G", "T_af", "T_nr")}, "scalar_D": EXPLAIN_D_SCALARS,
               **{f"method_{c}": EXPLAIN_METHODS for c in ("G", "T_af", "T_nr", "D")}, "layer": EXPLAIN_LAYERS}
    for key, allowed in choices.items():
        value = getattr(e, key)
        if value not in allowed:
            raise ConfigError(f"explain.{key} must be one of {allowed}, got '{value}'")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


__all__ = ["Config", "ConfigError", "load_config", "to_yaml", "MISSING"]


# ---------------------------------------------------------------------------- renamed data keys
#: data keys that moved into their dataset's section: old key → new key. Experiment files, command-line
#: overrides, run folders' config.yaml and checkpoints' saved configs with the old names still load,
#: with a warning naming the new key. A section moves with everything under it (data.split.blocks →
#: data.phantom.split.blocks).
DATA_RENAMES = {
    "data.phantom_seed": "data.phantom.seed",
    "data.noise_std": "data.phantom.noise_std",
    "data.bias_strength": "data.phantom.bias_strength",
    "data.split": "data.phantom.split",
    "data.releases": "data.mrbrains.releases",
    "data.files": "data.mrbrains.files",
    "data.acdc_subsets": "data.acdc.subsets",
    "data.slice_spacing": "data.acdc.slice_spacing",
    "data.acdc_augment": "data.acdc.augment",
}


def _warn_renamed(pairs: list, source: str) -> None:
    import warnings

    if pairs:
        warnings.warn(f"{source}: renamed config keys, read under their new names: "
                      + ", ".join(f"{old} → {new}" for old, new in pairs), FutureWarning, stacklevel=3)


def rename_data_keys(tree, source: str = "config"):
    """``tree`` (a config as a mapping or DictConfig, e.g. a checkpoint's saved ``cfg``) with the old
    data keys of :data:`DATA_RENAMES` moved to their new place (a warning lists them); ``tree`` itself
    is returned when it has none. Plain mappings stay plain (no OmegaConf needed to read them back)."""
    data = tree.get("data") if hasattr(tree, "get") else None
    old = [k for k in DATA_RENAMES if data is not None and hasattr(data, "keys") and k[len("data."):] in data]
    if not old:
        return tree
    is_dict_config = isinstance(tree, DictConfig)
    out = OmegaConf.to_container(tree) if is_dict_config else {**tree}
    out["data"] = data = {**out["data"]}
    for key in old:
        value = data.pop(key[len("data."):])
        *parents, leaf = DATA_RENAMES[key].split(".")[1:]
        node = data
        for name in parents:
            node[name] = node = {**node.get(name, {})}
        node[leaf] = value
    _warn_renamed([(k, DATA_RENAMES[k]) for k in old], source)
    return OmegaConf.create(out) if is_dict_config else out


def rename_data_overrides(overrides: list[str]) -> list[str]:
    """``key=value`` overrides with the old data keys of :data:`DATA_RENAMES` renamed (a warning lists them)."""
    out, renamed = [], []
    for item in overrides:
        key, sep, value = item.partition("=")
        for old, new in DATA_RENAMES.items():
            if key == old or key.startswith(old + "."):
                renamed.append((key, new + key[len(old):]))
                key = new + key[len(old):]
                break
        out.append(key + sep + value)
    _warn_renamed(renamed, "command line")
    return out


def data_section(cfg) -> DataConfig:
    """The ``data`` section of a loaded config as the schema's dataclass, the one form the data modules
    read (a dataset reads a dozen of its values for every sample: an OmegaConf node costs tens of
    microseconds a read in the loader's workers, a dataclass attribute nothing)."""
    whole = isinstance(cfg, Config) or (isinstance(cfg, DictConfig) and "data" in cfg)
    data = cfg.data if whole else cfg  # a whole config, or its data section already
    return OmegaConf.to_object(data) if isinstance(data, DictConfig) else data
