"""``profile(cfg)``: the loader alone, a real Lightning fit timed per iteration, one step's memory,
ops and copies, and inference per pair, gathered into a :class:`Profile`."""

from __future__ import annotations

import logging
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from statistics import mean, median

import lightning as L
import torch
from omegaconf import DictConfig

from ..module import FIREModule
from ..train import make_datamodule
from .counters import HostCopies, OpCounter
from .steps import saved_for_backward, step_host_copies, step_ops

log = logging.getLogger(__name__)


@dataclass
class Phase:
    """Per-iteration timings of one kind of training iteration (seconds, medians and means)."""

    iterations: int
    step_s: float  # median time inside training_step (forward, loss, backward, optimiser steps)
    data_s: float  # median time between two steps: waiting for the loader + the loop's bookkeeping
    step_mean_s: float
    data_mean_s: float

    @property
    def its_per_s(self) -> float:
        return 1.0 / (self.step_s + self.data_s)

    @classmethod
    def of(cls, rows: list[tuple[float, float]]) -> Phase | None:
        if not rows:
            return None
        data, step = zip(*rows)
        return cls(len(rows), median(step), median(data), mean(step), mean(data))


@dataclass
class Profile:
    device: str
    config: str
    batch_size: int
    shape: list
    width: int
    precision: str
    num_workers: int
    threads: int
    loader_samples_per_s: float
    loader_first_batch_s: float  # worker start-up and the first batch
    fire: Phase | None
    warmup: Phase | None
    peak_memory_gib: float
    peak_memory_kind: str
    saved_for_backward_gib: float  # what one FIRE step keeps for its backward (activations), any device
    inference_ms_per_pair: float
    ops_per_step: int = 0  # aten ops of one FIRE forward + backward, views aside: kernel launches on a GPU
    host_syncs_per_step: int = 0  # of which read a value back to the host
    ops_per_iteration: int = 0  # aten ops of a whole training iteration (optimisers, clipping, logging included)
    iteration_ops: dict = field(default_factory=dict)  # op name -> count in that iteration, the most frequent first
    host_copies_per_step: int = 0  # host↔device copies in one FIRE forward + backward (counted on the meta device)
    host_copies_per_iteration: int = 0  # ... in a whole training iteration, on the training device (HostCopies)
    host_copy_sites: dict = field(default_factory=dict)  # "folder/file.py:line" -> copies
    host_reads_per_iteration: int = 0  # values read back to the host in a whole training iteration
    host_read_sites: dict = field(default_factory=dict)  # "folder/file.py:line" -> reads
    bound: str = ""
    data_to_step: float = 0.0
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("fire", "warmup"):
            phase = getattr(self, k)
            if phase is not None:
                d[k]["its_per_s"] = phase.its_per_s
        return d


class _StepTimer(L.Callback):
    """``(iteration, seconds since the previous step ended, seconds inside the step)`` per batch."""

    def __init__(self, sync):
        self.sync, self.rows, self._end, self._start = sync, [], None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sync()
        self._start = time.perf_counter()
        self._gap = self._start - self._end if self._end is not None else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sync()
        self._end = time.perf_counter()
        self.rows.append((pl_module.iteration - 1, self._gap, self._end - self._start))


class _OneIteration(L.Callback):
    """A whole training iteration (optimiser steps, clipping and logging included), counted on the
    training device in ``iteration`` and the one after it: its :class:`HostCopies` (``copies``) and its
    ops (:class:`OpCounter`, ``ops``). The second iteration's are kept: the first can include one-time
    builds of the shared constants (seen with ``trainer.compile``, whose graph holds them, so that
    their cache was first filled under the count)."""

    def __init__(self, iteration: int, device: str):
        self.iteration, self.device, self._on = iteration, device, False
        self.copies, self.ops = HostCopies(device), OpCounter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.iteration in (self.iteration, self.iteration + 1):
            self.copies, self.ops, self._on = HostCopies(self.device), OpCounter(), True
            self.copies.__enter__()
            self.ops.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._on:  # whatever the step did (a skipped step does not advance the iteration)
            self.ops.__exit__(None, None, None)
            self.copies.__exit__(None, None, None)
            self._on = False


def device_name(accelerator: torch.device) -> str:
    if accelerator.type == "cuda":
        return f"{torch.cuda.get_device_name(accelerator)} (CUDA)"
    threads = torch.get_num_threads()
    return f"CPU {platform.processor() or platform.machine()}, {threads} torch threads"


