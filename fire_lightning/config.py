"""Typed configuration: YAML file + command-line overrides → :class:`Config`.

Configs flow one way: ``load_config(path, overrides)`` merges the experiment YAML and
``key=value`` overrides onto the schema below (OmegaConf structured config, so a misspelt key
or a wrongly typed value is an error that names it), and everything downstream reads the
resulting object. Experiment files hold only what differs from these defaults.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key or file."""


@dataclass
class SplitFractions:
    train: float = 0.7
    val: float = 0.1
    test: float = 0.2


@dataclass
class SplitConfig:
    fractions: SplitFractions = field(default_factory=SplitFractions)
    blocks: int = 5
    gap_mm: float = 3.0


@dataclass
class AugmentConfig:
    change_range: List[float] = field(default_factory=lambda: [0.2, 0.5])  # FIRE §4.1
    other_scale: float = 0.05
    rotate_deg: float = 10.0
    translate: float = 0.05  # fraction of the extent
    elastic_control_points: int = 7
    elastic_max_mm: float = 6.0
    elastic_locked_borders: int = 2
    transform_fixed: bool = True  # training: fixed images get their own random transform too
    # training pairs transformed on the training device, the whole batch at once (data_modules/device_augment.py:
    # the same transforms and draws); the evaluation pairs stay on the TorchIO path (bit-identical)
    device: bool = False


@dataclass
class DataConfig:
    name: str = "phantom"
    spatial_dims: int = 2
    modalities: List[str] = field(default_factory=lambda: ["T1", "FLAIR"])  # [moving A, fixed B]
    spacing: float = 2.5  # mm; in-plane in 2D, isotropic in 3D
    size: List[int] = field(default_factory=lambda: [80, 96])  # 2D: [X, Y]; 3D: [X, Y, Z]
    min_brain_fraction: float = 0.25
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 8
    num_workers: int = 0
    samples_per_epoch: int = 800
    n_val_images: int = 4
    val_transforms_per_image: int = 2
    n_test_images: int = 6
    test_transforms_per_image: int = 20
    test_seed: int = 1234
    phantom_seed: int = 0
    noise_std: float = 0.02
    bias_strength: float = 0.15
    root: Optional[str] = None  # dataset root (real datasets)
    # --- real datasets (data.name: mrbrains); see data_modules/mrbrains.py and volumes.py ---
    cache_dir: Optional[str] = None  # preprocessed volumes; None: $FIRE_CACHE_DIR, else ~/.cache/fire-lightning
    subject_split: List[int] = field(default_factory=lambda: [8, 1, 3])  # subjects for train/val/test (FIRE §4.1)
    split_seed: int = 0  # shuffles the subjects before the split
    intensity_percentiles: List[float] = field(default_factory=lambda: [0.5, 99.5])  # foreground clip → [0, 1]
    # Scored structures: name → source label values, output labels 1..K in this order; {} = the
    # dataset's default (MRBrainS: {brainstem: [8], cerebellum: [7], WM: [3, 4]}; e.g. CSF/GM/WM:
    # {CSF: [5, 6], GM: [1, 2], WM: [3, 4]}).
    structures: Dict[str, List[int]] = field(default_factory=dict)
    # --- ACDC 2017 (data.name: acdc); see data_modules/acdc.py ---
    acdc_subsets: List[str] = field(default_factory=lambda: ["training"])  # ACDC folders used: training, testing
    slice_spacing: float = 10.0  # mm between slices after resampling, 3D ACDC only (2D keeps the native slices)
    acdc_augment: bool = False  # ACDC training: random affine + elastic transforms on top of the cardiac motion
    # Release → folder name under data.root.
    releases: Dict[str, str] = field(default_factory=lambda: {"mrbrains13": "TrainingData", "mrbrains18": "training"})
    # Release → modality (T1, IR, FLAIR) or "labels" → candidate file names (globs) inside a
    # subject's folder, tried in order. MetaImage (.mhd + .raw) and NIfTI are both read.
    files: Dict[str, Dict[str, List[str]]] = field(default_factory=lambda: {
        "mrbrains13": {"T1": ["T1.mhd", "T1.nii.gz", "T1.nii"],
                       "IR": ["T1_IR.mhd", "T1_IR.nii.gz", "T1_IR.nii"],
                       "FLAIR": ["T2_FLAIR.mhd", "T2_FLAIR.nii.gz", "T2_FLAIR.nii"],
                       "labels": ["LabelsForTraining.mhd", "LabelsForTraining.nii.gz", "LabelsForTraining.nii"]},
        "mrbrains18": {"T1": ["pre/T1.nii.gz", "pre/reg_T1.nii.gz", "pre/T1.nii", "pre/reg_T1.nii"],
                       "IR": ["pre/IR.nii.gz", "pre/IR.nii"],
                       "FLAIR": ["pre/FLAIR.nii.gz", "pre/FLAIR.nii"],
                       "labels": ["segm.nii.gz", "segm.nii"]},
    })


