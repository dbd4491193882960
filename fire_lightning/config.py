"""Typed configuration: YAML file + command-line overrides → :class:`Config`.

Configs flow one way: ``load_config(path, overrides)`` merges the experiment YAML and
``key=value`` overrides onto the schema (:mod:`.schema`'s dataclasses, as an OmegaConf structured
config, so a misspelt key or a wrongly typed value is an error that names it), and everything
downstream reads the resulting object. Experiment files hold only what differs from these defaults.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .schema import (  # noqa: F401  (re-exported: `from fire_lightning.config import Config` keeps working)
    AffineConfig,
    AugmentConfig,
    Config,
    ConfigError,
    DataConfig,
    ExplainConfig,
    LoggerConfig,
    LossConfig,
    ModelConfig,
    NonRigidConfig,
    OptimConfig,
    RunConfig,
    SplitConfig,
    SplitFractions,
    SynthesisConfig,
    TrainerConfig,
    rename_old_keys,
    rename_old_override,
)

MODEL_NAMES = ("fire", "micnn")  # model.name: FIRE (the default) or the MI-CNN (nets/micnn.py)
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


def shipped_experiments() -> dict[str, Path]:
    """The experiment configs that ship with the package: ``{name: path}`` (``phantom2d``, ``sweeps/...``)."""
    try:
        root = Path(str(resources.files("fire_lightning.experiments")))
    except ModuleNotFoundError:  # a source tree not (re)installed since the configs became package data
        root = Path(__file__).resolve().parent.parent / "experiments"
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}


def experiment_path(name: str | Path) -> Path:
    """An experiment config: ``name`` as a path when that file exists, else the shipped experiment of that
    name (``phantom2d``, ``phantom2d.yaml``), so that configs are found from an installed package too.

    Raises:
        ConfigError: neither a file nor a shipped experiment (the shipped names are listed).
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_experiments()
    found = shipped.get(str(path.with_suffix("") if path.suffix == ".yaml" else path))
    if found is None:
        found = shipped.get(path.stem) if path.parent.name == "experiments" else None  # experiments/X.yaml elsewhere
    if found is None:
        raise ConfigError(f"{path}: config file not found (nor a shipped experiment: {', '.join(shipped)})")
    return found


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema defaults ← YAML file ← ``key=value`` overrides; validated; read-only structure.

    Raises:
        ConfigError: missing/unreadable file, unknown key, wrong type, bad value.
    """
    cfg = OmegaConf.structured(Config)
    if path is not None:
        path = experiment_path(path)
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as e:  # yaml errors
            raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
        if isinstance(file_cfg, DictConfig):  # keys renamed since the file was written: their new place
            file_cfg = rename_old_keys(OmegaConf.to_container(file_cfg, resolve=False), source=str(path))
        cfg = _merge(cfg, file_cfg, str(path))
        if cfg.experiment == "default":
            cfg.experiment = path.stem
    return apply_overrides(cfg, overrides)


#: a run folder's record of its resolved configuration
CONFIG_NAME = "config.yaml"


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """The resolved config saved in a run folder, with optional overrides."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved config (is {run_dir} a fire-lightning run folder?)")
    return load_config(path, overrides)


