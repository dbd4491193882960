"""FIRE's classical peers in the benchmark, all run the same way: ANTs (:mod:`..baselines`), Greedy
(:mod:`.greedy`) and elastix (:mod:`.elastix`).

Each peer (:data:`PEERS`, by the name ``fire benchmark --peers`` takes) gives two methods, an affine one
and a deformable one started from it, and a ``register_pair(moving, fixed, spacing, params, inverse)``
that registers one pair ``(1, *S)`` on the model's grid and returns, per method, the normalised
displacement field ``(n, *S)`` (fixed → moving, as FIRE's), the field of the swapped registration
(``inverse``, for the inverse-consistency error) and the seconds of the registration calls. A failed call
is retried once; a second failure raises, and the benchmark names the pair.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """One peer: its ``affine`` and ``deformable`` method names, its parameters' class (``params``: a
    dataclass with ``threads``, ``ice_every`` and ``record()``) and the module holding its
    ``register_pair`` (looked up at each call, so that it can be replaced in tests)."""

    name: str
    affine: str
    deformable: str
    module: str
    params: str

    @property
    def methods(self) -> tuple[str, str]:
        return self.affine, self.deformable

    @property
    def tool(self) -> str:
        """``ANTs``, ``Greedy``, ``elastix``: the name the methods start with."""
        return self.affine.split("-")[0]

    def make_params(self, **kw):
        """The peer's default parameters (the tuned ones), with ``kw`` replaced."""
        module = importlib.import_module(self.module)
        return getattr(module, self.params)(**kw)

    def register(self, moving, fixed, spacing, params, inverse: bool) -> dict:
        """``register_pair`` of the peer's module: method → {field, inverse (with ``inverse``), seconds}."""
        return importlib.import_module(self.module).register_pair(moving, fixed, spacing, params, inverse)


#: the peers by name, in the order of the benchmark's rows
PEERS = {
    "ants": Peer("ants", "ANTs-Affine", "ANTs-SyN", "fire_lightning.baselines", "AntsParams"),
    "greedy": Peer("greedy", "Greedy-Affine", "Greedy", "fire_lightning.peers.greedy", "GreedyParams"),
    "elastix": Peer("elastix", "elastix-Affine", "elastix-B-spline", "fire_lightning.peers.elastix", "ElastixParams"),
}


def parse_peers(text: str) -> tuple[str, ...]:
    """``"ants,greedy"`` → ``("ants", "greedy")``, in :data:`PEERS`' order; an unknown or empty name is
    a ValueError that lists the known ones."""
    names = [t.strip().lower() for t in text.split(",")]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"--peers: unknown peer {', '.join(repr(n) for n in unknown) or repr(text)}; "
                         f"choose from {', '.join(PEERS)} (comma-separated)")
    return tuple(n for n in PEERS if n in names)


def peer_of(method: str) -> Peer | None:
    """The peer that gives ``method`` (None for FIRE's and the ceiling's)."""
    return next((p for p in PEERS.values() if method in p.methods), None)


def tool_names(peers) -> str:
    """``ANTs, Greedy and elastix``: the tools of the peers named ``peers``, for the reports."""
    names = [PEERS[p].tool for p in peers]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