def _loader_rate(loader, batches: int) -> tuple[float, float]:
    """(samples/s over ``batches`` batches after the first, seconds to the first batch)."""
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    n, t1 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            n += next(it)["moving"].shape[0]
        except StopIteration:
            break
    rate = n / (time.perf_counter() - t1)
    del it  # stops its workers
    return rate, first


def _peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (1 << 30 if sys.platform == "darwin" else 1 << 20)


def profile(cfg: DictConfig, steps: int = 30, warmup_steps: int = 5, loader_batches: int = 30,
            inference_pairs: int = 20, skip: int = 3, config_name: str = "") -> Profile:
    """Measure ``cfg`` (see the module docstring). ``skip``: iterations of each phase left out of the
    figures (first calls: allocations, autotuning). Trains ``steps`` FIRE iterations, after
    ``warmup_steps`` affine warm-up iterations when the config has a warm-up."""
    cfg = cfg.copy()
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    has_warmup = cfg.optim.affine_warmup_steps > 0
    n_warm = warmup_steps + skip if has_warmup else 0
    cfg.optim.affine_warmup_steps = n_warm
    timed_end = n_warm + skip + steps
    cfg.trainer.max_steps = timed_end + 2  # the last two iterations: their host copies counted, not timed

    dm = make_datamodule(cfg)
    dm.setup("fit")
    rate, first = _loader_rate(dm.train_dataloader(), loader_batches)
    log.info("loader alone: %.1f samples/s (first batch after %.2f s)", rate, first)

    model = FIREModule(cfg, label_names=getattr(dm, "label_names", None), spacing=getattr(dm, "spacing", None))
    trainer = L.Trainer(max_steps=cfg.trainer.max_steps * model.n_optimizers, max_epochs=-1,
                        accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[])
    dev = trainer.strategy.root_device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    timer, one = _StepTimer(sync), _OneIteration(timed_end, dev.type)
    trainer.callbacks += [timer, one]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    trainer.fit(model, datamodule=dm)
    rows = [(it, gap, step) for it, gap, step in timer.rows if gap is not None]
    warm = Phase.of([(g, s) for it, g, s in rows if skip <= it < n_warm])
    fire = Phase.of([(g, s) for it, g, s in rows if n_warm + skip <= it < timed_end])
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev) / (1 << 30), "torch.cuda.max_memory_allocated"
    else:
        peak, kind = _peak_rss_gib(), "peak RSS of the process (CPU)"

    train_batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in next(iter(dm.train_dataloader())).items()}
    model = model.to(dev)
    context = trainer.strategy.precision_plugin.forward_context
    saved = saved_for_backward(model, train_batch, context) / (1 << 30)
    ops = step_ops(model, train_batch, context)
    step_copies = step_host_copies(cfg, label_names=model.label_names, spacing=model.spacing)
    model = model.eval()
    batch = next(iter(dm.val_dataloader()))
    moving, fixed = batch["moving"][:1].to(dev), batch["fixed"][:1].to(dev)
    for _ in range(3):
        model.register(moving, fixed)
    sync()
    t0 = time.perf_counter()
    for _ in range(inference_pairs):
        model.register(moving, fixed)
    sync()
    infer_ms = 1000 * (time.perf_counter() - t0) / inference_pairs

    result = Profile(device=device_name(dev), config=config_name, batch_size=int(cfg.data.batch_size),
                     shape=list(cfg.data.size), width=int(cfg.model.synthesis.width),
                     precision=str(cfg.trainer.precision),
                     num_workers=int(cfg.data.num_workers), threads=torch.get_num_threads(),
                     loader_samples_per_s=rate, loader_first_batch_s=first, fire=fire, warmup=warm,
                     peak_memory_gib=peak, peak_memory_kind=kind, saved_for_backward_gib=saved,
                     inference_ms_per_pair=infer_ms, ops_per_step=ops.kernels, host_syncs_per_step=ops.syncs,
                     ops_per_iteration=one.ops.kernels,
                     iteration_ops=dict(sorted(one.ops.by_op.items(), key=lambda kv: -kv[1])),
                     host_copies_per_step=step_copies.total, host_copies_per_iteration=one.copies.total,
                     host_copy_sites={**step_copies.sites, **one.copies.sites},
                     host_reads_per_iteration=sum(one.copies.reads.values()), host_read_sites=one.copies.reads)
    if fire is not None:
        result.data_to_step = fire.data_s / fire.step_s
        needed = cfg.data.batch_size / (fire.step_s + fire.data_s)
        result.bound = "data" if fire.data_s > fire.step_s or rate < needed else "compute"
        if rate < needed:
            result.notes.append(f"the loader alone gives {rate:.0f} samples/s, training takes {needed:.0f}")
    return result
