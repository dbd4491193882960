"""Shared by the data modules: choosing evaluation items, pair dicts → batches, DataLoaders."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fire_lightning.batches import AUG_KEYS, PAIR_KEYS, TRUTH_KEYS, collate_pairs  # noqa: F401  (re-exported)


def items_in(ranges, thickness: int) -> list[int]:
    """All item start indices ``z`` with ``[z, z + thickness)`` inside one of ``ranges`` (``[(start, stop)]``)."""
    return [z for a, b in ranges for z in range(a, b - thickness + 1)]


def spread(items: list[int], count: int) -> list[int]:
    """``count`` items evenly spread over ``items`` (all of them if fewer)."""
    if count <= 0 or count >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


def split_suggestion(counts, available: int, labelled: int | None = None) -> str:
    """The ``data.subject_split`` override that fits a partial download: ``counts`` scaled to the
    ``available`` subjects, each at least 1, validation + test within the ``labelled`` ones."""
    counts = [int(c) for c in counts]
    labelled = available if labelled is None else labelled
    if available < 3 or labelled < 2:
        return f"a split needs at least 3 subjects, 2 of them labelled; found {available} ({labelled} labelled)"
    total = sum(counts)
    val = max(1, round(counts[1] * available / total))
    test = max(1, round(counts[2] * available / total))
    while val + test > labelled or val + test > available - 1:
        if test >= val and test > 1:
            test -= 1
        elif val > 1:
            val -= 1
        else:
            break
    train = max(1, available - val - test)
    return f"to use what is there, override data.subject_split=[{train},{val},{test}]"


def train_rng(rank: int = 0) -> np.random.Generator:
    """The generator of one fresh training pair, drawn from torch's RNG (which
    ``seed_everything(workers=True)`` seeds, per loader worker too). Every DDP rank starts from the
    same seed, so ranks other than 0 mix their rank in: they draw other pairs than rank 0 (whose
    stream is the single-process one) and than each other."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng(seed if rank == 0 else [seed, int(rank)])


class RankedDraws:
    """Training-pair datasets: the DDP rank whose pairs they draw (:func:`train_rng`); 0 by default."""

    rank = 0

    def on_rank(self, rank: int):
        self.rank = int(rank)
        return self


def trainer_rank(datamodule) -> int:
    """The global rank of the trainer a data module is attached to (0 without one)."""
    trainer = getattr(datamodule, "trainer", None)
    return int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0


def _worker_init(worker_id: int) -> None:
    """One thread per loader worker: the training process already uses the cores."""
    import SimpleITK as sitk

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def pair_dict(moving: torch.Tensor, fixed: torch.Tensor, moving_label: torch.Tensor, fixed_label: torch.Tensor,
              ident: str) -> dict:
    """A pair dict: the images ``(1, *S)`` in [0, 1] clipped and mapped to [-1, 1], the labels int64."""
    return {"moving": moving.float().clamp(0, 1) * 2 - 1, "fixed": fixed.float().clamp(0, 1) * 2 - 1,
            "moving_label": moving_label.long(), "fixed_label": fixed_label.long(), "id": ident}


def transformed_pair(moving: torch.Tensor, fixed: torch.Tensor, labels: torch.Tensor, spacing, extent, augment,
                     rng_a, rng_b, ident: str, known: bool = False, device: bool = False, adjust=None) -> dict:
    """The pair dict of two registered modalities of one anatomy, each randomly transformed or not.

    Args:
        moving, fixed: ``(1, *S)`` images in [0, 1] (clipped), on the same grid; ``labels`` ``(1, *S)`` theirs.
        spacing, extent: voxel size and grid size in mm per axis.
        augment: the ``data.augment`` config.
        rng_a, rng_b: generators of the moving and the fixed image's transform; None: untransformed.
        known: evaluation pairs (moving transformed, fixed not): also return the transform a perfect
            registration undoes (reading it off TorchIO costs about twice the pair itself).
        device: sample the transforms but leave them to :func:`augment_on_device` (training pairs with
            ``data.augment.device``): the images stay untransformed, in [0, 1], with ``AUG_KEYS``.
        adjust: ``(params, rng) -> params``, applied to the moving image's drawn transform (the shift
            benchmark sets one factor of it); None: as drawn.

    Returns:
        ``moving``, ``fixed`` ``(1, *S)`` in [-1, 1], ``moving_label``, ``fixed_label`` int64, ``id``; with
        ``known``, also :class:`augment.KnownTransform`'s ``true_theta`` ``(n, n+1)``, ``true_elastic`` ``(n, *S)``.
    """
    from .augment import apply_params, known_transform, sample_params

    n = moving.dim() - 1
    lab_m, lab_f = labels.long(), labels.long().clone()
    if device:  # the same draws, in the same order, as below
        from .device_augment import device_transform

        out = {"moving": moving.float(), "fixed": fixed.float(), "moving_label": lab_m, "fixed_label": lab_f,
               "id": ident}
        for side, rng in (("moving", rng_a), ("fixed", rng_b)):
            if rng is not None:
                t = device_transform(sample_params(rng, n, extent, augment), moving.shape[1:], spacing)
                out[f"aug_{side}_affine"], out[f"aug_{side}_coef"] = t.affine, t.coefficients
        return out
    truth = None
    if rng_a is not None:
        params = sample_params(rng_a, n, extent, augment)
        if adjust is not None:
            params = adjust(params, rng_a)
        moving, lab_m = apply_params(moving, lab_m, spacing, params)
        if known and rng_b is None:
            truth = known_transform(params, spacing, moving.shape[1:])
    if rng_b is not None:
        fixed, lab_f = apply_params(fixed, lab_f, spacing, sample_params(rng_b, n, extent, augment))
    out = pair_dict(moving, fixed, lab_m, lab_f, ident)
    if truth is not None:
        out.update(true_theta=truth.theta, true_elastic=truth.elastic)
    return out


