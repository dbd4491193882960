"""The configuration's schema: plain dataclasses, with their defaults, and nothing else imported.

:mod:`.config` loads experiments onto it with OmegaConf (YAML + ``key=value`` overrides, checked
keys and types). Code that only reads a saved configuration, such as ``fire register`` loading a
checkpoint, builds it here with :func:`from_dict` and does not pay for importing OmegaConf
(a fifth of a second on a small CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


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
class SubjectsConfig:
    """Synthetic subjects of the phantom (data_modules/subjects.py): the template warped by a seeded smooth
    deformation and per-axis scale each. ``train`` 0: off (one brain, cut into slabs by ``split``)."""

    train: int = 0  # training subjects (seeds 0 ..); val / test subjects come from disjoint seed ranges
    val: int = 4
    test: int = 10
    control_points: int = 5  # the subject deformation's B-spline grid per axis
    max_mm: float = 8.0  # its largest control-point displacement
    scale: float = 0.08  # each axis scaled by 1 + U(-scale, scale)
    # val / test pairs: "subjects" (held-out ones) or "split" (2D: the split's; training on in-plane subjects
    # at the split's training slices only, docs/3d.md)
    held_out: str = "subjects"


@dataclass
class PhantomConfig:
    """The embedded phantom (data.name: phantom; data_modules/phantom.py): its build and its slab split."""

    seed: int = 0  # seed of the synthesised modalities' bias fields and noise
    noise_std: float = 0.02
    bias_strength: float = 0.15
    split: SplitConfig = field(default_factory=SplitConfig)  # train/val/test ranges along the superior axis
    subjects: SubjectsConfig = field(default_factory=SubjectsConfig)  # many anatomies instead of the split


def _mrbrains_files() -> Dict[str, Dict[str, List[str]]]:
    return {
        "mrbrains13": {"T1": ["T1.mhd", "T1.nii.gz", "T1.nii"],
                       "IR": ["T1_IR.mhd", "T1_IR.nii.gz", "T1_IR.nii"],
                       "FLAIR": ["T2_FLAIR.mhd", "T2_FLAIR.nii.gz", "T2_FLAIR.nii"],
                       "labels": ["LabelsForTraining.mhd", "LabelsForTraining.nii.gz", "LabelsForTraining.nii"]},
        "mrbrains18": {"T1": ["pre/T1.nii.gz", "pre/reg_T1.nii.gz", "pre/T1.nii", "pre/reg_T1.nii"],
                       "IR": ["pre/IR.nii.gz", "pre/IR.nii"],
                       "FLAIR": ["pre/FLAIR.nii.gz", "pre/FLAIR.nii"],
                       "labels": ["segm.nii.gz", "segm.nii"]},
    }


@dataclass
class MRBrainSConfig:
    """MRBrainS13 + 18 (data.name: mrbrains; data_modules/mrbrains.py): where the files are."""

    # Release → folder name under data.root.
    releases: Dict[str, str] = field(default_factory=lambda: {"mrbrains13": "TrainingData", "mrbrains18": "training"})
    # Release → modality (T1, IR, FLAIR) or "labels" → candidate file names (globs) inside a
    # subject's folder, tried in order. MetaImage (.mhd + .raw) and NIfTI are both read.
    files: Dict[str, Dict[str, List[str]]] = field(default_factory=_mrbrains_files)


@dataclass
class ACDCConfig:
    """ACDC 2017 (data.name: acdc; data_modules/acdc.py)."""

    subsets: List[str] = field(default_factory=lambda: ["training"])  # ACDC folders used: training, testing
    slice_spacing: float = 10.0  # mm between slices after resampling, 3D ACDC only (2D keeps the native slices)
    augment: bool = False  # training: random affine + elastic transforms on top of the cardiac motion


@dataclass
class DataConfig:
    """The data section: what every dataset reads, then one section per dataset (data.phantom,
    data.mrbrains, data.acdc) with the keys only that dataset reads."""

    name: str = "phantom"
    spatial_dims: int = 2
    modalities: List[str] = field(default_factory=lambda: ["T1", "FLAIR"])  # [moving A, fixed B]
    spacing: float = 2.5  # mm; in-plane in 2D, isotropic in 3D
    size: List[int] = field(default_factory=lambda: [80, 96])  # 2D: [X, Y]; 3D: [X, Y, Z]
    min_brain_fraction: float = 0.25
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 8
    num_workers: int = 0
    samples_per_epoch: int = 800
    n_val_images: int = 4
    val_transforms_per_image: int = 2
    n_test_images: int = 6
    test_transforms_per_image: int = 20
    test_seed: int = 1234
    # --- real datasets (mrbrains, acdc); see data_modules/volumes.py ---
    root: Optional[str] = None  # dataset root
    cache_dir: Optional[str] = None  # preprocessed volumes; None: $FIRE_CACHE_DIR, else ~/.cache/fire-lightning
    subject_split: List[int] = field(default_factory=lambda: [8, 1, 3])  # subjects for train/val/test (FIRE §4.1)
    split_seed: int = 0  # shuffles the subjects before the split
    intensity_percentiles: List[float] = field(default_factory=lambda: [0.5, 99.5])  # foreground clip → [0, 1]
    # Scored structures: name → source label values, output labels 1..K in this order; {} = the
    # dataset's default (MRBrainS: {brainstem: [8], cerebellum: [7], WM: [3, 4]}; e.g. CSF/GM/WM:
    # {CSF: [5, 6], GM: [1, 2], WM: [3, 4]}).
    structures: Dict[str, List[int]] = field(default_factory=dict)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    mrbrains: MRBrainSConfig = field(default_factory=MRBrainSConfig)
    acdc: ACDCConfig = field(default_factory=ACDCConfig)


@dataclass
class SynthesisConfig:
    """G (the encoder) and F^{A→B}, F^{B→A} (the decoders) (:mod:`fire_lightning.nets.synthesis`)."""

    width: int = 64  # w (paper: 64): G's output has 4w channels, every network scales with it
    n_res: int = 4  # ResNet blocks in G and in each F (paper: 4)
    down_kernel: int = 3  # G's stride-2 convolutions: 3 (paper, features 1.5 px off the grid) | 4 (grid-aligned)
    outer_kernel: int = 7  # G's first and each F's last full-resolution convolution (paper: 7; odd)
    checkpoint_activations: bool = False  # G and F recompute their activations in the backward (memory, 3D)
    checkpoint_chunk: int = 0  # with it: each run of that many samples of a G/F call checkpointed apart; 0: whole calls


@dataclass
class AffineConfig:
    """T_af: how phi_af is produced (:mod:`fire_lightning.nets.transformation`); the paper: regress,
    identity, one pass, no finer levels."""

    head: str = "regress"  # regress (conv → global pooling → FC) | dense | keypoints | match (nets/affine.py)
    init: str = "identity"  # identity | com | scale | principal: the images' foreground moments first
    weighting: str = "peak"  # match head: peak (scalar confidence) | aperture (inverse match covariance)
    radius: int = 2  # match head: the search radius of its cost volume, in S/4 feature points per axis
    channels: List[int] = field(default_factory=lambda: [32, 64, 64])  # the head's three layers
    hidden: int = 64  # regress head: its fully connected layer
    passes: int = 1  # recursive cascade: the head applied K times, each on the re-warped features
    passes_eval: Optional[int] = None  # passes at inference (validation, test, register); None: as in training
    fine_passes: int = 0  # coarse to fine: passes of a second match head on G's S/2 features after the cascade
    fine_passes_eval: Optional[int] = None  # its passes at inference; None: fine_passes
    full_passes: int = 0  # then passes of a third match head on G's full-resolution features (its first block)
    full_passes_eval: Optional[int] = None  # its passes at inference; None: full_passes
    full_channels: List[int] = field(default_factory=lambda: [16, 32, 32])  # that head's (conv, -, descriptor)
    # at inference, K > 0: the opposite direction's finest affine level runs K passes from the inverse of this
    # direction's affine, and phi_af is the mean of the two estimates (nets.fire.FIRENet.symmetric_affine)
    symmetric_passes_eval: int = 0
    mi_weight: float = 0.0  # weight of MI(x^A ∘ φ_af, x^B) (both directions) added to R; 0 = the paper
    encoder: str = "shared"  # shared: T_af reads G | frozen: a copy of G made when the warm-up ends, never trained


@dataclass
class NonRigidConfig:
    """T_nr (:mod:`fire_lightning.nets.nonrigid`): the paper's ``conv`` head on G's features or a ``unet`` on images."""

    head: str = "conv"  # conv (the paper's, on G's S/4 features) | unet (on the images, VoxelMorph / MI-CNN style)
    channels: List[int] = field(default_factory=lambda: [16, 32, 32, 32])  # unet: features per level, fine to coarse
    out_level: int = 1  # unet: the field's grid, S/2^out_level
    passes: int = 1  # unet: recursive cascade, each pass on the image re-warped by the field so far
    passes_eval: Optional[int] = None  # unet: passes at inference; None: as in training
    symmetric_passes_eval: int = 0  # unet, inference, K > 0: mean with the other T_nr's (FIRENet.symmetric_nonrigid)
    diffeomorphic: bool = False  # T_nr's output is a stationary velocity, integrated by scaling and squaring
    integration_steps: int = 7


@dataclass
class LossConfig:
    """The similarity term (7) and the smoothness term (10) of L (:mod:`fire_lightning.losses`)."""

    similarity: str = "rms"  # rms | mi | lncc, used in (7)
    similarity_input: str = "synthesised"  # (7) compares F(G(x^A∘φ)) (paper) or the warped image itself ("image")
    mi_bins: int = 32
    mi_sigma_ratio: float = 0.5
    ncc_kernel: int = 7
    smooth_units: str = "voxel"  # units of the bending term (10): "voxel" (image voxels) or "normalised"


@dataclass
class MICNNConfig:
    """The MI-CNN's own keys (``model.name: micnn``, :mod:`fire_lightning.nets.micnn`); its network is
    ``model.nonrigid``'s U-Net, its similarity ``model.loss``'s, its moments start ``model.affine.init``."""

    smooth_weight: float = 1.0  # λ of the smoothness term: mean over points of ||∇u||², u in voxels
    affine_steps: int = 0  # pre-alignment after the moments start: steps of per-pair MI affine optimisation
    affine_lr: float = 3e-2  # their Adam step on theta (normalised coordinates)


@dataclass
class ModelConfig:
    name: str = "fire"  # fire | micnn (the MI-CNN: a U-Net on the pre-aligned pair, docs/micnn.md)
    micnn: MICNNConfig = field(default_factory=MICNNConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    nonrigid: NonRigidConfig = field(default_factory=NonRigidConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    channels_last: bool = False  # the networks' weights and activations channels-last (CPU: a faster step)
    adversarial: bool = False  # ExFIRE: discriminators D^A, D^B and an LSGAN term
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
    fused: bool = True  # Adam's fused kernels where torch has them (CPU, CUDA): the same update, fewer ops
    affine_warmup_steps: int = 0  # beyond the paper: the first N iterations train G, T_af on the affine MI alone
    lr_decay: str = "none"  # beyond the paper: "cosine", every rate to 0 along half a cosine after the warm-up
    lr_ramp_steps: int = 0  # beyond the paper: every rate climbs linearly over N iterations after the warm-up
    affine_joint_factor: float = 1.0  # beyond the paper: T_af's rate x this after the warm-up (0: T_af held)


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
    # torch.compile of the training forward + loss (FIREModule._forward_loss, one graph); validation
    # stays eager. For GPUs, where the step's ~4 000 small ops bound it (docs/performance.md);
    # not measured on one yet. compile_mode: default | reduce-overhead (CUDA graphs) | max-autotune;
    # compile_backend: inductor, or aot_eager (traces without generating code: a check on any machine)
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"


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


@dataclass
class ExplainSettings:
    """What each component's Grad-CAM map explains and how (:mod:`fire_lightning.explain`; config ``explain``)."""

    scalar_G: str = "displacement"  # displacement | nonrigid | affine
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

    @classmethod
    def from_config(cls, cfg) -> "ExplainSettings":
        """The settings of a whole configuration's ``explain`` section (OmegaConf or :class:`Config`)."""
        e = cfg.explain
        return cls(**{f.name: ([int(v) for v in e.region] if f.name == "region" else getattr(e, f.name))
                      for f in dataclasses.fields(cls)})


