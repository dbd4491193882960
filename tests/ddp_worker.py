"""A training run for tests/test_ddp.py, as a script: under ``trainer.strategy=ddp`` Lightning launches
the other ranks by running this file again, so whatever it patches holds on every rank.

    python tests/ddp_worker.py OUT_DIR [--indexed [ORDER.json]] [--nan-at K] key=value ...

Trains with ``train(cfg)`` and writes, per rank, ``OUT_DIR/rank<r>.pt``: the final parameters, the
ids of the training pairs that rank stepped on (in order), its iteration count and world size.
With ``--indexed`` a training pair is a function of its index alone (instead of a fresh draw); with
an ORDER file (a JSON list of indices) the i-th pair drawn is pair ``ORDER[i]``: a 1-process run
fed the order in which a 2-process run's ranks stepped sees, batch by batch, the same pairs. With
``--nan-at K`` the last rank's loss is NaN once, at iteration K (the guard must skip it on every rank).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_modules import phantom  # noqa: E402
from fire_lightning.config import load_config  # noqa: E402
from fire_lightning.module import FIREModule  # noqa: E402
from fire_lightning.train import train  # noqa: E402

PHANTOM2D = Path(__file__).resolve().parent.parent / "experiments" / "phantom2d.yaml"


def _indexed(order: list[int] | None):
    def pair(self, i: int) -> dict:
        i = order[i] if order is not None else int(i)
        rng = np.random.default_rng([2026, i])
        z = self.items[int(rng.integers(len(self.items)))]
        return self.pair(self.prep.images, self.prep.labels, z, rng, None, f"train-{i}")

    return pair


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    overrides = [a for a in argv[1:] if "=" in a]  # key=value; the rest are this script's options
    if "--indexed" in argv:
        files = [a for a in argv[1:] if a.endswith(".json")]
        order = json.loads(Path(files[0]).read_text()) if files else None
        phantom.TrainPairs.__getitem__ = _indexed(order)
    seen: list[str] = []
    step = FIREModule.training_step

    def recording_step(self, batch, batch_idx):
        seen.extend(batch["id"])
        return step(self, batch, batch_idx)

    FIREModule.training_step = recording_step
    if "--nan-at" in argv:
        nan_at, fired, forward = int(argv[argv.index("--nan-at") + 1]), [], FIREModule._forward_loss

        def nan_once(self, batch):
            out, loss = forward(self, batch)
            if self.training and not fired and self.iteration == nan_at and \
                    self.global_rank == self.trainer.world_size - 1:
                fired.append(True)
                loss = loss._replace(total=loss.total * float("nan"))
            return out, loss

        FIREModule._forward_loss = nan_once
    result = train(load_config(PHANTOM2D, overrides))
    model = result["model"]
    out.mkdir(parents=True, exist_ok=True)
    params = {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}
    import torch

    torch.save({"params": params, "seen": seen, "iterations": model.iteration,
                "skipped": int(model.skipped_steps), "world_size": model.trainer.world_size,
                "metrics": result["metrics"]}, out / f"rank{model.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
