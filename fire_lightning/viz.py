"""Figures: image panels and deformation grids (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import spatial  # noqa: E402


def mid_slice(x: torch.Tensor, axis: int = 2) -> np.ndarray:
    """``(C, *S)`` or ``(*S)`` → 2D array, first channel; in 3D the middle slice across spatial ``axis``
    (2, the last: axial for RAS arrays; 1: coronal; 0: sagittal)."""
    x = x.detach().float().cpu()
    if x.dim() in (3, 4) and x.shape[0] <= 3 and x.dim() - 1 in (2, 3):
        x = x[0]
    if x.dim() == 3:
        x = x.select(axis, x.shape[axis] // 2)
    return x.numpy()


def field_slice(u: torch.Tensor) -> np.ndarray:
    """Normalised displacement ``(n, *S)`` → in-plane components ``(2, H, W)`` in voxels (middle slice in 3D)."""
    vox = spatial.normalised_to_voxel(u.detach().float().cpu()[None])[0]
    if vox.shape[0] == 3:
        vox = vox[:2, :, :, vox.shape[3] // 2]
    return vox.numpy()


def draw_grid(ax, u_vox: np.ndarray, step: int = 4, color: str = "tab:orange") -> None:
    """Draw the deformed regular grid of ``phi(p) = p + u(p)`` (``u_vox`` ``(2, H, W)``, voxels)."""
    h, w = u_vox.shape[1:]
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pi, pj = ii + u_vox[0], jj + u_vox[1]
    for r in range(0, h, step):
        ax.plot(pi[r, :], pj[r, :], color=color, lw=0.6)
    for c in range(0, w, step):
        ax.plot(pi[:, c], pj[:, c], color=color, lw=0.6)
    ax.set_xlim(-0.5, h - 0.5)
    ax.set_ylim(-0.5, w - 0.5)
    ax.set_aspect("equal")


def show(ax, img: np.ndarray, title: str, cmap: str = "gray", **kw) -> None:
    """Image with array axis 0 horizontal and axis 1 vertical (radiological axial view for RAS arrays)."""
    ax.imshow(img.T, cmap=cmap, origin="lower", **kw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def registration_panel(rows: list[dict], titles: list[str] | None = None, method: str = "FIRE"):
    """One row per example: moving, fixed, FIRE-Affine warped, FIRE warped, synthesised, |warped - moving|, grid
    (``method`` names the model's columns: FIRE, MI-CNN).

    Each row dict holds tensors ``moving``, ``fixed``, ``warped_affine``, ``warped`` ``(1, *S)``, optional
    ``synth`` ``(1, *S)`` and ``fixed_label`` ``(1, *S)`` (drawn as contours over the fixed and warped
    images, so misalignment shows), and ``field`` ``(n, *S)`` normalised.
    """
    cols = ["moving", "fixed", "warped_affine", "warped", "synth", "diff", "grid"]
    if not any("synth" in row for row in rows):
        cols.remove("synth")
    names = {"moving": "moving (A)", "fixed": "fixed (B)", "warped_affine": f"{method}-Affine", "warped": method,
             "synth": "synthesised B", "diff": "|warped - moving| (change)", "grid": "deformation"}
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 2.4 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, key in enumerate(cols):
            ax = axes[r, c]
            if key == "grid":
                draw_grid(ax, field_slice(row["field"]))
                ax.set_title(names[key], fontsize=9)
                ax.axis("off")
            elif key == "diff":
                show(ax, np.abs(mid_slice(row["warped"]) - mid_slice(row["moving"])), names[key], cmap="magma")
            elif key in row:
                show(ax, mid_slice(row[key]), names[key], vmin=-1, vmax=1)
                if key in ("fixed", "warped_affine", "warped") and "fixed_label" in row:
                    _contours(ax, row["fixed_label"])
            else:
                ax.axis("off")
        if titles:
            axes[r, 0].text(-0.1, 0.5, titles[r], transform=axes[r, 0].transAxes, rotation=90, va="center",
                            ha="right", fontsize=8)
    fig.tight_layout()
    return fig


#: the three orthogonal views of a 3D panel: (spatial axis sliced across, name for RAS arrays)
VIEWS_3D = ((2, "axial"), (1, "coronal"), (0, "sagittal"))


def method_panel_3d(example: dict):
    """A 3D pair, every method: one row per orthogonal view (:data:`VIEWS_3D`, middle slices), columns
    moving, fixed and each method's warped moving image, with the fixed labels (cyan) and, where
    ``example`` holds ``moving_label`` ``(1, *S)``, that method's warped moving labels (orange) as contours:
    where the two outlines part, the method left the anatomy misaligned.
    """
    methods = [m for m, u in example["fields"].items() if u is not None]
    cols = 2 + len(methods)
    warped = {}
    for m in methods:
        u = example["fields"][m][None].float()
        warped[m] = (spatial.warp(example["moving"][None].float(), u)[0],
                     spatial.warp_labels(example["moving_label"][None], u)[0] if "moving_label" in example else None)
    columns = [("moving", example["moving"], example.get("moving_label")), ("fixed", example["fixed"], None),
               *[(m, *warped[m]) for m in methods]]
    fig, axes = plt.subplots(len(VIEWS_3D), cols, figsize=(2.1 * cols, 2.3 * len(VIEWS_3D)), squeeze=False)
    for r, (axis, view) in enumerate(VIEWS_3D):
        for c, (name, image, label) in enumerate(columns):
            ax = axes[r, c]
            show(ax, mid_slice(image, axis), name if r == 0 else "", vmin=-1, vmax=1)
            _contours(ax, example["fixed_label"], axis)
            if label is not None:
                _contours(ax, label, axis, color="tab:orange")
        axes[r, 0].text(-0.08, 0.5, view, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=9)
    fig.suptitle(f"{example['id']} (cyan: fixed labels; orange: moving labels as each method warps them)", fontsize=9)
    fig.tight_layout()
    return fig


def _contours(ax, label: torch.Tensor, axis: int = 2, color: str = "tab:cyan") -> None:
    lab = mid_slice(label, axis).T
    if lab.max() > 0:
        ax.contour(lab, levels=np.arange(0.5, lab.max() + 0.5), colors=color, linewidths=0.5)


def method_panel(example: dict):
    """One pair, every method: top row moving, fixed and each method's warped moving image (fixed-label
    contours over them), bottom row each method's deformation grid. 3D: :func:`method_panel_3d`.

    ``example``: ``moving``, ``fixed``, ``fixed_label`` ``(1, *S)``; ``fields``: method → normalised
    displacement ``(n, *S)`` (None for the unaligned pair, which is the moving image itself); ``id``.
    """
    if example["moving"].dim() == 4:
        return method_panel_3d(example)
    methods = [m for m, u in example["fields"].items() if u is not None]
    cols = 2 + len(methods)
    fig, axes = plt.subplots(2, cols, figsize=(2.3 * cols, 4.9), squeeze=False)
    show(axes[0, 0], mid_slice(example["moving"]), "moving", vmin=-1, vmax=1)
    show(axes[0, 1], mid_slice(example["fixed"]), "fixed", vmin=-1, vmax=1)
    _contours(axes[0, 0], example["fixed_label"])
    _contours(axes[0, 1], example["fixed_label"])
    for ax in axes[1, :2]:
        ax.axis("off")
    for c, m in enumerate(methods, start=2):
        u = example["fields"][m]
        warped = spatial.warp(example["moving"][None].float(), u[None].float())[0]
        show(axes[0, c], mid_slice(warped), m, vmin=-1, vmax=1)
        _contours(axes[0, c], example["fixed_label"])
        draw_grid(axes[1, c], field_slice(u))
        axes[1, c].set_title(f"{m} grid", fontsize=9)
        axes[1, c].axis("off")
    fig.suptitle(f"{example['id']} (cyan: fixed labels)", fontsize=9)
    fig.tight_layout()
    return fig


#: ExFIRE's figures as rows of the Grad-CAM panel: (row title, [(map name, column title), ...]).
#: Fig. 2: G over each image, for both directions; Fig. 3: T_af and T_nr of each direction over
#: that direction's fixed image; Fig. 4: each discriminator on real and synthetic, rigid and
#: non-rigid images (all in B's space; see fire_lightning/explain.py).
GRADCAM_ROWS = (
    ("encoder G (Fig. 2)", [("G/AtoB/x_A", "G, A→B, on x^A"), ("G/BtoA/x_A", "G, B→A, on x^A"),
                            ("G/AtoB/x_B", "G, A→B, on x^B"), ("G/BtoA/x_B", "G, B→A, on x^B")]),
    ("transformation T (Fig. 3)", [("T_af/AtoB/on_x_B", "T_af A→B (over x^B)"),
                                   ("T_nr/AtoB/on_x_B", "T_nr A→B (over x^B)"),
                                   ("T_af/BtoA/on_x_A", "T_af B→A (over x^A)"),
                                   ("T_nr/BtoA/on_x_A", "T_nr B→A (over x^A)")]),
    ("discriminator D^A (Fig. 4)", [("D_A/real_rigid", "D^A real x^A∘φ_af"), ("D_A/real_nonrigid", "D^A real x^A∘φ"),
                                    ("D_A/synth", "D^A synth x̂^A")]),
    ("discriminator D^B (Fig. 4)", [("D_B/real", "D^B real x^B"), ("D_B/synth_rigid", "D^B synth, rigid"),
                                    ("D_B/synth_nonrigid", "D^B synth, non-rigid")]),
)


def overlay(ax, image: torch.Tensor, cam: torch.Tensor, title: str, alpha: float = 0.5) -> None:
    """Image ``(1, *S)`` in grey with a heat map ``(1, *S)`` (scaled to its maximum) over it."""
    show(ax, mid_slice(image), title, vmin=-1, vmax=1)
    heat = mid_slice(cam)
    top = float(heat.max())
    ax.imshow((heat / top if top > 0 else heat).T, cmap="jet", origin="lower", alpha=alpha, vmin=0, vmax=1)


def gradcam_panel(maps: dict, index: int = 0, title: str = ""):
    """The Grad-CAM maps of one pair laid out like ExFIRE Figs 2–4 (:data:`GRADCAM_ROWS`).

    ``maps``: :func:`fire_lightning.explain.explain_pair` output; ``index``: the pair in the batch.
    Rows whose maps are absent (no discriminators) are left out. Each map is scaled to its own
    maximum; the explained scalar is in the title. 3D: the middle slice of the last axis.
    """
    rows = [(name, cols) for name, cols in GRADCAM_ROWS if all(k in maps for k, _ in cols)]
    ncols = max(len(cols) for _, cols in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.3 * ncols, 2.5 * len(rows)), squeeze=False)
    for r, (row_title, cols) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(cols):
                ax.axis("off")
                continue
            key, col_title = cols[c]
            m = maps[key]
            overlay(ax, m.background[index], m.cam[index], f"{col_title}\n{float(m.scalar[index]):.3g}")
        axes[r, 0].text(-0.08, 0.5, row_title, transform=axes[r, 0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=8)
    fig.suptitle(title + ("  " if title else "") + "(Grad-CAM scaled to each map's maximum; value explained under "
                                                   "each title)", fontsize=8)
    fig.tight_layout()
    return fig
