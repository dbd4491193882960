"""The pair dicts that data modules hand to fire_lightning, and their batches.

A pair dict holds ``moving``, ``fixed`` ``(1, *S)`` float in [-1, 1], ``moving_label``,
``fixed_label`` ``(1, *S)`` int64 and ``id`` (str); evaluation pairs with a known transform also
``true_theta`` ``(n, n+1)`` and ``true_elastic`` ``(n, *S)``; training pairs whose transforms are
applied on the training device the ``aug_*`` keys (:mod:`data_modules.device_augment`).
"""

from __future__ import annotations

import torch

#: tensors every pair dict has; the known transform's keys are there only for evaluation pairs
PAIR_KEYS = ("moving", "fixed", "moving_label", "fixed_label")
TRUTH_KEYS = ("true_theta", "true_elastic")
#: training pairs' transforms still to apply on the device (their images are still in [0, 1])
AUG_KEYS = ("aug_moving_affine", "aug_moving_coef", "aug_fixed_affine", "aug_fixed_coef")


def collate_pairs(items: list[dict]) -> dict:
    """Stack pair dicts into a batch (``id`` stays a list of str); the known transform and the
    pending device transforms are kept when every pair has them."""
    keys = PAIR_KEYS + tuple(k for k in TRUTH_KEYS + AUG_KEYS if all(k in it for it in items))
    out = {k: torch.stack([it[k] for it in items]) for k in keys}
    out["id"] = [it["id"] for it in items]
    return out
