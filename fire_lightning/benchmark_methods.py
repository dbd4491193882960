"""The benchmark's methods and the fields each hands over for a batch of pairs.

Methods, in the FIRE paper's order: ``Unaligned``, the peers' affine methods (``ANTs-Affine``, ...),
``FIRE-Affine``, the peers' deformable methods (``ANTs-SyN``, ...), ``FIRE`` (the peers only when asked:
:mod:`.peers`, ANTs by default); ``True`` / ``True-Affine`` where the pairs' transform is known
(:mod:`.truth`); ``FIRE+IO`` when refinement is asked (:mod:`.refine`). Every method hands over a
normalised displacement field on the fixed grid ``(B, n, *S)`` (None: the identity) and, for the
inverse-consistency error, the field of the other direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import spatial
from .peers import PEERS
from .truth import true_fields

#: the methods with ANTs as the only peer (the default)
METHODS = ("Unaligned", "ANTs-Affine", "FIRE-Affine", "ANTs-SyN", "FIRE")
FIRE_METHODS = ("Unaligned", "FIRE-Affine", "FIRE")
#: the ceiling, where the pairs' transform is known (:mod:`.truth`): its true inverse, affine part and full
TRUE_METHODS = ("True", "True-Affine")
#: FIRE's transform refined on each pair (:mod:`.refine`), when the benchmark is asked for it
IO_METHOD = "FIRE+IO"
#: a method → the method holding its affine part, for the non-rigid share (FIRE+IO's affine part is its own
#: refined affine, scored as ``dice_affine_part_mean``); each peer's deformable method starts from its affine one
AFFINE_PARTS = {"True": "True-Affine", "FIRE": "FIRE-Affine", **{p.deformable: p.affine for p in PEERS.values()}}
ANTS_METHODS = PEERS["ants"].methods
#: every peer's methods
PEER_METHODS = tuple(m for p in PEERS.values() for m in p.methods)


@dataclass(frozen=True)
class ModelRows:
    """A trained model's rows: ``net`` (its transform), ``affine`` (its affine part) and ``io`` (refined per
    pair): ``FIRE``, ``FIRE-Affine``, ``FIRE+IO`` for FIRE, ``MI-CNN``, ``MI-CNN-Affine``, ``MI-CNN+IO`` for the
    MI-CNN."""

    net: str
    affine: str
    io: str

    @classmethod
    def of(cls, name: str, tag: str | None = None) -> ModelRows:
        """The rows of a model named ``name`` (``net.NAME``); ``tag`` (a run's name) tells apart two models of
        the same name: ``FIRE (run)``."""
        suffix = f" ({tag})" if tag else ""
        return cls(name + suffix, f"{name}-Affine{suffix}", f"{name}+IO{suffix}")

    def methods(self, io: bool) -> tuple[str, ...]:
        return (self.affine, self.net) + (self.io,) * io


#: FIRE's rows
FIRE_ROWS = ModelRows("FIRE", "FIRE-Affine", IO_METHOD)


def method_names(known: bool, peers, io: bool, rows: ModelRows = FIRE_ROWS) -> tuple:
    """The methods scored: the ceiling (``known`` transforms), the model's (FIRE's unless ``rows`` says) and the
    ``peers``' (names in :data:`peers.PEERS`; True: ANTs alone, False / None: none), the model refined (``io``)."""
    peers = ("ants",) if peers is True else tuple(peers or ())
    affine = tuple(PEERS[p].affine for p in PEERS if p in peers)
    deformable = tuple(PEERS[p].deformable for p in PEERS if p in peers)
    return ((TRUE_METHODS if known else ()) + ("Unaligned", *affine, rows.affine, *deformable, rows.net)
            + (rows.io,) * io)


