"""Centre crop / zero pad of arrays to a model grid's size, shared by the data modules."""

from __future__ import annotations

import numpy as np
import torch


def fit_tensor(arr: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop or zero-pad the leading ``len(size)`` axes of ``arr`` to ``size``."""
    for ax, target in enumerate(size):
        cur = arr.shape[ax]
        if cur > target:
            start = (cur - target) // 2
            arr = arr.narrow(ax, start, target)
        elif cur < target:
            before = (target - cur) // 2
            pad_shape = list(arr.shape)
            pad_shape[ax] = before
            a = torch.zeros(pad_shape, dtype=arr.dtype)
            pad_shape[ax] = target - cur - before
            b = torch.zeros(pad_shape, dtype=arr.dtype)
            arr = torch.cat([a, arr, b], dim=ax)
    return arr


def fit(arr: np.ndarray, size) -> np.ndarray:
    """:func:`fit_tensor` of a numpy array."""
    return fit_tensor(torch.from_numpy(np.ascontiguousarray(arr)), list(size)).numpy()
