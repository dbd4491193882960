"""``fire profile CONFIG [k=v ...]``: where a training run's time goes, on whatever device is there.

Three measurements, each on its own:

1. **Data pipeline**: the training loader alone (its workers, augmentation included), samples/s.
2. **Training**: a real Lightning fit of the config's model at its batch size and shape, no
   validation, no checkpoints, no loggers; per iteration, the time inside the training step and
   the time between steps (waiting for the loader, plus the loop's own bookkeeping). Peak memory:
   ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set on a CPU; and,
   on any device, the bytes one FIRE step saves for its backward (the activations, which
   ``model.synthesis.checkpoint_activations`` trades for recomputation), and the aten ops of one FIRE step
   (:class:`OpCounter`: kernel launches and host synchronisations on a GPU, counted on any device) and
   of a whole iteration (optimisers, clipping and logging too), and the copies between host and
   device (:class:`HostCopies`: each a synchronisation on a GPU) of one forward + backward, on the
   meta device, and of a whole iteration, on the training device.
   When the config has an affine warm-up (``optim.affine_warmup_steps``), the first iterations
   are warm-up iterations and are reported apart: they cost a fraction of a FIRE iteration.
3. **Inference**: ``register`` on one validation pair at a time, ms per pair.

The verdict says whether the data or the compute bounds training: data time per iteration
against step time (at most a third is the project's target for the data).
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import resource
import sys
import time
import traceback
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean, median

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .module import FIREModule
from .train import make_datamodule

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


def saved_for_backward(model: FIREModule, batch: dict, context=contextlib.nullcontext) -> int:
    """Bytes that one FIRE training forward (:func:`losses.fire_forward` + :func:`losses.fire_loss`)
    keeps for its backward, each storage counted once: the activation memory of a step, which
    ``model.synthesis.checkpoint_activations`` cuts, measured the same way on a CPU and a GPU."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()  # the storage's own address: fake tensors have no data
        return t

    model.train()
    with context(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, loss = model._forward_loss(batch)
    del out, loss
    return sum(seen.values())


class LiveTensorMemory(TorchDispatchMode):
    """Bytes of tensor storage alive, and their peak (``now``, ``peak``), among the storages that ops
    create while the mode is on: a storage counts from the op that makes it until it is freed (a weak
    reference to it), rounded up to the CUDA caching allocator's 512-byte blocks, so that ``peak`` is
    what ``torch.cuda.max_memory_allocated`` would show above the memory in use before (allocator
    fragmentation and library workspaces such as cuDNN's aside). Views and in-place results share an
    input's storage and add nothing; tensors made before the mode (weights, inputs) are not counted.

    It also runs on fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``): shapes without
    data, so the memory of a step at any size, on any machine, without the memory. Forward and
    backward both run under it (the backward's ops are dispatched in the mode too).
    """

    BLOCK = 512

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self._live: dict[int, tuple[int, weakref.ref]] = {}

    def _freed(self, key: int) -> None:
        self.now -= self._live.pop(key, (0, None))[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._live:
                continue
            size = -(-storage.nbytes() // self.BLOCK) * self.BLOCK
            self._live[key] = (size, weakref.ref(storage, lambda _, key=key: self._freed(key)))
            self.now += size
            self.peak = max(self.peak, self.now)
        return out


#: aten ops that only make another view of a storage: no kernel runs for them on a GPU
VIEW_OPS = frozenset({"view", "_unsafe_view", "reshape", "detach", "alias", "expand", "unsqueeze", "squeeze", "t",
                      "transpose", "permute", "select", "slice", "as_strided", "unbind", "split", "split_with_sizes",
                      "chunk", "narrow", "unfold", "view_as", "diagonal", "movedim", "lift_fresh"})
#: aten ops that read a value back to the host (``.item()``, ``float(t)``, ``bool(t)``, a data-dependent
#: shape, LAPACK's info checked by ``torch.linalg.solve`` / ``inv`` / ``eigh`` / ``cholesky`` to raise on a
#: singular matrix): on a GPU each waits for every kernel queued before it
HOST_SYNC_OPS = frozenset({"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "_unique2",
                           "unique_dim", "unique_consecutive", "_linalg_check_errors"})


class OpCounter(TorchDispatchMode):
    """The aten ops dispatched while the mode is on: ``kernels`` (every op but views: on a GPU each is
    at least one kernel launch, and PyTorch's per-op overhead on the host is paid for each), ``syncs``
    (:data:`HOST_SYNC_OPS`: each stops the host until the GPU has caught up), and ``by_op`` (op name →
    count). A step of hundreds of small kernels is bound by the host's launches, not by the GPU's
    arithmetic: the count tells which it is on any device."""

    def __init__(self):
        super().__init__()
        self.kernels = self.syncs = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.kernels += 1
            self.by_op[name] = self.by_op.get(name, 0) + 1
            self.syncs += name in HOST_SYNC_OPS
        return func(*args, **(kwargs or {}))


class HostCopies(TorchDispatchMode):
    """Copies between the host and a device while the mode is on, by call site (``sites``:
    ``"folder/file.py:line"`` → count, the innermost caller outside installed packages; ``total``):
    an op copying a tensor from one device to another (``.to(device)``, ``copy_``), and a tensor
    made on ``device`` from Python data
    (``torch.tensor(values, device=...)``, ``torch.as_tensor``: their copy runs below the dispatcher, so
    the two functions are wrapped while the mode is on). On a GPU each is a blocking copy: the host
    waits for every kernel queued before it, as for a read (:data:`HOST_SYNC_OPS`), and the GPU then
    idles until the host has queued the next ones.

    ``device``: the device type whose Python-data tensors count; ``"cpu"`` counts, on a CPU, what
    would be copies on a GPU (``.to`` between devices cannot happen there: :func:`step_host_copies`
    runs the step on the meta device to see those). ``reads``: the values read back to the host from
    a device (:data:`HOST_SYNC_OPS` on a tensor not on the host), by call site, apart: none on a CPU."""

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.device = torch.device(device).type
        self.sites: dict[str, int] = {}
        self.reads: dict[str, int] = {}
        self._wrapped: tuple = ()
        self._in_factory = False

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def _record(self, into: dict | None = None) -> None:
        """Count the innermost caller outside installed packages (the line to change), as ``folder/file:line``."""
        into = self.sites if into is None else into
        ours = [f for f in traceback.extract_stack() if "-packages/" not in f.filename and f.filename != __file__]
        path = Path(ours[-1].filename) if ours else None
        site = f"{path.parent.name}/{path.name}:{ours[-1].lineno}" if ours else "(outside)"
        into[site] = into.get(site, 0) + 1

    def _factory(self, make):
        def wrapped(data, *args, device=None, **kwargs):
            if device is None or torch.device(device).type != self.device or isinstance(data, torch.Tensor):
                return make(data, *args, device=device, **kwargs)
            self._record()
            self._in_factory = True  # its own copy, if the dispatcher shows it, is this one
            try:
                return make(data, *args, device=device, **kwargs)
            finally:
                self._in_factory = False

        return wrapped

    def __enter__(self):
        self._wrapped = (torch.tensor, torch.as_tensor)
        torch.tensor, torch.as_tensor = (self._factory(f) for f in self._wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.tensor, torch.as_tensor = self._wrapped
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("_to_copy", "copy_") and args and isinstance(args[0], torch.Tensor):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0].device if name == "copy_" else torch.device(kwargs.get("device") or src.device)
            if isinstance(src, torch.Tensor) and src.device.type != dst.type and not self._in_factory:
                self._record()
        elif name in HOST_SYNC_OPS and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
            self._record(self.reads)  # a host tensor's value (Adam's step counts) is no synchronisation
        return func(*args, **kwargs)


def _forward_backward(model: FIREModule, batch: dict, mode: TorchDispatchMode, context=contextlib.nullcontext):
    """``mode`` after one FIRE training forward and backward run under it (optimiser steps apart).
    Gradients start at None, as after a training step's ``zero_grad`` (else the backward would add
    into them), and are cleared again afterwards."""
    model.train()
    model.zero_grad(set_to_none=True)
    with context(), mode:
        out, loss = model._forward_loss(batch)
        loss.total.backward()
        del out, loss
    model.zero_grad(set_to_none=True)
    return mode


def step_ops(model: FIREModule, batch: dict, context=contextlib.nullcontext) -> OpCounter:
    """The ops of one FIRE training forward and backward (:class:`OpCounter`)."""
    return _forward_backward(model, batch, OpCounter(), context)


def step_host_copies(cfg: DictConfig, **module_kwargs) -> HostCopies:
    """The host↔device copies (:class:`HostCopies`) of one FIRE training forward + backward at the
    config's batch and shape, counted on the meta device (shapes without data or arithmetic, so any
    size costs milliseconds and no memory): every tensor the step builds on the host and moves to the
    images' device shows there, as on a GPU. Counted in a second step, after the first has built the
    constants shared between steps (grids, offsets); the shared caches are emptied before and after."""
    from .nets.fire import fresh_caches

    with fresh_caches():
        with torch.device("meta"):  # the model only: tensors the step makes without a device stay on the host
            model = FIREModule(cfg, **module_kwargs)
        shape = (int(cfg.data.batch_size), 1, *cfg.data.size)
        batch = {k: torch.empty(shape, device="meta") for k in ("moving", "fixed")}
        _forward_backward(model, batch, HostCopies("meta"))
        return _forward_backward(model, batch, HostCopies("meta"))


@contextlib.contextmanager
def fake_tensors():
    """``FakeTensorMode``: tensors made inside have shapes, dtypes and devices but no data, and ops
    on them compute nothing. The shared grid caches are emptied on entry and exit."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .nets.fire import fresh_caches

    with fresh_caches(), FakeTensorMode():
        yield


def step_memory(model: FIREModule, batch: dict) -> int:
    """Peak bytes of tensor memory that one FIRE training forward and backward adds to the weights
    and inputs (:class:`LiveTensorMemory`; the gradients included, the optimisers' states not)."""
    return _forward_backward(model, batch, LiveTensorMemory()).peak


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
                     shape=list(cfg.data.size), width=int(cfg.model.synthesis.width), precision=str(cfg.trainer.precision),
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


def table(p: Profile) -> str:
    """The profile as a markdown table with its verdict."""
    rows = [("device", p.device), ("config", f"{p.config}: batch {p.batch_size}, shape {p.shape}, width {p.width}, "
                                             f"{p.precision}, {p.num_workers} loader workers"),
            ("data pipeline (loader alone)", f"{p.loader_samples_per_s:.1f} samples/s "
                                             f"({p.loader_samples_per_s / p.batch_size:.1f} batches/s; first batch "
                                             f"{p.loader_first_batch_s:.2f} s)")]
    for name, phase in (("FIRE iteration", p.fire), ("affine warm-up iteration", p.warmup)):
        if phase is not None:
            rows.append((name, f"{phase.its_per_s:.2f} it/s: step {1000 * phase.step_s:.1f} ms + between steps "
                               f"{1000 * phase.data_s:.1f} ms (medians of {phase.iterations})"))
    rows += [("peak memory", f"{p.peak_memory_gib:.2f} GiB ({p.peak_memory_kind})"),
             ("saved for the backward", f"{1024 * p.saved_for_backward_gib:.1f} MiB per FIRE step (activations)"),
             ("ops per FIRE step", f"{p.ops_per_step} aten ops in its forward + backward, views aside (on a GPU, "
                                   f"kernel launches), {p.host_syncs_per_step} reading a value back to the host"),
             ("ops per training iteration", f"{p.ops_per_iteration} (the step's, optimiser steps, gradient clipping and "
                                            f"logging)"),
             ("host↔device copies", f"{p.host_copies_per_step} in a FIRE forward + backward (counted on the meta "
                                    f"device), {p.host_copies_per_iteration} in a whole training iteration "
                                    f"(optimisers and logging included); on a GPU each waits for the queued kernels"
                                    + "".join(f"; {site}: {n}" for site, n in p.host_copy_sites.items())),
             ("values read back from the device", "– (a CPU run: every tensor is on the host)" if "CUDA" not in p.device
              else f"{p.host_reads_per_iteration} in a whole training iteration"
              + "".join(f"; {site}: {n}" for site, n in p.host_read_sites.items())),
             ("inference", f"{p.inference_ms_per_pair:.1f} ms per pair (batch 1)")]
    if p.bound:
        rows.append(("bound by", f"**{p.bound}**: data time per iteration = {p.data_to_step:.2f} × step time "
                                 f"(target ≤ 0.33)"))
    rows += [("note", n) for n in p.notes]
    return "\n".join(["| what | measured |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])


def write(p: Profile, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(p.to_json(), indent=2))
    out.with_suffix(".md").write_text(table(p) + "\n")
    return out


def default_output(cfg: DictConfig, p: Profile) -> Path:
    kind = "cuda" if "CUDA" in p.device else "cpu"
    return Path(cfg.run.root) / "profile" / f"{cfg.experiment}-{kind}.json"

