"""Table 4's timing: seconds per pair of ``model.register``, one pair at a time, with the same number of
CPU threads for FIRE (torch) and ANTs (ITK); FIRE on the GPU too when one is present."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from .inference import Registers

#: the benchmark keeps the pairs' images for its timing when they take at most this much memory (else
#: the timing makes them again: a synthetic pair costs tens of ms, three times over 120 pairs)
TIMING_KEEP_BYTES = 256 << 20


def time_register(model: Registers, dataset, device: torch.device, repeats: int = 1, refine=None) -> list[float]:
    """Seconds per pair of ``model.register`` (with ``refine``: FIRE+IO end to end), one pair of
    ``dataset`` (items with ``moving`` / ``fixed`` ``(1, *S)``: a data set, or a list of them) at a time,
    after one warm-up call; pairs are fetched one by one, so no more than one is moved for timing."""
    model = model.to(device)

    def pair(i: int):
        item = dataset[i]
        return item["moving"][None].to(device), item["fixed"][None].to(device)

    model.register(*pair(0), refine=refine)  # warm-up: allocations, kernels, caches
    return [seconds_to_register(model, *pair(i), repeats=repeats, refine=refine) for i in range(len(dataset))]


def seconds_to_register(model: Registers, moving: torch.Tensor, fixed: torch.Tensor, repeats: int = 1,
                        refine=None) -> float:
    """Seconds of one ``model.register`` of a pair ``(1, 1, *S)`` on the model's device (mean of ``repeats``)."""
    sync = torch.cuda.synchronize if moving.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.register(moving, fixed, refine=refine)
    sync()
    return (time.perf_counter() - t0) / repeats


class KeptPairs:
    """The pairs' images kept for the timing passes after the scoring loop, until they outgrow
    :data:`TIMING_KEEP_BYTES` (then :attr:`pairs` is None and the timing makes them again)."""

    def __init__(self, keep: bool):
        self.pairs: list[dict] | None = [] if keep else None
        self.bytes = 0

    def add(self, batch: dict) -> None:
        if self.pairs is None:
            return
        self.bytes += 2 * batch["moving"].numel() * batch["moving"].element_size()
        if self.bytes > TIMING_KEEP_BYTES:
            self.pairs = None
        else:
            self.pairs.extend({"moving": m, "fixed": f} for m, f in zip(batch["moving"], batch["fixed"]))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
