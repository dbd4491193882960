"""Inference without training machinery: the trained networks, one pair at a time.

:class:`Registers` is the registration code path (§3.4, FIRE+IO), shared by the training
:class:`~fire_lightning.module.FIREModule` and by :class:`InferenceModel`, which
:func:`load_model` builds from a ``fire train`` checkpoint with torch alone (its configuration as
:mod:`.schema`'s dataclasses). ``fire register`` uses the latter, so that a single pair does not
pay for importing lightning and monai (seconds on a small CPU) or omegaconf (a fifth of a second);
``tests/test_register.py`` guards that import list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import spatial
from .io import describe_error
from .nets.fire import FIRENet
from .nets.micnn import MICNNNet
from .nets.transformation import Transform
from .refine import RefineSettings
from .refine import refine as refine_pair
from .schema import Config, from_dict

if TYPE_CHECKING:
    from omegaconf import DictConfig

LABEL_NAMES = {1: "CSF", 2: "GM", 3: "WM"}  # the phantom's; data modules pass their own


def model_spacing(cfg: Config | DictConfig, spacing=None) -> tuple[float, ...]:
    """The voxel size (mm) per model axis: ``spacing``, or isotropic ``data.spacing`` when None
    (checkpoints saved before the argument existed)."""
    n = int(cfg.data.spatial_dims)
    spacing = (float(cfg.data.spacing),) * n if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != n:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values; data.spatial_dims is {n}")
    return spacing


#: ``model.name`` → the network class
NETS = {"fire": FIRENet, "micnn": MICNNNet}


def build_net(cfg: Config | DictConfig, spacing=None) -> FIRENet | MICNNNet:
    """The networks of ``cfg.model`` (``model.name``: FIRE's or the MI-CNN's); ``spacing``: voxel size per
    axis (mm), for the moments initialisation. With ``model.channels_last`` their weights are channels-last,
    and so are the convolutions' outputs (oneDNN's preferred layout on a CPU; the values are the same within
    float rounding)."""
    m = cfg.model
    if m.name not in NETS:
        raise ValueError(f"model.name must be one of {tuple(NETS)}, got {m.name!r}")
    net = NETS[m.name](int(cfg.data.spatial_dims), m, spacing)
    if m.channels_last:
        net = net.to(memory_format=torch.channels_last if cfg.data.spatial_dims == 2 else torch.channels_last_3d)
    return net


class Registers:
    """Registration with ``self.net`` (:class:`FIRENet` or :class:`MICNNNet`) configured by ``self.cfg``."""

    net: FIRENet | MICNNNet
    cfg: Config | DictConfig  # the training module's OmegaConf config; an InferenceModel's dataclasses

    #: inference-only passes (``model.<key>``) → (the level's head attribute, its training-passes key)
    PASSES_EVAL = {"affine.passes_eval": ("affine", "affine.passes"),
                   "affine.fine_passes_eval": ("affine_fine", "affine.fine_passes"),
                   "affine.full_passes_eval": ("affine_full", "affine.full_passes")}

    def set_inference_key(self, key: str, value) -> None:
        """Change one inference-only key of ``model`` (:attr:`PASSES_EVAL`, ``affine.symmetric_passes_eval``,
        ``nonrigid.passes_eval``, ``nonrigid.symmetric_passes_eval``) on a trained model."""
        if key != "nonrigid.passes_eval" and not isinstance(self.net, FIRENet):
            raise ValueError(f"model.{key}: the {self.net.NAME} model has no learned affine stage; of the "
                             "inference-only keys it takes model.nonrigid.passes_eval")
        if key in self.PASSES_EVAL:
            return self.set_passes_eval(key, value)
        if key == "nonrigid.passes_eval":
            return self.set_nonrigid_passes_eval(value)
        if key == "nonrigid.symmetric_passes_eval":
            return self.set_nonrigid_symmetric_passes_eval(value)
        if key != "affine.symmetric_passes_eval":
            raise KeyError(f"model.{key} is not an inference-only key")
        if value is None or int(value) < 0:
            raise ValueError(f"{key} must be >= 0 (0: off), got {value}")
        self.net.affine_symmetric_passes_eval = int(value)
        self.cfg.model.affine.symmetric_passes_eval = int(value)

    def set_passes_eval(self, key: str, passes: int | None) -> None:
        """Passes at inference of one level of the affine stage on a trained model: ``key`` one of
        :attr:`PASSES_EVAL` (the cascade, the S/2 level, the S/1 level); None: as in training."""
        head, trained = self.PASSES_EVAL[key]
        if getattr(self.net.T_ab, head) is None:
            raise ValueError(f"{key}={passes}: this model was trained without that level (model.{trained} = 0)")
        if passes is not None and passes < 1:
            raise ValueError(f"{key} must be >= 1 (or null), got {passes}")
        for t in (self.net.T_ab, self.net.T_ba):
            t.set_passes_eval(head, passes)
        setattr(self.cfg.model.affine, key.split(".", 1)[1], passes)

    def inference_passes(self) -> dict[str, int]:
        """The passes the affine stage runs at inference (a benchmark's ``meta``): each level's, 0 for a
        level the model has not, and the symmetric passes of the affine and non-rigid stages (the MI-CNN: its
        cascade's passes)."""
        if not isinstance(self.net, FIRENet):
            return {"nonrigid_passes_eval": self.net.unet.passes_eval}
        t = self.net.T_ab
        return {"affine_passes_eval": t.passes_eval["affine"], "affine_fine_passes_eval": t.passes_eval["affine_fine"],
                "affine_full_passes_eval": t.passes_eval["affine_full"],
                "affine_symmetric_passes_eval": self.net.affine_symmetric_passes_eval,
                "nonrigid_symmetric_passes_eval": self.net.nonrigid_symmetric_passes_eval}

    def set_nonrigid_passes_eval(self, passes: int | None) -> None:
        """The U-Net T_nr's cascade passes at inference on a trained model (None: as in training)."""
        heads = self.net.nonrigid_heads()
        if not all(hasattr(h, "passes_eval") for h in heads):
            raise ValueError(f"nonrigid.passes_eval={passes}: this model's T_nr has no cascade (model.nonrigid.head "
                             f"= {self.cfg.model.nonrigid.head!r})")
        if passes is not None and passes < 1:
            raise ValueError(f"nonrigid.passes_eval must be >= 1 (or null), got {passes}")
        for h in heads:
            h.passes_eval = int(passes) if passes is not None else h.passes
        self.cfg.model.nonrigid.passes_eval = passes

    def set_nonrigid_symmetric_passes_eval(self, passes: int) -> None:
        """The opposite U-Net T_nr's passes of the symmetric non-rigid estimate on a trained FIRE (0: off;
        :meth:`nets.fire.FIRENet.symmetric_nonrigid`)."""
        if not all(hasattr(h, "passes_eval") for h in self.net.nonrigid_heads()):
            raise ValueError(f"nonrigid.symmetric_passes_eval={passes}: this model's T_nr is not a U-Net "
                             f"(model.nonrigid.head = {self.cfg.model.nonrigid.head!r})")
        if passes is None or int(passes) < 0:
            raise ValueError(f"nonrigid.symmetric_passes_eval must be >= 0 (0: off), got {passes}")
        self.net.nonrigid_symmetric_passes_eval = int(passes)
        self.cfg.model.nonrigid.symmetric_passes_eval = int(passes)

    @torch.no_grad()
    def register(self, moving: torch.Tensor, fixed: torch.Tensor, refine: RefineSettings | None = None,
                 progress: bool = False) -> dict[str, torch.Tensor]:
        """Inference (§3.4): ``moving, fixed (B,1,*S)`` in [-1, 1] → fields and warped images.

        Args:
            refine: FIRE+IO (:mod:`.refine`): that many steps of per-pair optimisation from the
                network's transform; None or 0 steps: the network's output, bit for bit.
            progress: a progress bar over the refinement steps.

        Returns:
            ``field`` / ``affine_field`` ``(B,n,*S)`` normalised, ``theta`` ``(B,n,n+1)``,
            ``warped`` / ``warped_affine`` ``(B,1,*S)``, the encodings ``g_moving`` / ``g_fixed``, and
            ``transform`` (the :class:`nets.transformation.Transform`).
        """
        g_m, g_f, fine, affine = self.net.registration_encodings(moving, fixed)
        t = self.net.transform("AtoB", g_m, g_f, moving, fixed, fine, affine)
        if refine is not None and refine.steps > 0:
            t = self.refined(t, moving, fixed, refine, progress)
        shape = moving.shape[2:]
        u, af = t.field(shape), t.affine_field(shape)
        return {"field": u, "affine_field": af, "theta": t.theta, "warped": spatial.warp(moving, u),
                "warped_affine": spatial.warp(moving, af), "g_moving": g_m, "g_fixed": g_f, "transform": t}

    def refined(self, t: Transform, moving: torch.Tensor, fixed: torch.Tensor, settings: RefineSettings,
                progress: bool = False, on_step=None) -> Transform:
        """``t`` (moving → fixed) after :func:`refine.refine` on the pair; ``on_step(k, transform)`` is
        called with the transform after each step ``k`` (for refinement curves)."""
        m = self.cfg.model
        hook = None if on_step is None else (lambda k, th, raw: on_step(k, self.with_parameters(t, th, raw)))
        theta, raw, _ = refine_pair(moving, fixed, t.theta, t.nr_feat, settings, m.nonrigid.diffeomorphic,
                                    m.nonrigid.integration_steps, progress, on_step=hook)
        return self.with_parameters(t, theta, raw)

    def with_parameters(self, t: Transform, theta: torch.Tensor, raw: torch.Tensor) -> Transform:
        """``t`` with its affine ``theta`` and raw non-rigid output ``raw`` replaced."""
        return Transform(theta=theta, nr_feat=raw, disp_nr=self.net.displacement(raw), feat_affine=t.feat_affine)


class InferenceModel(Registers, nn.Module):
    """The networks of a trained run, for inference: ``cfg`` (:class:`schema.Config`), ``spacing``,
    ``label_names``, ``net``, ``iteration`` (training iterations done) and :meth:`Registers.register`."""

    def __init__(self, cfg: Config | Mapping, label_names: dict | None = None, spacing=None, iteration: int = 0):
        super().__init__()
        if not isinstance(cfg, Config):
            cfg = from_dict(cfg)  # keys renamed since it was saved: read at their new place
        self.cfg = cfg
        self.spacing = model_spacing(self.cfg, spacing)
        self.label_names = {int(k): v for k, v in (label_names or LABEL_NAMES).items()}
        self.net = build_net(self.cfg, self.spacing)
        self.iteration = int(iteration)


def read_checkpoint(checkpoint: str | Path, map_location: str = "cpu") -> dict:
    """A ``fire train`` checkpoint's contents, with a clear error if the file is missing or not one."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable fire-lightning checkpoint ({describe_error(e)})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "cfg" not in ckpt.get("hyper_parameters", {}):
        raise ValueError(f"{path}: not a fire-lightning checkpoint (no state_dict or hyper_parameters.cfg)")
    return ckpt


def load_model(checkpoint: str | Path, map_location: str = "cpu") -> InferenceModel:
    """The networks of a ``fire train`` checkpoint as an :class:`InferenceModel` (eval mode), without lightning."""
    ckpt = read_checkpoint(checkpoint, map_location)
    hp = ckpt["hyper_parameters"]
    try:
        model = InferenceModel(hp["cfg"], hp.get("label_names"), hp.get("spacing"), iteration=0)
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        model.net.load_state_dict(state)
    except Exception as e:
        raise ValueError(f"{checkpoint}: not a readable fire-lightning checkpoint ({describe_error(e)})") from None
    n_opt = len(model.net.parameter_groups())
    model.iteration = int(ckpt.get("global_step", 0)) // n_opt
    return model.eval()
