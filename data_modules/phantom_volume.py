"""The embedded multi-modal brain phantom, built from the MNI152 2009 template that ships
inside nilearn (no download: the default dataset works offline).

Modalities (all on the template's 1 mm RAS grid, 197×233×189):

* ``T1``: the real template intensities.
* ``FLAIR``: synthesised from the tissue maps. CSF dark, grey matter brighter than white
  matter (T1 has WM > GM > CSF), so the T1 → FLAIR intensity relation is non-linear and
  non-monotonic; non-brain tissue keeps a damped copy of T1.
* ``IR``: synthesised likewise with CSF bright, WM dark, GM in between.

A smooth multiplicative bias field (random low-order polynomial) and Gaussian noise are added
to each synthesised modality, seeded.

Labels (the rule): inside the brain mask (> 0.5), CSF probability = ``1 - gm - wm``
(clipped at 0); the label is the arg-max of (CSF, GM, WM) + 1 → 1 CSF, 2 GM, 3 WM;
0 background outside the mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

LABEL_NAMES = {1: "CSF", 2: "GM", 3: "WM"}
MODALITIES = ("T1", "FLAIR", "IR")

# Mean intensity per tissue (CSF, GM, WM) of the synthesised modalities, in [0, 1].
_TISSUE_MEANS = {"FLAIR": (0.08, 0.80, 0.50), "IR": (0.85, 0.40, 0.12)}
_NONBRAIN_GAIN = {"FLAIR": 0.45, "IR": 0.30}


@dataclass(frozen=True)
class PhantomVolume:
    """Volumes on the template grid. ``images[m]``: float32 (X, Y, Z) in [0, 1];
    ``tissue``: float32 (3, X, Y, Z) probabilities of CSF, GM, WM; ``labels``: uint8 (X, Y, Z);
    ``mask``: bool brain mask; ``affine``: 4×4 voxel → RAS mm."""

    images: dict
    tissue: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def _bias_field(shape, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field ``exp(sum c_ijk x^i y^j z^k)``, degree ≤ 2, coordinates in [-1, 1]."""
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    log_field = np.zeros(shape, dtype=np.float32)
    for i, j, k in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (0, 1, 1)]:
        log_field += rng.uniform(-strength, strength) * (x**i) * (y**j) * (z**k)
    return np.exp(log_field)


@functools.lru_cache(maxsize=4)
def build_phantom(seed: int = 0, noise_std: float = 0.02, bias_strength: float = 0.15) -> PhantomVolume:
    """Build the phantom (about 3 s; cached per process).

    Args:
        seed: seed of the bias fields and noise.
        noise_std: Gaussian noise std on the synthesised modalities (intensity units of [0, 1]).
        bias_strength: amplitude of the log bias field's polynomial coefficients.
    """
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    t1 = np.clip(t1 / np.percentile(t1[t1 > 0], 99.5), 0, 1)

    gm = np.clip(gm, 0, 1) * mask
    wm = np.clip(wm, 0, 1) * mask
    csf = np.clip(1 - gm - wm, 0, 1) * mask
    tissue = np.stack([csf, gm, wm]).astype(np.float32)
    labels = np.where(mask, tissue.argmax(0) + 1, 0).astype(np.uint8)

    rng = np.random.default_rng(seed)
    images = {"T1": t1}
    for name, means in _TISSUE_MEANS.items():
        brain = sum(m * p for m, p in zip(means, tissue))
        img = np.where(mask, brain, _NONBRAIN_GAIN[name] * t1)
        img = img * _bias_field(t1.shape, rng, bias_strength)
        img = img + rng.normal(0, noise_std, t1.shape).astype(np.float32) * (t1 > 0.02)
        images[name] = np.clip(img, 0, 1).astype(np.float32)
    return PhantomVolume(images=images, tissue=tissue, labels=labels, mask=mask, affine=np.asarray(t1_img.affine))
