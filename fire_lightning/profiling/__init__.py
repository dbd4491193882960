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

from .counters import HOST_SYNC_OPS, VIEW_OPS, HostCopies, LiveTensorMemory, OpCounter
from .measure import Phase, Profile, device_name, profile
from .report import default_output, table, write
from .steps import fake_tensors, saved_for_backward, step_host_copies, step_memory, step_ops

__all__ = ["HOST_SYNC_OPS", "VIEW_OPS", "HostCopies", "LiveTensorMemory", "OpCounter", "Phase", "Profile",
           "default_output", "device_name", "fake_tensors", "profile", "saved_for_backward", "step_host_copies",
           "step_memory", "step_ops", "table", "write"]