@dataclass
class ModelConfig:
    width: int = 64  # paper
    n_res: int = 4  # ResNet blocks in G and in each F (paper: 4)
    affine_channels: List[int] = field(default_factory=lambda: [32, 64, 64])
    affine_hidden: int = 64
    # How T_af produces theta (networks.TransformationNet); the paper: regress, identity, 1 pass, 3.
    affine_head: str = "regress"  # regress (conv → global pooling → FC) | dense (least-squares fit to a dense field)
    affine_init: str = "identity"  # identity | com | scale | principal: the images' foreground moments first
    affine_weighting: str = "peak"  # match head: peak (scalar confidence) | aperture (inverse match covariance)
    affine_passes: int = 1  # recursive cascade: the affine head applied K times, each on the re-warped features
    affine_passes_eval: Optional[int] = None  # passes at inference (validation, test, register); None: affine_passes
    checkpoint_activations: bool = False  # G and F recompute their activations in the backward (memory, 3D)
    channels_last: bool = False  # the networks' weights and activations channels-last (CPU: a faster step)
    affine_fine_passes: int = 0  # coarse to fine: passes of a second match head on G's S/2 features after the cascade
    affine_fine_passes_eval: Optional[int] = None  # its passes at inference; None: affine_fine_passes
    affine_full_passes: int = 0  # then passes of a third match head on G's full-resolution features (its first block)
    affine_full_passes_eval: Optional[int] = None  # its passes at inference; None: affine_full_passes
    affine_full_channels: List[int] = field(default_factory=lambda: [16, 32, 32])  # that head's (conv, -, descriptor)
    # at inference, K > 0: the opposite direction's finest affine level runs K passes from the inverse of this
    # direction's affine, and phi_af is the mean of the two estimates (networks.FIRENet.symmetric_affine)
    affine_symmetric_passes_eval: int = 0
    affine_mi_weight: float = 0.0  # weight of MI(x^A ∘ φ_af, x^B) (both directions) added to R; 0 = the paper
    down_kernel: int = 3  # G's stride-2 convolutions: 3 (paper, features 1.5 px off the grid) | 4 (grid-aligned)
    similarity: str = "rms"  # rms | mi | lncc, used in (7)
    similarity_input: str = "synthesised"  # (7) compares F(G(x^A∘φ)) (paper) or the warped image itself ("image")
    mi_bins: int = 32
    mi_sigma_ratio: float = 0.5
    ncc_kernel: int = 7
    smooth_units: str = "voxel"  # units of the bending term (10): "voxel" (image voxels) or "normalised"
    diffeomorphic: bool = False
    integration_steps: int = 7
    adversarial: bool = False
    disc_width: int = 16
    adv_weight: float = 1.0  # weight of the generators' LSGAN term in L when adversarial (ExFIRE: unweighted, 1)


@dataclass
class OptimConfig:
    lr_affine: float = 1e-5  # §3.8
    lr_nonrigid: float = 5e-5
    lr_synthesis: float = 1e-4
    lr_discriminator: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # max gradient norm per optimiser; 0 = off
    # Beyond the paper: the first N iterations train G and T_af on MI of the affinely warped image
    # alone (no decoders: a fraction of an iteration's cost); 0 = the paper's training from the start.
    affine_warmup_steps: int = 0
    # Beyond the paper (constant rates): "cosine" takes every optimiser's rate from its lr_* down to 0
    # along half a cosine over the iterations after the warm-up (the warm-up keeps its rates).
    lr_decay: str = "none"  # none | cosine


