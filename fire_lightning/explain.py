"""ExFIRE explainability: Grad-CAM for every FIRE component, and measures of what the maps show.

Class-activation maps (ReLU'd and upsampled to the image grid) on G, on T_af and T_nr of both
directions, and on D^A and D^B (ExFIRE §3; docs/method.md).
Registration has no class score, so the explained scalar is named per component
(:class:`schema.ExplainSettings`, config ``explain.*``):

* ``displacement``: mean ‖φ(p) − p‖ of the hybrid field φ = φ_af ∘ φ_nr (normalised units),
  optionally over the fixed image's labels ``explain.region`` only (default for G and T_nr);
* ``nonrigid``: the same for φ_nr alone;
* ``affine``: ‖θ − [I | 0]‖_F, the affine part's deviation from identity (default for T_af);
* ``realness``: the mean PatchGAN score of a discriminator (default for D); ``fakeness``: minus it.

Which layer (``explain.layer = "feature"``, default): each component's last convolutional
*block*: G's last ResBlock (its output is G(x)), T_af's last convolution, T_nr's last block before its
field layer (the paper's head: its ResBlock; the U-Net: its last decoder block) and, for D, the
instance norm after its last feature convolution. Not the bare convolution: in G, the paper's T_nr
and D each is followed by an instance norm, whose output does not change
when a constant is added to a channel, so the gradient reaching the convolution averages to zero
over space in every channel, Grad-CAM's channel weights (those averages) vanish, and the map is
float round-off. ``"output"`` takes the literal last convolution where that is an output
projection (T_nr's displacement head, D's one-channel patch scores): Grad-CAM there reproduces
the output itself (for D, the ReLU'd patch-score map); it is there to compare.

Which method (``explain.method_*``): Grad-CAM (Captum ``LayerGradCam``, ExFIRE's) for T_af, T_nr
and D; **HiResCAM** (ReLU(Σ_c ∂y/∂A_c ⊙ A_c), Captum ``LayerGradientXActivation``) for G by
default. The same instance-norm argument applies one step later to G: everything that reads
G(x) (T_af's first block, the paper's T_nr's two branches; the U-Net T_nr reads the images, not G(x))
starts with convolution + instance norm, so the
spatial mean of ∂y/∂G(x) is ~0 (:func:`pooled_gradient_ratio` ≈ 0.01–0.04 against 0.2–1 for the
other components' layers, ``tests/test_explain.py``) and Grad-CAM's map of G shows only the
zero-padded borders. HiResCAM keeps the gradient per point, so it does not average that away.

Where each map lies (``CamMap.space``), for the pair (x^A moving, x^B fixed):

* G, direction d, ``on x_A`` / ``on x_B``: G's activations of that image, in that image's space;
* T^{A→B} (T_af, T_nr): B's space, shown over x^B; T^{B→A}: A's space, over x^A (T_af's
  activations are a joint function of both images' features; they are shown over the
  direction's fixed image, as ExFIRE Fig. 3 centres them);
* D^A on x^A∘φ_af^{A→B} (real, rigid), x^A∘φ^{A→B} (real, non-rigid), x̂^A = F^{B→A}(G(x^B))
  (synthetic); D^B on x^B (real), F^{A→B}(G(x^A)∘φ_af^{A→B}) (synthetic, rigid) and
  F^{A→B}(G(x^A)∘φ^{A→B}) (synthetic, non-rigid): all six in B's space, so a real and a
  synthetic image of one modality should show the same anatomy when the registration is right.

Beyond the paper (its own open checks, made measurable): :func:`structure_share` (share of a
map's mass inside each labelled structure), :func:`symmetry` (A→B map against the B→A map
carried into B's space by φ^{A→B}: the inverse-consistency claim), :func:`js_divergence` between
a discriminator's maps of the real and the synthetic image (:data:`DIVERGENCE_PAIRS`), whose
correlation with registration error across test pairs :func:`correlation` measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam, LayerGradientXActivation
from torch import nn

from . import spatial
from .nets.fire import FIRENet
from .schema import ExplainSettings  # noqa: F401 (what explain_pair reads; re-exported)

COMPONENTS = ("G", "T_af", "T_nr", "D_A", "D_B")
#: per discriminator: (real map, synthetic map) names compared by :func:`js_divergence`; the
#: non-rigid pair tracks FIRE's registration, the rigid one FIRE-Affine's.
DIVERGENCE_PAIRS = {
    "D_A": {"nonrigid": ("D_A/real_nonrigid", "D_A/synth"), "rigid": ("D_A/real_rigid", "D_A/synth")},
    "D_B": {"nonrigid": ("D_B/real", "D_B/synth_nonrigid"), "rigid": ("D_B/real", "D_B/synth_rigid")},
}
_EPS = 1e-12


@dataclass
class CamMap:
    """One Grad-CAM map.

    Attributes:
        component: ``G``, ``T_af``, ``T_nr``, ``D_A`` or ``D_B``.
        direction: ``AtoB`` / ``BtoA`` for G and T, ``""`` for D.
        image: what the map is over (``x_A``, ``x_B``, ``real``, ``synth_rigid``, ...).
        space: ``"A"`` or ``"B"``, the grid the map and ``background`` lie in.
        cam: ``(B, 1, *S)`` non-negative Grad-CAM, on the image grid.
        background: ``(B, 1, *S)`` the image shown under it.
        scalar: ``(B,)`` the value explained.
    """

    component: str
    direction: str
    image: str
    space: str
    cam: torch.Tensor
    background: torch.Tensor
    scalar: torch.Tensor

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.component, self.direction, self.image) if p)


# ---------------------------------------------------------------------------------- Grad-CAM
def grad_cam(forward_fn, layer: nn.Module, inputs, size, method: str = "gradcam") -> torch.Tensor:
    """Class-activation map of a per-sample scalar with respect to ``layer``'s output, on the image grid.

    Args:
        forward_fn: ``(*inputs) -> (B,)``, the scalar explained.
        layer: a module ``forward_fn`` calls exactly once (Captum keeps the last call only).
        inputs: a tensor or tuple of tensors, batch first.
        size: the spatial shape ``S`` to upsample to (bilinear / trilinear).
        method: ``"gradcam"``: Captum's ``LayerGradCam``, ReLU(Σ_c mean_p(∂y/∂A_c) A_c);
            ``"hirescam"``: the same without the spatial mean of the gradient,
            ReLU(Σ_c ∂y/∂A_c ⊙ A_c) (Captum's ``LayerGradientXActivation`` summed over channels).

    Returns:
        ``(B', 1, *S)``, ``B'`` the layer's batch (which may differ from the inputs', e.g. when
        one call encodes two images).
    """
    if method == "gradcam":
        cam = LayerGradCam(forward_fn, layer).attribute(inputs, relu_attributions=True)
    elif method == "hirescam":
        cam = torch.relu(LayerGradientXActivation(forward_fn, layer).attribute(inputs).sum(1, keepdim=True))
    else:
        raise ValueError(f"unknown method {method!r}; choose gradcam or hirescam")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cam.dim() - 2]
    return LayerAttribution.interpolate(cam.detach(), tuple(int(s) for s in size), interpolate_mode=mode).clamp_min(0)


def pooled_gradient_ratio(forward_fn, layer: nn.Module, inputs) -> float:
    """How much of the gradient survives Grad-CAM's spatial mean: the median over samples and
    channels of ``|mean_p ∂y/∂A_c| / mean_p |∂y/∂A_c|`` (1: uniform gradients; ~0: Grad-CAM's
    weights vanish and its map is round-off, the case of a layer read through instance norm)."""
    grad = LayerGradientXActivation(forward_fn, layer, multiply_by_inputs=False).attribute(inputs).detach()
    g = grad.flatten(2)
    return float((g.mean(2).abs() / g.abs().mean(2).clamp_min(1e-30)).median())


def _norm(u: torch.Tensor) -> torch.Tensor:
    """``(B, n, *S)`` → ``(B, 1, *S)`` Euclidean norm with a finite gradient at 0."""
    return torch.sqrt(u.pow(2).sum(1, keepdim=True) + _EPS)


def region_mask(fixed_label: torch.Tensor | None, region) -> torch.Tensor | None:
    """``(B, 1, *S)`` float mask of the fixed labels in ``region`` (None: every point)."""
    if fixed_label is None or not region:
        return None
    mask = torch.zeros_like(fixed_label, dtype=torch.float32)
    for v in region:
        mask = mask + (fixed_label == int(v)).float()
    return mask.clamp(max=1)


def transform_scalar(net: FIRENet, direction: str, g_a: torch.Tensor, g_b: torch.Tensor, kind: str,
                     shape, mask: torch.Tensor | None = None, images: tuple | None = None) -> torch.Tensor:
    """The scalar explained for a transformation: ``(B,)``.

    Args:
        direction: ``AtoB`` (T^{A→B}(G_A, G_B)) or ``BtoA``.
        g_a, g_b: ``(B, C, *S/4)`` encodings.
        kind: ``displacement``, ``nonrigid`` or ``affine``.
        shape: image grid ``S``; mask: ``(B, 1, *S)`` or None (mean over the mask's points).
        images: ``(x_a, x_b)``, the encoded images (for a model whose T_af starts from their moments).
    """
    x_a, x_b = images if images is not None else (None, None)
    t = net.transform("AtoB", g_a, g_b, x_a, x_b) if direction == "AtoB" else net.transform("BtoA", g_b, g_a, x_b, x_a)
    if kind == "affine":
        n = t.theta.shape[1]
        eye = torch.eye(n, n + 1, dtype=t.theta.dtype, device=t.theta.device)
        return (t.theta - eye).flatten(1).norm(dim=1)
    u = t.field(shape) if kind == "displacement" else spatial.resize_field(t.disp_nr, shape)
    mag = _norm(u)
    if mask is None:
        return mag.flatten(1).mean(1)
    # an empty region gives 0 here (and an all-zero map); explain_pair reports its scalar as NaN
    return (mag * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def cam_layer(net: FIRENet, component: str, direction: str = "AtoB", layer: str = "feature") -> nn.Module:
    """The module whose output a component's Grad-CAM uses (module docstring)."""
    if component == "G":  # with model.affine.encoder=frozen, the copy of G that the affine stage reads
        return (net.G_affine if net.reads_affine_copy else net.G).gradcam_layer
    t = net.T_ab if direction == "AtoB" else net.T_ba
    if component == "T_af":
        return t.affine.gradcam_layer
    if component == "T_nr":
        return t.nonrigid.last_conv if layer == "output" else t.nonrigid.gradcam_layer
    if component in ("D_A", "D_B"):
        d = net.D_a if component == "D_A" else net.D_b
        return d.last_conv if layer == "output" else d.gradcam_layer
    raise ValueError(f"unknown component {component!r}; choose one of {COMPONENTS}")


# ---------------------------------------------------------------------------------- all maps
@torch.no_grad()
def _discriminator_inputs(net: FIRENet, x_a, x_b, g_a, g_b) -> dict[str, torch.Tensor]:
    """The images each discriminator is explained on (module docstring), each ``(B, 1, *S)`` in B's space."""
    shape, fshape = x_a.shape[2:], g_a.shape[2:]
    t = net.transform("AtoB", g_a, g_b, x_a, x_b)
    return {
        "D_A/real_rigid": spatial.warp(x_a, t.affine_field(shape)),
        "D_A/real_nonrigid": spatial.warp(x_a, t.field(shape)),
        "D_A/synth": net.F_ba(g_b),
        "D_B/real": x_b,
        "D_B/synth_rigid": net.F_ab(t.feat_affine),
        "D_B/synth_nonrigid": net.F_ab(spatial.warp(g_a, t.field(fshape))),
    }


def discriminator_scalar(disc: nn.Module, x: torch.Tensor, kind: str = "realness") -> torch.Tensor:
    """A discriminator's explained scalar ``(B,)``: its mean patch score (``realness``) or minus it (``fakeness``)."""
    score = disc(x).flatten(1).mean(1)
    return score if kind == "realness" else -score


#: explain_pair's default settings: one instance, made once (as the default argument it replaces was)
_DEFAULT_SETTINGS = ExplainSettings()


def explain_pair(net: FIRENet, x_a: torch.Tensor, x_b: torch.Tensor, settings: ExplainSettings = _DEFAULT_SETTINGS,
                 fixed_label: torch.Tensor | None = None, moving_label: torch.Tensor | None = None
                 ) -> dict[str, CamMap]:
    """Every map of a batch of pairs (x^A moving, x^B fixed), keyed by :attr:`CamMap.name`.

    The caller puts ``net`` in eval mode; parameters and their ``.grad`` are left untouched
    (Captum differentiates with ``torch.autograd.grad`` with respect to activations only).

    Args:
        x_a, x_b: ``(B, 1, *S)`` in [-1, 1].
        fixed_label, moving_label: ``(B, 1, *S)`` labels of x^B and x^A, needed only for
            ``settings.region`` (A→B averages over x^B's region, B→A over x^A's). A pair whose
            labels lack the region gets a NaN scalar and all-zero maps for that direction.

    Raises:
        ValueError: ``settings.region`` without both label maps.
    """
    b, shape = x_a.shape[0], x_a.shape[2:]
    if settings.region and (fixed_label is None or moving_label is None):
        raise ValueError(f"explain.region={list(settings.region)} needs the labels of both images (each "
                         "direction's displacement is averaged over its own fixed image's region)")
    scal = {"G": settings.scalar_G, "T_af": settings.scalar_T_af, "T_nr": settings.scalar_T_nr}
    method = {"G": settings.method_G, "T_af": settings.method_T_af, "T_nr": settings.method_T_nr}
    maps: dict[str, CamMap] = {}
    with torch.no_grad():
        g_a, g_b = net.G(torch.cat([x_a, x_b])).split(b)
    with torch.enable_grad():
        for direction in ("AtoB", "BtoA"):
            mask = region_mask(fixed_label if direction == "AtoB" else moving_label, settings.region)
            empty = torch.zeros(b, dtype=torch.bool, device=x_a.device) if mask is None else mask.flatten(1).sum(1) == 0
            fixed, fixed_space = (x_b, "B") if direction == "AtoB" else (x_a, "A")
            # the closures below (noqa: B023) are only called within this iteration, by grad_cam and explained(...)
            # right here, so the loop variables they read (empty, direction, mask) are this iteration's

            def explained(value: torch.Tensor) -> torch.Tensor:
                return torch.where(empty, torch.full_like(value, float("nan")), value.detach())  # noqa: B023

            def through_g(xa, xb, kind=scal["G"]):
                ga, gb = net.G(torch.cat([xa, xb])).split(xa.shape[0])
                return transform_scalar(net, direction, ga, gb, kind, shape, mask, (xa, xb))  # noqa: B023

            cam = grad_cam(through_g, cam_layer(net, "G"), (x_a, x_b), shape, method["G"])
            value = explained(through_g(x_a, x_b))
            for img, part, space in (("x_A", cam[:b], "A"), ("x_B", cam[b:], "B")):
                maps[f"G/{direction}/{img}"] = CamMap("G", direction, img, space, part, x_a if space == "A" else x_b,
                                                      value)
            for comp in ("T_af", "T_nr"):
                def through_t(ga, gb, kind=scal[comp]):
                    return transform_scalar(net, direction, ga, gb, kind, shape, mask, (x_a, x_b))  # noqa: B023

                cam = grad_cam(through_t, cam_layer(net, comp, direction, settings.layer), (g_a, g_b), shape,
                               method[comp])
                if cam.shape[0] == 2 * b:  # a T_af head that encodes both images in one call (match,
                    # keypoints): its last pass sees the warped moving and the fixed features, both on
                    # the fixed grid; the map is their sum
                    cam = cam[:b] + cam[b:]
                key = f"{comp}/{direction}/on_x_{fixed_space}"
                maps[key] = CamMap(comp, direction, f"on_x_{fixed_space}", fixed_space, cam, fixed,
                                   explained(through_t(g_a, g_b)))
        if net.D_a is not None:
            images = _discriminator_inputs(net, x_a, x_b, g_a, g_b)
            for comp, disc in (("D_A", net.D_a), ("D_B", net.D_b)):
                names = [k for k in images if k.startswith(comp)]
                batch = torch.cat([images[k] for k in names])

                def scalar(x, disc=disc):
                    return discriminator_scalar(disc, x, settings.scalar_D)

                cam = grad_cam(scalar, cam_layer(net, comp, layer=settings.layer), batch, shape, settings.method_D)
                score = scalar(batch).detach()
                for i, k in enumerate(names):
                    sl = slice(i * b, (i + 1) * b)
                    maps[k] = CamMap(comp, "", k.split("/", 1)[1], "B", cam[sl], images[k], score[sl])
    return maps


# ---------------------------------------------------------------------------------- measures
def structure_share(cam: torch.Tensor, labels: torch.Tensor, label_names: dict) -> dict[str, torch.Tensor]:
    """Share of each map's mass inside each structure: ``{name: (B,)}`` in [0, 1].

    ``cam``, ``labels``: ``(B, 1, *S)`` on the same grid. NaN for an all-zero map. The share a
    map spread evenly would have is the structure's area fraction (:func:`area_fraction`).
    """
    cam = unit_max(cam).double()
    total = cam.flatten(1).sum(1)
    out = {}
    for value, name in label_names.items():
        inside = (cam * (labels == int(value))).flatten(1).sum(1)
        out[name] = torch.where(total > 0, inside / total.clamp_min(_EPS), torch.full_like(total, float("nan"))).float()
    return out


def area_fraction(labels: torch.Tensor, label_names: dict) -> dict[str, torch.Tensor]:
    """Each structure's share of the grid, ``{name: (B,)}``: the share of a uniform map."""
    return {name: (labels == int(v)).flatten(1).float().mean(1) for v, name in label_names.items()}


def unit_max(cam: torch.Tensor) -> torch.Tensor:
    """Each sample's map divided by its maximum (``(B, ...)``, in [0, 1]; an all-zero map stays 0).

    Grad-CAM's scale is that of ∂scalar/∂activation (often ~1e-10 for a mean over every point);
    figures, NIfTI outputs and every measure here use maps scaled to a maximum of 1.
    """
    top = cam.flatten(1).amax(1).view(-1, *([1] * (cam.dim() - 1)))
    return torch.where(top > 0, cam / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(cam))


def _pearson(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted Pearson correlation per sample; ``(B, N)`` each → ``(B,)`` (NaN if one is constant)."""
    a, b = unit_max(a).double(), unit_max(b).double()
    w = weight.double() / weight.double().sum(1, keepdim=True).clamp_min(_EPS)
    ma, mb = (w * a).sum(1, keepdim=True), (w * b).sum(1, keepdim=True)
    cov = (w * (a - ma) * (b - mb)).sum(1)
    var = (w * (a - ma) ** 2).sum(1) * (w * (b - mb) ** 2).sum(1)
    return torch.where(var > 1e-20, cov / var.clamp_min(1e-20).sqrt(), torch.full_like(cov, float("nan"))).float()


def symmetry(cam_ab: torch.Tensor, cam_ba: torch.Tensor, u_ab: torch.Tensor) -> torch.Tensor:
    """Agreement of one component's A→B and B→A maps: ``(B,)`` Pearson correlation in [-1, 1].

    ``cam_ab`` lies in B's space, ``cam_ba`` in A's; the latter is carried into B's space by
    φ^{A→B} (``cam_ba ∘ φ^{A→B}``, ``u_ab`` ``(B, n, *S)`` normalised) and compared over the
    points φ^{A→B} keeps inside the grid. An inverse-consistent model that attends to the same
    anatomy in both directions scores 1.
    """
    carried = spatial.warp(cam_ba, u_ab, padding_mode="zeros")
    inside = ((spatial.identity_grid(u_ab.shape[2:], u_ab.device, u_ab.dtype) + u_ab).abs() <= 1).all(1)
    return _pearson(cam_ab.flatten(1), carried.flatten(1), inside.flatten(1).float())


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence (nats, in [0, ln 2]) between two maps read as distributions: ``(B,)``.

    ``p``, ``q``: ``(B, 1, *S)`` non-negative. NaN where either map is all zero (nothing to compare).
    """
    def dist(m):
        m = unit_max(m.flatten(1).double())
        return m / m.sum(1, keepdim=True).clamp_min(_EPS)

    zero = (p.flatten(1).amax(1) <= 0) | (q.flatten(1).amax(1) <= 0)
    p, q = dist(p), dist(q)
    mid = (p + q) / 2

    def kl(a, b):
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - b.clamp_min(1e-300).log()),
                           torch.zeros_like(a)).sum(1)

    js = ((kl(p, mid) + kl(q, mid)) / 2).float()
    return torch.where(zero, torch.full_like(js, float("nan")), js)


#: per component, the A→B map (B's space) and the B→A map (A's space) :func:`symmetry` compares:
#: each direction's map over its own fixed image.
SYMMETRIC_MAPS = {"G": ("G/AtoB/x_B", "G/BtoA/x_A"),
                  "T_af": ("T_af/AtoB/on_x_B", "T_af/BtoA/on_x_A"),
                  "T_nr": ("T_nr/AtoB/on_x_B", "T_nr/BtoA/on_x_A")}


def pair_measures(maps: dict[str, CamMap], u_ab: torch.Tensor, labels: dict[str, torch.Tensor | None],
                  label_names: dict) -> dict[str, torch.Tensor]:
    """Per-pair measures, flat ``{key: (B,)}``.

    Keys: ``share/<map>/<structure>`` (when that space's labels are given), ``area/<space>/<structure>``,
    ``symmetry/<component>``, ``divergence/<D>/<rigid|nonrigid>`` (when the model has discriminators).

    Args:
        labels: ``{"A": (B,1,*S) or None, "B": ...}`` label maps of x^A and x^B.
    """
    out: dict[str, torch.Tensor] = {}
    for space, lab in labels.items():
        if lab is None:
            continue
        for name, v in area_fraction(lab, label_names).items():
            out[f"area/{space}/{name}"] = v
    for key, m in maps.items():
        lab = labels.get(m.space)
        if lab is not None:
            for name, v in structure_share(m.cam, lab, label_names).items():
                out[f"share/{key}/{name}"] = v
    for comp, (ab, ba) in SYMMETRIC_MAPS.items():
        out[f"symmetry/{comp}"] = symmetry(maps[ab].cam, maps[ba].cam, u_ab)
    for comp, kinds in DIVERGENCE_PAIRS.items():
        for kind, (real, synth) in kinds.items():
            if real in maps:
                out[f"divergence/{comp}/{kind}"] = js_divergence(maps[real].cam, maps[synth].cam)
    return out


@dataclass
class Correlation:
    """Rank and linear correlation of two per-pair series."""

    n: int
    spearman: float
    spearman_p: float
    pearson: float
    pearson_p: float
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)


def correlation(x, y) -> Correlation:
    """Spearman and Pearson correlation (SciPy) of paired values, NaN pairs dropped; NaN below 3 pairs
    or for a constant series."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        nan = float("nan")
        return Correlation(int(len(x)), nan, nan, nan, nan, x.tolist(), y.tolist())
    s, p = stats.spearmanr(x, y)
    r, pr = stats.pearsonr(x, y)
    return Correlation(int(len(x)), float(s), float(p), float(r), float(pr), x.tolist(), y.tolist())


def carry_to_fixed(m: CamMap, u_ab: torch.Tensor) -> torch.Tensor:
    """A map in B's space as is; one in A's space carried by φ^{A→B} (``cam ∘ φ^{A→B}``): ``(B, 1, *S)``."""
    return m.cam if m.space == "B" else spatial.warp(m.cam, u_ab, padding_mode="zeros")
