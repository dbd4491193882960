"""Registration metrics on tensors (batched); shapes ``(B, 1, *S)`` labels, ``(B, n, *S)`` fields."""

from __future__ import annotations

import torch

from . import spatial


def dice_per_label(pred: torch.Tensor, target: torch.Tensor, labels) -> torch.Tensor:
    """Dice per sample and label.

    Args:
        pred, target: integer label maps ``(B, 1, *S)``.
        labels: label values to score.

    Returns:
        ``(B, L)``; NaN where a label is absent from both maps.
    """
    out = []
    for lab in labels:
        p, t = (pred == lab).flatten(1), (target == lab).flatten(1)
        inter = (p & t).sum(1).double()
        denom = (p.sum(1) + t.sum(1)).double()
        d = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.full_like(denom, float("nan")))
        out.append(d)
    return torch.stack(out, dim=1)


def dice_by_method(lab_m: torch.Tensor, lab_f: torch.Tensor, fields: dict, label_names: dict) -> dict:
    """Dice per structure and their mean, for each way of warping the moving labels.

    Args:
        lab_m, lab_f: moving and fixed label maps ``(B, 1, *S)``.
        fields: method name → normalised displacement ``(B, n, *S)``, or None for the unwarped labels.
        label_names: label value → structure name.

    Returns:
        method → {``dice_<structure>``, ``dice_mean``} → ``(B,)``.
    """
    labels = list(label_names)
    out = {}
    for method, u in fields.items():
        warped = lab_m if u is None else spatial.warp_labels(lab_m, u)
        d = dice_per_label(warped, lab_f, labels)
        scores = {f"dice_{label_names[lab]}": d[:, i] for i, lab in enumerate(labels)}
        scores["dice_mean"] = d.nanmean(1)
        out[method] = scores
    return out


def folding_percent(disp: torch.Tensor, unit: str = "normalised") -> torch.Tensor:
    """% of voxels with Jacobian determinant <= 0, per sample ``(B,)``."""
    jac = spatial.jacobian_determinant(disp, unit=unit)
    return (jac <= 0).flatten(1).double().mean(1) * 100


def inverse_consistency_error(u_ab: torch.Tensor, u_ba: torch.Tensor, spacing) -> torch.Tensor:
    """Mean distance (mm) of ``phi^{A→B} ∘ phi^{B→A}`` from the identity, per sample ``(B,)``.

    Args:
        u_ab, u_ba: normalised displacements on the same grid ``(B, n, *S)``.
        spacing: voxel size in mm per axis.
    """
    resid = spatial.compose(u_ab, u_ba)
    mm = spatial.voxel_to_mm(spatial.normalised_to_voxel(resid), spacing)
    return mm.pow(2).sum(1).sqrt().flatten(1).mean(1)
