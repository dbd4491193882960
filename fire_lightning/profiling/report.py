"""A :class:`Profile` as a markdown table with its verdict, and as JSON + markdown files."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from .measure import Profile


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
             ("ops per training iteration", f"{p.ops_per_iteration} (the step's, optimiser steps, gradient clipping "
                                            f"and logging)"),
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