def augment_on_device(batch: dict, spacing, augment) -> dict:
    """Apply a training batch's pending transforms (``AUG_KEYS``) where the batch is, all pairs at once,
    and bring its images to [-1, 1] as :func:`transformed_pair` does; other batches pass unchanged."""
    if "aug_moving_affine" not in batch:
        return batch
    from .device_augment import DeviceTransform, apply_batch

    out = {k: v for k, v in batch.items() if k not in AUG_KEYS}
    k = int(augment.elastic_control_points)
    for side in ("moving", "fixed"):
        img, lab = out[side], out[f"{side}_label"]
        if f"aug_{side}_affine" in batch:
            t = DeviceTransform(batch[f"aug_{side}_affine"], batch[f"aug_{side}_coef"])
            img, lab = apply_batch(img, lab, t, spacing, k)
        out[side], out[f"{side}_label"] = img.float().clamp(0, 1) * 2 - 1, lab.long()
    return out


class DeviceAugmentation:
    """Data-module mixin: training batches with ``data.augment.device`` are transformed after they reach
    the training device (Lightning's ``on_after_batch_transfer``)."""

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return augment_on_device(batch, self.spacing, self.cfg.augment)


#: bytes of evaluation pairs that :class:`Memoised` keeps per process (the 2D phantom's 80 validation pairs: 12 MB)
EVAL_CACHE_BYTES = 256 << 20


def _nbytes(item: dict) -> int:
    return sum(v.numel() * v.element_size() for v in item.values() if torch.is_tensor(v))


class Memoised(Dataset):
    """A dataset whose items never change (seeded evaluation pairs), each item made once and then kept
    in memory, up to ``max_bytes`` (items beyond it are made again on every call).

    The validation pairs are the same at every validation, and making them (TorchIO, and reading off
    the known transform) ran on the loader's worker while the model validated, competing for a small
    machine's cores: on the 2-core CPU (an exploratory timing) the demo's 80 validation pairs took
    7.8-8.1 s per validation fed by the worker and 4.0-4.6 s from memory. With persistent workers
    the cache lives in the worker, which is handed the same items at every validation."""

    def __init__(self, dataset: Dataset, max_bytes: int = EVAL_CACHE_BYTES):
        self.dataset, self.max_bytes = dataset, int(max_bytes)
        self.items: dict[int, dict] = {}
        self.kept_bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if i in self.items:
            return self.items[i]
        item = self.dataset[i]
        size = _nbytes(item)
        if self.kept_bytes + size <= self.max_bytes:
            self.items[i], self.kept_bytes = item, self.kept_bytes + size
        return item

    def __getattr__(self, name: str):  # the wrapped dataset's attributes (``zs``, ``spacing`` ...)
        if name == "dataset":  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def make_loader(cfg, dataset: Dataset, shuffle: bool = False) -> DataLoader:
    """A DataLoader of pair dicts for the ``data`` config ``cfg`` (batch size, workers)."""
    w = int(cfg.num_workers)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=w, collate_fn=collate_pairs,
                      persistent_workers=w > 0, worker_init_fn=_worker_init if w > 0 else None)
