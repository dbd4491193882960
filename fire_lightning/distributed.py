"""Which process this is in distributed training: the one fact that training, its loggers and its
reports all need, kept apart so that none of them imports another for it."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_only


def global_rank() -> int:
    """This process's rank, from the launcher's environment (0 outside distributed training)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)