@dataclass
class TrainerConfig:
    max_steps: int = 144_000  # training iterations (batches), as the paper counts them
    accelerator: str = "auto"
    devices: int = 1  # processes per node (GPUs, or CPU processes with accelerator=cpu)
    num_nodes: int = 1
    # auto | ddp (DistributedDataParallel; one process per device, see train.strategy_for) | ddp_spawn | any
    # other Lightning strategy name, passed through
    strategy: str = "auto"
    precision: str = "32-true"
    val_every_n_steps: int = 500
    log_every_n_steps: int = 20
    checkpoint_every_n_steps: int = 1000
    fast_dev_run: bool = False
    deterministic: bool = False
    limit_val_batches: float = 1.0
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    progress_bar: bool = True


@dataclass
class LoggerConfig:
    csv: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_mode: str = "offline"
    wandb_project: str = "fire-lightning"
    wandb_group: Optional[str] = None  # runs grouped in the W&B UI (a sweep sets its name)
    wandb_tags: List[str] = field(default_factory=list)
    wandb_log_model: bool = True  # the final checkpoint as a W&B artifact (type "model")
    image_every_n_val: int = 1  # log image grids every N validations (0 = never)


LR_DECAYS = ("none", "cosine")  # optim.lr_decay
EXPLAIN_SCALARS = ("displacement", "nonrigid", "affine")  # G, T_af, T_nr (fire_lightning/explain.py)
EXPLAIN_D_SCALARS = ("realness", "fakeness")
EXPLAIN_METHODS = ("gradcam", "hirescam")
EXPLAIN_LAYERS = ("feature", "output")


@dataclass
class ExplainConfig:
    """ExFIRE Grad-CAM (fire_lightning/explain.py): what is explained, how, and the training callback."""

    scalar_G: str = "displacement"  # displacement | nonrigid | affine (METHOD.md defaults)
    scalar_T_af: str = "affine"
    scalar_T_nr: str = "displacement"
    scalar_D: str = "realness"  # realness | fakeness (minus the mean patch score)
    # gradcam (Captum LayerGradCam) | hirescam (gradient x activation, no spatial mean of the
    # gradient): G's readers normalise every channel, so Grad-CAM's weights vanish for G (explain.py)
    method_G: str = "hirescam"
    method_T_af: str = "gradcam"
    method_T_nr: str = "gradcam"
    method_D: str = "gradcam"
    region: List[int] = field(default_factory=list)  # labels the displacement is averaged over; [] = all
    layer: str = "feature"  # feature: each component's last conv block | output: T_nr's and D's output projections
    every_n_epochs: int = 10  # Grad-CAM callback during training (and at its end); 0 = off
    n_pairs: int = 2  # fixed validation pairs it explains


@dataclass
class RunConfig:
    root: str = "runs"
    name: Optional[str] = None  # default: <experiment>-<timestamp>


@dataclass
class Config:
    experiment: str = "default"
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)


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
        cfg = _merge(cfg, file_cfg, str(path))
        if cfg.experiment == "default":
            cfg.experiment = path.stem
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """``cfg`` (on the schema) ← ``key=value`` overrides; validated; returned as a new config."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
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
    for key in ("affine_fine_passes", "affine_full_passes", "affine_symmetric_passes_eval"):
        if cfg.model[key] < 0:
            raise ConfigError(f"model.{key} must be >= 0, got {cfg.model[key]}")
    if cfg.model.affine_full_passes and not cfg.model.affine_fine_passes:
        raise ConfigError("model.affine_full_passes > 0 needs the S/2 level before it: set model.affine_fine_passes >= 1")
    for key in ("affine_passes_eval", "affine_fine_passes_eval", "affine_full_passes_eval"):
        if cfg.model.get(key) is not None and cfg.model[key] < 1:
            raise ConfigError(f"model.{key} must be >= 1 (or null), got {cfg.model[key]}")
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
