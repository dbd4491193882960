"""`fire profile`: the loader, the training step and inference measured apart, a table and JSON."""

from __future__ import annotations

import contextlib
import json

import pytest

from fire_lightning.cli import main
from fire_lightning.config import load_config
from fire_lightning.profiling import Phase, profile

from .conftest import PHANTOM2D

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fire_profile_measures_each_part_writes_json_and_names_the_bound(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "prof" / "p.json"
    rc = main(["profile", str(PHANTOM2D), *tiny_overrides, "optim.affine_warmup_steps=100", "--steps", "4",
               "--warmup-steps", "2", "--loader-batches", "3", "--inference-pairs", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| FIRE iteration |" in printed and "| affine warm-up iteration |" in printed and "bound by" in printed
    d = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("| what | measured |")
    assert d["fire"]["iterations"] == 4 and d["warmup"]["iterations"] == 2  # the skipped first ones left out
    assert d["loader_samples_per_s"] > 0 and d["inference_ms_per_pair"] > 0 and d["peak_memory_gib"] > 0.05
    assert d["fire"]["step_s"] > 0 and d["fire"]["data_s"] >= 0 and d["bound"] in ("data", "compute")
    assert d["batch_size"] == 2 and d["device"].startswith("CPU")


def test_without_a_warm_up_only_fire_iterations_are_measured_and_checkpointing_saves_less(tiny_overrides):
    cfg = load_config(PHANTOM2D, tiny_overrides)
    p = profile(cfg, steps=3, loader_batches=2, inference_pairs=1, skip=1)
    assert p.warmup is None and p.fire.iterations == 3 and p.saved_for_backward_gib > 0
    # no value is read back to the host inside a step's forward and backward (each would stall a GPU)
    assert p.ops_per_step > 100 and p.host_syncs_per_step == 0
    # nor copied between host and device, in the step or in the rest of the iteration (optimisers, logging)
    assert (p.host_copies_per_step, p.host_copies_per_iteration, p.host_copy_sites) == (0, 0, {})
    # the rest of the iteration (three fused Adam steps, clipping, logging) adds few ops to the step's
    # (torch's default CPU Adam: ~9 per weight tensor, ~1 100 here)
    assert p.ops_per_step < p.ops_per_iteration < p.ops_per_step + 200
    assert p.iteration_ops["_fused_adam_"] == 3
    ckpt = profile(load_config(PHANTOM2D, [*tiny_overrides, "model.synthesis.checkpoint_activations=true"]), steps=1,
                   loader_batches=1, inference_pairs=1, skip=1)
    assert ckpt.saved_for_backward_gib < 0.7 * p.saved_for_backward_gib


def test_a_phase_takes_medians_so_one_slow_iteration_does_not_move_it():
    p = Phase.of([(0.01, 0.1), (0.01, 0.1), (5.0, 9.0)])
    assert (p.step_s, p.data_s, p.iterations) == (0.1, 0.01, 3) and p.step_mean_s > 3
    assert p.its_per_s == pytest.approx(1 / 0.11)
    assert Phase.of([]) is None


def test_live_tensor_memory_counts_what_ops_allocate_until_it_is_freed():
    """Each new storage rounded up to 512 bytes; views and in-place results add nothing; what
    existed before the mode is not counted; freed storages leave the count."""
    import torch

    from fire_lightning.profiling import LiveTensorMemory

    before = torch.ones(10_000)
    with LiveTensorMemory() as memory:
        a = torch.ones(1000)  # 4000 bytes -> 4096
        view, _ = before[:10], before.mul_(1)  # a view and an in-place op of a tensor made before
        b = a * 2
        assert (memory.now, memory.peak) == (8192, 8192)
        del a
        assert memory.now == 4096
        c = b.view(10, 100).t() + 1  # a view of b adds nothing, the sum 4096
        del b, c
        x = torch.ones(100, requires_grad=True)
        (x.exp() * 3).sum().backward()  # the backward's ops are counted too; x.grad stays (512)
        assert memory.now == 1024 and memory.peak == 8192  # x and x.grad
    del view


def test_a_step_on_fake_tensors_needs_the_memory_of_the_real_step(tiny_overrides):
    """``profiling.fake_tensors``: the same FIRE step on shapes without data saves the same bytes for
    its backward and peaks at the same tensor memory as on real tensors (how
    ``benchmarks/activation_memory.py --fake`` projects paper-width 3D), and leaves no fake grid behind."""
    import torch

    from fire_lightning import spatial
    from fire_lightning.module import FIREModule
    from fire_lightning.profiling import fake_tensors, saved_for_backward, step_memory

    cfg = load_config(PHANTOM2D, [*tiny_overrides, "data.spatial_dims=3", "data.size=[16,16,8]",
                                  "model.synthesis.checkpoint_activations=true", "model.synthesis.checkpoint_chunk=1",
                                  "model.channels_last=false"])  # fake weights cannot change layout
    measured = []
    for fake in (False, True):
        with fake_tensors() if fake else contextlib.nullcontext():
            torch.manual_seed(0)
            model = FIREModule(cfg)
            batch = {k: torch.rand(2, 1, 16, 16, 8) * 2 - 1 for k in ("moving", "fixed")}
            measured.append((saved_for_backward(model, batch), step_memory(model, batch)))
    (saved, peak), (fake_saved, fake_peak) = measured
    assert saved > 0 and fake_saved == saved
    assert abs(fake_peak - peak) <= 0.01 * peak, (fake_peak, peak)
    grid = spatial.identity_grid((4, 4), "cpu", torch.float32)
    assert not isinstance(grid, torch._subclasses.fake_tensor.FakeTensor) and grid.sum() == 0


def test_the_op_counter_counts_kernels_not_views_and_names_host_reads():
    import torch

    from fire_lightning.profiling import OpCounter

    x = torch.ones(4, 3)
    with OpCounter() as ops:
        y = (x * 2).t()[:2].unsqueeze(0)  # one kernel, then views
        assert float(y.sum()) == 16.0  # a kernel and a read back to the host
        _ = y.reshape(-1)  # a view of a non-contiguous tensor is a copy: a kernel
        _ = x.nonzero()  # a data-dependent shape: a read too
    assert ops.by_op == {"mul": 1, "sum": 1, "_local_scalar_dense": 1, "clone": 1, "nonzero": 1}
    assert ops.kernels == 5 and ops.syncs == 2
    a, b = torch.eye(3).expand(4, 3, 3), torch.ones(4, 3, 1)
    with OpCounter() as checked:
        torch.linalg.solve(a, b)  # reads LAPACK's info back to raise on a singular system
    with OpCounter() as unchecked:
        torch.linalg.solve_ex(a, b)
    assert (checked.syncs, unchecked.syncs) == (1, 0)


def test_host_copies_counts_copies_between_host_and_device_by_call_site():
    import torch

    from fire_lightning.profiling import HostCopies

    factory = torch.tensor
    on_device = torch.ones(3, device="meta")
    with HostCopies("meta") as copies:
        torch.tensor([1.0, 2.0], device="meta")  # Python data onto the device
        torch.as_tensor([0.5], device="meta")
        torch.zeros(3).to("meta")  # built on the host, then moved
        on_device.copy_(torch.ones(3))
        torch.tensor(2.0)  # none of these crosses
        on_device * torch.tensor(2.0)  # a 0-d host tensor in a device op is a kernel argument
        torch.full((), 2.0, device="meta")
        torch.arange(3, device="meta").to(torch.float64)
    assert copies.total == 4 and len(copies.sites) == 4  # four lines, each named
    assert all(site.startswith("tests/test_profile.py:") for site in copies.sites)
    assert torch.tensor is factory  # the factory is restored on exit

    with HostCopies("cpu") as would:  # on a CPU: what a GPU run would copy
        torch.tensor([1.0], device="cpu"), torch.tensor([1.0])
        assert torch.ones(2).sum().item() == 2.0  # a host tensor's value: no synchronisation (Adam's counters)
    assert would.total == 1 and would.reads == {}


def test_host_copies_names_the_values_read_back_from_a_device():
    """Reads from a (fake) CUDA tensor: each would wait for the GPU. Fake tensors have no values, so
    the read itself fails after it is counted."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fire_lightning.profiling import HostCopies

    with FakeTensorMode(), HostCopies("cuda") as copies:
        x = torch.zeros(3, device="cuda")
        with pytest.raises(Exception):  # noqa: B017  (whatever fake tensors raise for a read of their data)
            x.sum().item()
        torch.tensor([1.0, 2.0], device="cuda")
    assert list(copies.reads.values()) == [1] and next(iter(copies.reads)).startswith("tests/test_profile.py:")
    assert copies.total == 1


@pytest.mark.parametrize("extra", [[], ["data.spatial_dims=3", "data.size=[16,16,8]"], ["model.adversarial=true"],
                                   ["model.affine.weighting=aperture"]], ids=["2d", "3d", "exfire", "aperture"])
def test_the_fire_step_copies_nothing_between_host_and_device(tiny_overrides, extra):
    """Counted on the meta device, where a tensor built on the host must be copied, as on a GPU: the
    constants every step needs (offsets, per-axis scales) are built on the device once and shared. Nor
    is a value read back: the affine fits solve without checking LAPACK's info (torch.linalg.solve
    would read it to raise on a singular system)."""
    from fire_lightning.profiling import step_host_copies

    copies = step_host_copies(load_config(PHANTOM2D, [*tiny_overrides, *extra]))
    assert copies.sites == {} and copies.reads == {}


@pytest.mark.parametrize("extra", [[], ["data.spatial_dims=3", "data.size=[16,16,8]"]], ids=["2d", "3d"])
def test_registering_a_pair_copies_nothing_between_host_and_device(tiny_overrides, extra):
    """Inference on the meta device: after a first pair (which puts the shared constants on the
    device), a pair is registered without a copy from or to the host."""
    import torch

    from fire_lightning.module import FIREModule
    from fire_lightning.nets.fire import fresh_caches
    from fire_lightning.profiling import HostCopies

    cfg = load_config(PHANTOM2D, [*tiny_overrides, *extra])
    with fresh_caches():
        with torch.device("meta"):
            model = FIREModule(cfg).eval()
        x = torch.empty(1, 1, *cfg.data.size, device="meta")
        with torch.no_grad():
            model.register(x, x)
            with HostCopies("meta") as copies:
                out = model.register(x, x)
    assert copies.sites == {} and out["warped"].shape == x.shape


@pytest.mark.parametrize("extra", [[], ["data.spatial_dims=3", "data.size=[16,16,8]"], ["model.adversarial=true"]],
                         ids=["2d", "3d", "exfire"])
def test_the_fire_step_is_one_graph_for_torch_compile(tiny_overrides, extra):
    """The training forward and loss read no config object and no value back to the host, so dynamo
    (``torch.compile``'s tracer) captures them whole: the ground for capturing the step on a GPU,
    where its ~4 000 ops' dispatch, not its arithmetic, bounds it (docs/performance.md)."""
    import torch
    import torch._dynamo

    from fire_lightning.module import FIREModule

    cfg = load_config(PHANTOM2D, [*tiny_overrides, "model.channels_last=false", *extra])
    model = FIREModule(cfg).train()
    shape = list(cfg.data.size)
    batch = {k: torch.rand(2, 1, *shape) * 2 - 1 for k in ("moving", "fixed")}
    try:
        explained = torch._dynamo.explain(lambda b: model._forward_loss(b)[1].total)(batch)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow  # about 30 s: tracing and compiling the step
def test_trainer_compile_compiles_the_training_step_to_the_same_loss(tiny_overrides):
    """``trainer.compile=true``: the training forward + loss through ``torch.compile`` (the
    ``aot_eager`` backend here: it traces and runs the captured graph without generating code, so
    it checks the capture on any machine); the same loss (to 1e-6) and close gradients."""
    import torch
    import torch._dynamo

    from fire_lightning.config import ConfigError
    from fire_lightning.module import FIREModule

    overrides = [*tiny_overrides, "model.channels_last=false"]
    batch = {k: torch.rand(2, 1, *load_config(PHANTOM2D, overrides).data.size) * 2 - 1 for k in ("moving", "fixed")}
    results = []
    try:
        for extra in ([], ["trainer.compile=true", "trainer.compile_backend=aot_eager"]):
            torch.manual_seed(0)
            model = FIREModule(load_config(PHANTOM2D, [*overrides, *extra])).train()
            loss = model._train_forward_loss(batch)[1].total
            loss.backward()
            results.append((model._train_forward_loss, loss.detach(),
                            {k: p.grad for k, p in model.named_parameters() if p.grad is not None}))
    finally:
        torch._dynamo.reset()
    (eager_fn, l0, g0), (compiled_fn, l1, g1) = results
    assert not hasattr(eager_fn, "_torchdynamo_orig_callable") and hasattr(compiled_fn, "_torchdynamo_orig_callable")
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-2, atol=1e-3 * max(float(g.abs().max()) for g in g0.values()))
    with pytest.raises(ConfigError, match="trainer.compile_mode must be one of"):
        load_config(PHANTOM2D, ["trainer.compile_mode=fast"])