def fire_fields(model, mov: torch.Tensor, fix: torch.Tensor, refine=None, rows: ModelRows = FIRE_ROWS
                ) -> tuple[dict, dict, dict, dict]:
    """A model's methods on a batch ``(B, 1, *S)`` (FIRE's, or another model's under its ``rows``):
    ``(model.register's output, fields, inverse fields, thetas)``, the fields on the CPU, with ``Unaligned``
    (None); with ``refine`` also the refined row, both directions refined (as FIRE's T^{B→A} gives the
    inverse). ``thetas``: the affine parts ``(B, n, n+1)``, for the affine errors."""
    reg = model.register(mov, fix)
    back = model.net.transform("BtoA", reg["g_fixed"], reg["g_moving"], fix, mov)
    shape = mov.shape[2:]
    fields = {"Unaligned": None, rows.affine: reg["affine_field"].cpu(), rows.net: reg["field"].cpu()}
    inverse = {rows.affine: back.affine_field(shape).cpu(), rows.net: back.field(shape).cpu()}
    thetas = {rows.affine: reg["theta"].cpu()}
    if refine is not None:
        t_io = model.refined(reg["transform"], mov, fix, refine)
        fields[rows.io], thetas[rows.io] = t_io.field(shape).cpu(), t_io.theta.cpu()
        inverse[rows.io] = model.refined(back, fix, mov, refine).field(shape).cpu()
    return reg, fields, inverse, thetas


def peer_fields(outs: list[dict], methods) -> tuple[dict, dict, dict]:
    """A peer's ``methods`` on a batch from its ``register_pair`` outputs, one per pair: ``(fields, inverse
    fields (zeros where a pair was registered one way only), seconds per pair)``."""
    fields, inverse, seconds = {}, {}, {}
    for name in methods:
        fields[name] = torch.stack([o[name]["field"] for o in outs])
        inverse[name] = torch.stack([o[name].get("inverse", torch.zeros_like(o[name]["field"])) for o in outs])
        seconds[name] = [o[name]["seconds"] for o in outs]
    return fields, inverse, seconds


def ants_fields(ants_out: list[dict]) -> tuple[dict, dict, dict]:
    """ANTs' methods of a batch from :func:`baselines.register_pair`'s outputs (:func:`peer_fields`)."""
    return peer_fields(ants_out, ANTS_METHODS)


def known_truth(batch: dict) -> tuple[dict, dict]:
    """Pairs with a known transform: ``(truth, the True / True-Affine fields)``."""
    truth = {k: batch[k] for k in ("true_theta", "true_elastic")}
    return truth, true_fields(truth["true_theta"], truth["true_elastic"])


def affine_theta(field: torch.Tensor) -> torch.Tensor:
    """A peer's affine method's affine ``(B, n, n+1)``, fitted to its field ``(B, n, *S)``, for the affine errors."""
    return spatial.fit_affine_to_field(field.double()).float()


ants_affine_theta = affine_theta  # ANTs-Affine's


def nonrigid_shares(summary: dict) -> dict:
    """How much of the Dice that the test transforms' elastic part is worth each method recovers:
    ``(method − its affine part) / (True − True-Affine)`` on the mean Dice (1: all of it, 0: an affine
    registration). Over the means, not per pair: a pair's own ceiling gap can be near 0. Empty
    without known transforms.

    Returns:
        method → {``dice``, ``affine_dice`` (its affine part's), ``share``}, Dice in [0, 1].
    """
    def mean(method: str, key: str = "dice_mean"):
        entry = summary.get(method, {}).get(key)
        return None if not entry else entry["mean"]

    ceiling = (mean("True") or 0.0) - (mean("True-Affine") or 0.0)
    if "True" not in summary or abs(ceiling) < 1e-9:
        return {}
    out = {}
    parts = dict(AFFINE_PARTS)
    for m in summary:  # other models' rows: "MI-CNN" and "MI-CNN-Affine", "FIRE (run)" and "FIRE-Affine (run)"
        if "-Affine" in m and m not in AFFINE_PARTS.values():
            parts.setdefault(m.replace("-Affine", "", 1), m)
    parts.update({m: None for m in summary if "dice_affine_part_mean" in summary[m]})  # refined: their own affine
    for method, part in parts.items():
        dice = mean(method)
        affine = mean(part) if part else mean(method, "dice_affine_part_mean")
        if dice is not None and affine is not None:
            out[method] = {"dice": dice, "affine_dice": affine, "share": (dice - affine) / ceiling}
    return out
