"""The benchmark's example figure: one row per orthogonal view in 3D, the 2D layout unchanged."""

import torch
from matplotlib.colors import to_rgba

from fire_lightning import viz


def _example(shape):
    n = len(shape)
    label = torch.zeros(1, *shape, dtype=torch.long)
    label[(0, *[slice(s // 4, 3 * s // 4) for s in shape])] = 1
    image = label.float() * 2 - 1
    return {"moving": image, "fixed": image, "fixed_label": label, "moving_label": label, "id": "pair-0",
            "fields": {"Unaligned": None, "A": torch.zeros(n, *shape), "B": torch.full((n, *shape), 0.1)}}


def test_mid_slice_takes_the_middle_across_the_asked_axis():
    x = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(1, 4, 6, 8)
    assert viz.mid_slice(x).shape == (4, 6)
    assert viz.mid_slice(x, 0).shape == (6, 8) and (viz.mid_slice(x, 0) == x[0, 2].numpy()).all()
    assert (viz.mid_slice(x, 1) == x[0, :, 3].numpy()).all()


def test_3d_panel_has_a_row_per_view_and_draws_the_warped_moving_labels():
    fig = viz.method_panel(_example((12, 14, 10)))
    axes = fig.get_axes()
    assert len(axes) == len(viz.VIEWS_3D) * 4  # moving, fixed and the two methods with a field
    orange = to_rgba("tab:orange")
    drawn = [ax for ax in axes if any(len(c.get_edgecolor()) and tuple(c.get_edgecolor()[0]) == orange
                                      for c in ax.collections)]
    assert len(drawn) == len(viz.VIEWS_3D) * 3, "the moving labels, and each method's warp of them, are drawn"
    assert "moving labels" in fig._suptitle.get_text()


def test_2d_panel_keeps_images_over_grids():
    fig = viz.method_panel(_example((16, 18)))
    assert len(fig.get_axes()) == 2 * 4
