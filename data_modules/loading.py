"""Shared by the data modules: choosing evaluation items, pair dicts → batches, DataLoaders."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def spread(items: list[int], count: int) -> list[int]:
    """``count`` items evenly spread over ``items`` (all of them if fewer)."""
    if count <= 0 or count >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


def _worker_init(worker_id: int) -> None:
    """One thread per loader worker: the training process already uses the cores."""
    import SimpleITK as sitk

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def collate_pairs(items: list[dict]) -> dict:
    """Stack pair dicts into a batch (``id`` stays a list of str)."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("moving", "fixed", "moving_label", "fixed_label")}
    out["id"] = [it["id"] for it in items]
    return out


def make_loader(cfg, dataset: Dataset, shuffle: bool = False) -> DataLoader:
    """A DataLoader of pair dicts for the ``data`` config ``cfg`` (batch size, workers)."""
    w = int(cfg.num_workers)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=w, collate_fn=collate_pairs,
                      persistent_workers=w > 0, worker_init_fn=_worker_init if w > 0 else None)