@dataclass
class ExplainConfig(ExplainSettings):
    """ExFIRE Grad-CAM: :class:`ExplainSettings`, and the training callback."""

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


#: Keys renamed when the model's settings became sections (old flat key → its place now). Old
#: command lines, experiment files, run folders and checkpoints name the old keys:
#: :func:`rename_old_keys` and :func:`rename_old_override` read them onto the new ones.
RENAMED_KEYS: dict[str, str] = {
    **{f"model.{k}": f"model.synthesis.{k}" for k in ("width", "n_res", "down_kernel", "checkpoint_activations",
                                                      "checkpoint_chunk")},
    **{f"model.affine_{k}": f"model.affine.{k}" for k in (
        "head", "init", "weighting", "channels", "hidden", "passes", "passes_eval", "fine_passes", "fine_passes_eval",
        "full_passes", "full_passes_eval", "full_channels", "symmetric_passes_eval", "mi_weight")},
    **{f"model.{k}": f"model.nonrigid.{k}" for k in ("diffeomorphic", "integration_steps")},
    **{f"model.{k}": f"model.loss.{k}" for k in ("similarity", "similarity_input", "mi_bins", "mi_sigma_ratio",
                                                 "ncc_kernel", "smooth_units")},
    # dataset-specific data keys, moved into their dataset's section (a section moves with all under it)
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


def _warn_renamed(source: str, renamed: list[tuple[str, str]]) -> None:
    pairs = ", ".join(f"{old} → {new}" for old, new in renamed)
    warnings.warn(f"{source}: renamed config keys, read under their new names: {pairs}", FutureWarning, stacklevel=3)


def rename_old_keys(data: Mapping[str, Any], source: str | None = None) -> dict:
    """A whole configuration ``data`` (nested mappings) with the keys of :data:`RENAMED_KEYS` moved to
    their new place, as nested plain dicts; ``data`` itself is not changed. With ``source`` (a file, the
    command line) one ``FutureWarning`` names each old key's new name; without it (a saved run or
    checkpoint, which no one should have to edit) the keys are moved silently.

    Raises:
        ConfigError: an old key given together with its new one.
    """
    out = _plain(data)
    renamed = []
    for old, new in RENAMED_KEYS.items():
        *path, leaf = old.split(".")
        parent = _section(out, path, create=False)
        if parent is None or leaf not in parent:
            continue
        value = parent.pop(leaf)
        *new_path, new_leaf = new.split(".")
        target = _section(out, new_path, create=True)
        if new_leaf in target:
            raise ConfigError(f"{source or 'config'}: '{old}' is the old name of '{new}'; give only '{new}'")
        target[new_leaf] = value
        renamed.append((old, new))
    if renamed and source is not None:
        _warn_renamed(source, renamed)
    return out


def rename_old_override(item: str, source: str = "command line") -> str:
    """A ``key=value`` override with an old key (:data:`RENAMED_KEYS`, or a key under an old section)
    renamed, with a ``FutureWarning``."""
    key, sep, value = item.partition("=")
    key = key.strip()
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            _warn_renamed(source, [(key, new + key[len(old):])])
            return f"{new}{key[len(old):]}{sep}{value}"
    return item


def _plain(data: Any) -> Any:
    return {k: _plain(v) for k, v in data.items()} if isinstance(data, Mapping) else data


def _section(data: dict, path: list[str], create: bool) -> dict | None:
    for key in path:
        if not isinstance(data.get(key), dict):
            if not create or key in data:
                return None
            data[key] = {}
        data = data[key]
    return data


def from_dict(data: Mapping[str, Any], cls: type = Config, where: str = "") -> Any:
    """``cls`` (a schema dataclass) with the values of ``data`` (a saved configuration, e.g. a
    checkpoint's ``hyper_parameters["cfg"]``) and the schema's defaults for keys it lacks (saved
    before the key existed). Values are taken as they are (lists and dicts copied): ``data`` was
    checked when it was loaded.

    Raises:
        ConfigError: a key the schema does not have, named in full (``model.widht``).
    """
    if cls is Config:
        data = rename_old_keys(data)  # saved before the model's sections: read silently
    out = cls()
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{where}{key}'{hint}")
        default = getattr(out, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{where}{key}' must be a section, got {value!r}")
            value = from_dict(value, type(default), f"{where}{key}.")
        setattr(out, key, copy.deepcopy(value) if isinstance(value, (list, dict)) else value)
    return out