def apply_overrides(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """``cfg`` (on the schema) ← ``key=value`` overrides; validated; returned as a new config."""
    if isinstance(cfg, DictConfig):  # a saved config: keys renamed since it was written at their new place
        cfg = rename_old_keys(OmegaConf.to_container(cfg, resolve=False))
    cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        try:
            dot = OmegaConf.from_dotlist([rename_old_override(o) for o in overrides])
        except Exception as e:  # OmegaConf's own errors, and YAML's for a malformed value
            raise ConfigError(f"cannot parse overrides {overrides}: {e}") from None
        cfg = _merge(cfg, dot, "command line")
    validate(cfg)
    OmegaConf.set_readonly(cfg, False)
    OmegaConf.set_struct(cfg, True)
    return cfg


def held_out_by_subject(data) -> bool:
    """Whether a ``data`` section's validation and test pairs are held-out phantom subjects
    (``phantom.subjects.train > 0`` with ``held_out`` "subjects"), not the one brain's split."""
    s = data.phantom.subjects
    return int(s.train) > 0 and s.held_out == "subjects"


def validate(cfg: DictConfig) -> None:
    """Checks that the schema's types cannot express."""
    d = cfg.data
    if d.spatial_dims not in (2, 3):
        raise ConfigError(f"data.spatial_dims must be 2 or 3, got {d.spatial_dims}")
    if len(d.size) != d.spatial_dims:
        raise ConfigError(f"data.size needs {d.spatial_dims} values for spatial_dims={d.spatial_dims}, "
                          f"got {list(d.size)}")
    if any(s % 4 for s in d.size):
        raise ConfigError(f"data.size must be divisible by 4 (G downsamples twice), got {list(d.size)}")
    for key, seq, k in (("data.augment.change_range", d.augment.change_range, 2), ("optim.betas", cfg.optim.betas, 2),
                        ("data.modalities", d.modalities, 2)):
        if len(seq) != k:
            raise ConfigError(f"{key} needs {k} values, got {list(seq)}")
    lo, hi = d.augment.change_range
    if not 0 <= lo <= hi < 1:
        raise ConfigError(f"data.augment.change_range must satisfy 0 <= lo <= hi < 1, got {[lo, hi]}")
    sub = d.phantom.subjects
    if sub.held_out not in ("subjects", "split"):
        raise ConfigError(f"data.phantom.subjects.held_out must be 'subjects' or 'split', got '{sub.held_out}'")
    if sub.held_out == "split" and int(d.spatial_dims) != 2:
        raise ConfigError("data.phantom.subjects.held_out=split is for 2D: a 3D item spans the split's ranges")
    if sub.train > 0 and sub.held_out == "subjects" and min(sub.val, sub.test) < 1:
        raise ConfigError(f"data.phantom.subjects: with train > 0, val and test need >= 1 subject, "
                          f"got {sub.val} and {sub.test}")
    validate_model(cfg.model)
    if cfg.model.name == "micnn" and cfg.optim.affine_warmup_steps:
        raise ConfigError("optim.affine_warmup_steps warms up FIRE's learned affine stage; model.name=micnn has none "
                          f"(its pre-alignment is model.micnn.affine_steps): set it to 0, got "
                          f"{cfg.optim.affine_warmup_steps}")
    if cfg.optim.lr_decay not in LR_DECAYS:
        raise ConfigError(f"optim.lr_decay must be one of {LR_DECAYS}, got '{cfg.optim.lr_decay}'")
    if cfg.optim.affine_warmup_steps < 0 or cfg.optim.affine_warmup_steps >= cfg.trainer.max_steps:
        raise ConfigError(f"optim.affine_warmup_steps must be in [0, trainer.max_steps), got "
                          f"{cfg.optim.affine_warmup_steps} (max_steps {cfg.trainer.max_steps}); set both")
    ramp = cfg.optim.lr_ramp_steps
    if ramp < 0 or cfg.optim.affine_warmup_steps + ramp >= cfg.trainer.max_steps:
        raise ConfigError(f"optim.lr_ramp_steps must be >= 0 and end before trainer.max_steps, got {ramp} "
                          f"(affine_warmup_steps {cfg.optim.affine_warmup_steps}, max_steps {cfg.trainer.max_steps})")
    if cfg.model.affine.encoder == "frozen" and not cfg.optim.affine_warmup_steps:
        raise ConfigError("model.affine.encoder='frozen' copies G when the affine warm-up ends: set "
                          "optim.affine_warmup_steps > 0")
    if cfg.optim.affine_joint_factor < 0:
        raise ConfigError(f"optim.affine_joint_factor must be >= 0, got {cfg.optim.affine_joint_factor}")
    check_explain_settings(cfg.explain)
    if cfg.explain.every_n_epochs < 0 or cfg.explain.n_pairs < 1:
        raise ConfigError(f"explain.every_n_epochs must be >= 0 and explain.n_pairs >= 1, got "
                          f"{cfg.explain.every_n_epochs} and {cfg.explain.n_pairs}")
    if cfg.trainer.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile_mode must be one of {COMPILE_MODES}, got '{cfg.trainer.compile_mode}'")
    if cfg.trainer.max_steps < 1:
        raise ConfigError(f"trainer.max_steps must be >= 1, got {cfg.trainer.max_steps}")


def validate_model(m) -> None:
    """The ``model`` section's checks (a config section or :class:`schema.ModelConfig`): every model
    setting is checked here, once; the networks' constructors take their sections as given."""
    from .losses import SIMILARITIES
    from .nets.affine import AFFINE_HEADS, WEIGHTINGS
    from .nets.fire import AFFINE_ENCODERS, AFFINE_INITS
    from .nets.nonrigid import NONRIGID_HEADS

    s, a, nr, loss = m.synthesis, m.affine, m.nonrigid, m.loss
    if m.name not in MODEL_NAMES:
        close = difflib.get_close_matches(str(m.name), MODEL_NAMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"model.name must be one of {MODEL_NAMES}, got '{m.name}'{hint}")
    if m.name == "micnn":
        validate_micnn(m)
    if s.width < 1:
        raise ConfigError(f"model.synthesis.width must be positive, got {s.width}")
    if s.down_kernel not in (3, 4):
        raise ConfigError(f"model.synthesis.down_kernel must be 3 (paper) or 4 (grid-aligned), got {s.down_kernel}")
    if s.outer_kernel < 1 or s.outer_kernel % 2 == 0:
        raise ConfigError(f"model.synthesis.outer_kernel must be a positive odd number (paper: 7), "
                          f"got {s.outer_kernel}")
    if s.checkpoint_chunk < 0:
        raise ConfigError(f"model.synthesis.checkpoint_chunk must be >= 0, got {s.checkpoint_chunk}")
    for key, allowed in (("head", AFFINE_HEADS), ("init", AFFINE_INITS), ("weighting", WEIGHTINGS),
                         ("encoder", AFFINE_ENCODERS)):
        if getattr(a, key) not in allowed:
            raise ConfigError(f"model.affine.{key} must be one of {allowed}, got '{getattr(a, key)}'")
    if len(a.channels) != 3:
        raise ConfigError(f"model.affine.channels needs 3 values, got {list(a.channels)}")
    if a.passes < 1:
        raise ConfigError(f"model.affine.passes must be >= 1, got {a.passes}")
    for key in ("fine_passes", "full_passes", "symmetric_passes_eval"):
        if getattr(a, key) < 0:
            raise ConfigError(f"model.affine.{key} must be >= 0, got {getattr(a, key)}")
    if a.full_passes and not a.fine_passes:
        raise ConfigError("model.affine.full_passes > 0 needs the S/2 level before it: "
                          "set model.affine.fine_passes >= 1")
    for key in ("passes_eval", "fine_passes_eval", "full_passes_eval"):
        if getattr(a, key) is not None and getattr(a, key) < 1:
            raise ConfigError(f"model.affine.{key} must be >= 1 (or null), got {getattr(a, key)}")
    if a.mi_weight < 0:
        raise ConfigError(f"model.affine.mi_weight must be >= 0, got {a.mi_weight}")
    if nr.head not in NONRIGID_HEADS:
        raise ConfigError(f"model.nonrigid.head must be one of {NONRIGID_HEADS}, got '{nr.head}'")
    if len(nr.channels) < 2 or not 0 <= nr.out_level < len(nr.channels):
        raise ConfigError(f"model.nonrigid needs >= 2 channels (levels) and 0 <= out_level < levels, got "
                          f"{list(nr.channels)} and {nr.out_level}")
    if nr.passes < 1 or (nr.passes_eval is not None and nr.passes_eval < 1):
        raise ConfigError(f"model.nonrigid.passes (and passes_eval) must be >= 1, got {nr.passes}, {nr.passes_eval}")
    if nr.symmetric_passes_eval < 0 or (nr.symmetric_passes_eval and nr.head != "unet"):
        fix = " (add model.nonrigid.symmetric_passes_eval=0)" if nr.symmetric_passes_eval > 0 else ""
        raise ConfigError("model.nonrigid.symmetric_passes_eval must be >= 0, and 0 unless model.nonrigid.head is "
                          f"'unet', got {nr.symmetric_passes_eval} with head '{nr.head}'{fix}")
    if loss.similarity not in SIMILARITIES:
        close = difflib.get_close_matches(loss.similarity, SIMILARITIES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"model.loss.similarity must be one of {SIMILARITIES}, got '{loss.similarity}'{hint}")
    if loss.similarity_input not in ("synthesised", "image"):
        raise ConfigError("model.loss.similarity_input must be 'synthesised' or 'image', "
                          f"got '{loss.similarity_input}'")
    if loss.smooth_units not in ("voxel", "normalised"):
        raise ConfigError(f"model.loss.smooth_units must be 'voxel' or 'normalised', got '{loss.smooth_units}'")
    if m.adv_weight < 0:
        raise ConfigError(f"model.adv_weight must be >= 0, got {m.adv_weight}")


def validate_micnn(m) -> None:
    """``model.name=micnn``: its network is ``model.nonrigid``'s U-Net and it has no FIRE-only parts."""
    mc = m.micnn
    if m.nonrigid.head != "unet":
        raise ConfigError("model.name=micnn is the U-Net of model.nonrigid on the image pair: set "
                          f"model.nonrigid.head=unet, got '{m.nonrigid.head}'")
    if m.adversarial:
        raise ConfigError("model.adversarial adds ExFIRE's discriminators to FIRE; model.name=micnn has none")
    if mc.smooth_weight < 0 or mc.affine_steps < 0 or not mc.affine_lr > 0:
        raise ConfigError(f"model.micnn needs smooth_weight >= 0, affine_steps >= 0 and affine_lr > 0, got "
                          f"{mc.smooth_weight}, {mc.affine_steps}, {mc.affine_lr}")


def check_explain_settings(e) -> None:
    """The ``explain`` section's choices (a config section or :class:`schema.ExplainSettings`)."""
    choices = {**{f"scalar_{c}": EXPLAIN_SCALARS for c in ("G", "T_af", "T_nr")}, "scalar_D": EXPLAIN_D_SCALARS,
               **{f"method_{c}": EXPLAIN_METHODS for c in ("G", "T_af", "T_nr", "D")}, "layer": EXPLAIN_LAYERS}
    for key, allowed in choices.items():
        value = getattr(e, key)
        if value not in allowed:
            raise ConfigError(f"explain.{key} must be one of {allowed}, got '{value}'")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


__all__ = ["Config", "ConfigError", "load_config", "to_yaml", "MISSING"]


# ---------------------------------------------------------------------------- typed sections
def data_section(cfg) -> DataConfig:
    """The ``data`` section of a loaded config as the schema's dataclass, the one form the data modules
    read (a dataset reads a dozen of its values for every sample: an OmegaConf node costs tens of
    microseconds a read in the loader's workers, a dataclass attribute nothing)."""
    whole = isinstance(cfg, Config) or (isinstance(cfg, DictConfig) and "data" in cfg)
    data = cfg.data if whole else cfg  # a whole config, or its data section already
    return OmegaConf.to_object(data) if isinstance(data, DictConfig) else data
