"""Evaluate and benchmark a trained model on held-out test pairs (the FIRE paper's Tables 2 and 4).

Every method (:mod:`.benchmark_methods`) hands over a normalised displacement field on the fixed
grid and is scored by :func:`metrics.score_methods` on exactly the same pairs: Dice and HD95 (mm)
per structure, % det J ≤ 0, std of log det J, inverse-consistency error (mm), seconds per pair
(:mod:`.benchmark_timing`: one pair at a time, the same CPU threads for FIRE and its classical peers,
ANTs and optionally Greedy and elastix (:mod:`.peers`); FIRE on the GPU too when one is present).

Writes into ``out_dir`` ``results.json``: ``{"methods": {method: {metric: {"mean", "std", "values"}}},
"paired", "pair_ids", "structures", "meta"}`` (``meta`` records threads, devices and every parameter of
each peer, under its name), and the reports of :mod:`.benchmark_reports`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from . import benchmark_timing as timing
from . import metrics, spatial
from .batches import collate_pairs
from .benchmark_methods import (  # noqa: F401  (re-exported: the benchmark's API)
    AFFINE_PARTS,
    ANTS_METHODS,
    FIRE_METHODS,
    IO_METHOD,
    METHODS,
    PEER_METHODS,
    TRUE_METHODS,
    ModelRows,
    affine_theta,
    ants_affine_theta,
    ants_fields,
    fire_fields,
    known_truth,
    method_names,
    nonrigid_shares,
    peer_fields,
)
from .benchmark_reports import (  # noqa: F401
    COLUMNS,
    PERCENT_COLUMNS,
    affine_rows,
    check_targets,
    dice_table,
    explain_reports,
    figures,
    table2_rows,
    table4_rows,
    write_reports,
)
from .benchmark_timing import TIMING_KEEP_BYTES, KeptPairs, cpu_name, seconds_to_register, time_register  # noqa: F401
from .module import FIREModule
from .peers import PEERS, tool_names
from .tables import paired, summarise  # noqa: F401


@torch.no_grad()
def evaluate(model: FIREModule, dataset, out_dir: str | Path, ants=None, threads: int | None = None,
             batch_size: int = 16, device: str | None = None, max_pairs: int | None = None,
             meta: dict | None = None, explain=None, refine=None, compare: dict | None = None,
             peers: dict | None = None) -> dict:
    """Score every pair of ``dataset`` (dicts as produced by the data modules) and write the reports.

    Args:
        ants: :class:`baselines.AntsParams` to run ANTs-Affine and ANTs-SyN too (as ``peers={"ants": ants}``).
        threads: CPU threads for FIRE and the peers alike (default: all cores).
        max_pairs: score only the first ``max_pairs`` pairs (recorded in ``meta``).
        meta: more to record in ``results.json``'s ``meta`` (the checkpoint, the data config).
        explain: :class:`explain.ExplainSettings` to add the explainability measures of every
            pair (``results["explain"]``, ``explain.md``, ``explain_correlation.png``,
            ``gradcam_example.png``); None to skip them.
        refine: :class:`refine.RefineSettings` with ``steps > 0`` to add the method ``FIRE+IO`` (the
            network's transform refined on each pair, timed end to end like the others).
        compare: other trained models scored on the same pairs in the same tables, ``{run name: model}``;
            each model's rows are named by it (``MI-CNN``, ``MI-CNN-Affine``; ``FIRE (run)`` where a name is
            taken) and timed as ``model``'s are.
        peers: peer name (:data:`peers.PEERS`: ants, greedy, elastix) → its parameters, each peer's two
            methods registering every pair; None with no ``ants``: FIRE only.

    Returns:
        the ``results.json`` content.
    """
    threads = int(threads or os.cpu_count() or 1)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if max_pairs:
            dataset = Subset(dataset, range(min(int(max_pairs), len(dataset))))
        runs = {**({"ants": ants} if ants is not None else {}), **(peers or {})}
        bench = Benchmark(model, dataset, runs, threads, device, refine, compare)
        bench.score_all(batch_size, explain)
        bench.time_all()
        results, example = bench.results(explain), bench.example
    finally:
        torch.set_num_threads(prev_threads)
    results["meta"].update(meta or {}, max_pairs=max_pairs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty folder
    write_reports(results, out_dir)
    figures(results, example, out_dir)
    if explain is not None:
        explain_reports(results, example, out_dir)
    return results


class Benchmark:
    """One benchmark run over ``dataset`` (see :func:`evaluate`): the methods' scores pair by pair
    (:meth:`score_all`), then Table 4's timing (:meth:`time_all`), then :meth:`results`.

    Table 4 on the CPU: with peers, FIRE (and FIRE+IO) are timed on each pair just before the peers register
    it, one after another, so that all are measured over the same minutes (this machine's speed moves by 15 %
    from one minute to the next: one 4-second pass over the 120 pairs measured 24-31 ms per pair in six
    exploratory repeats); else afterwards, one pair at a time.
    """

    def __init__(self, model: FIREModule, dataset, peers: dict, threads: int, device, refine,
                 compare: dict | None = None):
        unknown = set(peers) - set(PEERS)
        if unknown:
            raise ValueError(f"unknown peers {sorted(unknown)}; the peers are {', '.join(PEERS)}")
        # each peer with the same thread count as FIRE, in the order of the tables' rows
        self.peers = {name: dataclasses.replace(peers[name], threads=threads) for name in PEERS if name in peers}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.dataset, self.threads = dataset, threads
        self.io = refine is not None and refine.steps > 0
        self.refine = refine
        # evaluation pairs with a known transform: the ceiling and affine errors
        self.known = "true_theta" in dataset[0]
        #: every model's rows, the benchmarked one's first (FIRE's rows keep the names of the FIRE paper's tables)
        self.models: list[tuple[ModelRows, object]] = [(ModelRows.of(model.net.NAME), model)]
        for tag, other in (compare or {}).items():
            rows = ModelRows.of(other.net.NAME)
            if any(rows.net == r.net for r, _ in self.models):
                rows = ModelRows.of(other.net.NAME, tag)
            self.models.append((rows, other.to(self.device).eval()))
        self.rows = self.models[0][0]
        self.methods = method_names(self.known, tuple(self.peers), self.io, self.rows) + tuple(
            m for rows, _ in self.models[1:] for m in rows.methods(self.io))
        self.per: dict = {m: {} for m in self.methods}
        self.per_explain: dict[str, list] = {}
        self.ids: list[str] = []
        self.example: dict | None = None
        self.interleaved = bool(self.peers) and self.device.type == "cpu"
        self.cpu_seconds: dict[str, list[float]] = {m: [] for m, _, _ in self.timed()}
        # the pairs' images for the timing passes (GPU, or CPU without peers)
        self.kept = KeptPairs(keep=not (self.interleaved and not torch.cuda.is_available()))
        self.gpu_name = None

    def timed(self) -> list[tuple[str, object, object]]:
        """The timed rows: ``(method, model, refine settings or None)``, each model's network and, with
        refinement, its refined row."""
        return [(m, model, r) for rows, model in self.models
                for m, r in ((rows.net, None), (rows.io, self.refine))[:1 + self.io]]

    def score_all(self, batch_size: int, explain=None) -> None:
        """Every method on every pair, batch by batch."""
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pairs)
        bar = tqdm(total=len(self.dataset), desc="benchmark" if self.peers else "evaluate", unit="pair")
        try:
            for batch in loader:
                self.score_batch(batch, bar, explain)
        finally:
            bar.close()

    def score_batch(self, batch: dict, bar, explain=None) -> None:
        """The methods' fields of one batch, their scores appended to :attr:`per`."""
        self.kept.add(batch)
        model, names, spacing = self.model, self.model.label_names, self.model.spacing
        mov, fix = batch["moving"].to(self.device), batch["fixed"].to(self.device)
        reg, fields, inverse, thetas = fire_fields(model, mov, fix, self.refine if self.io else None, self.rows)
        for rows, other in self.models[1:]:
            _, f, inv, th = fire_fields(other, mov, fix, self.refine if self.io else None, rows)
            fields.update(f)
            inverse.update(inv)
            thetas.update(th)
        one_way = {}  # peer → the pairs it did not register the other way round (no ICE)
        if self.peers:
            peer_f, peer_inv, one_way = self._peers_batch(batch, mov, fix, bar)
            fields.update(peer_f)
            inverse.update(peer_inv)
        else:
            bar.update(mov.shape[0])
        truth = None
        if self.known:
            truth, true = known_truth(batch)
            fields.update(true)
            for name in self.peers:
                thetas[PEERS[name].affine] = affine_theta(fields[PEERS[name].affine])
        scores = metrics.score_methods(batch["moving_label"], batch["fixed_label"], fields, names, spacing,
                                       inverse_fields=inverse, truth=truth, thetas=thetas if self.known else None)
        for name, pairs in one_way.items():
            for method in PEERS[name].methods if pairs else ():
                scores[method]["ice_mm"][pairs] = float("nan")
        for rows, _ in self.models if self.io else ():  # each model's refined affine part, for its non-rigid share
            shape = mov.shape[2:]
            scores[rows.io]["dice_affine_part_mean"] = metrics.dice_by_method(
                batch["moving_label"], batch["fixed_label"],
                {"a": spatial.affine_to_displacement(thetas[rows.io], shape)}, names)["a"]["dice_mean"]
        for method in self.methods:
            for key, vals in scores[method].items():
                self.per[method].setdefault(key, []).extend(vals.numpy().tolist())
        self.ids.extend(batch["id"])
        maps = None
        if explain is not None:
            maps = _explain_batch(model, batch, reg["field"], explain, self.per_explain, self.device)
        if self.example is None:
            self.example = _example(batch, {m: fields[m] for m in self.methods})
            if maps is not None:
                self.example["gradcam"] = {k: dataclasses.replace(m, cam=m.cam[:1].cpu(),
                                                                  background=m.background[:1].cpu(),
                                                                  scalar=m.scalar[:1].cpu()) for k, m in maps.items()}

    def _peers_batch(self, batch: dict, mov: torch.Tensor, fix: torch.Tensor, bar) -> tuple[dict, dict, dict]:
        """Every peer on every pair of a batch (FIRE timed just before each pair, when interleaved): the
        peers' fields, inverse fields and, per peer, the pairs it registered one way only."""
        model = self.model
        if self.interleaved and not self.cpu_seconds[self.rows.net]:  # warm-up: allocations, caches
            for _, m, r in self.timed():
                m.register(mov[:1], fix[:1], refine=r)
        outs = {name: [] for name in self.peers}
        one_way = {name: [] for name in self.peers}
        for i in range(mov.shape[0]):
            if self.interleaved:  # the models timed on the pair right before the peers: the same minutes
                for method, m, r in self.timed():
                    self.cpu_seconds[method].append(timing.seconds_to_register(m, mov[i:i + 1], fix[i:i + 1],
                                                                               refine=r))
            for name, params in self.peers.items():
                both = params.ice_every > 0 and (len(self.ids) + i) % params.ice_every == 0
                try:
                    outs[name].append(PEERS[name].register(batch["moving"][i], batch["fixed"][i], model.spacing,
                                                           params, both))
                except RuntimeError as e:
                    raise RuntimeError(f"pair {batch['id'][i]}: {e}") from None
                if not both:
                    one_way[name].append(i)
            bar.update(1)
        fields, inverse = {}, {}
        for name, out in outs.items():
            f, inv, seconds = peer_fields(out, PEERS[name].methods)
            fields.update(f)
            inverse.update(inv)
            for method, secs in seconds.items():
                self.per[method].setdefault("seconds_per_pair", []).extend(secs)
        return fields, inverse, one_way

    def time_all(self) -> None:
        """Table 4: one pair at a time, same threads as the peers; the pairs kept while scoring, else made again."""
        dataset = self.kept.pairs if self.kept.pairs is not None else self.dataset
        for method, model, r in self.timed():
            self.per[method]["seconds_per_pair"] = (self.cpu_seconds[method] if self.interleaved else
                                                    timing.time_register(model, dataset, torch.device("cpu"), refine=r))
        if torch.cuda.is_available():
            for method, model, r in self.timed():
                self.per[method]["seconds_per_pair_gpu"] = timing.time_register(
                    model, dataset, torch.device("cuda"), refine=r, **({} if r is not None else {"repeats": 5}))
            self.gpu_name = torch.cuda.get_device_name(0)
        for _, model in self.models:
            model.to(self.device)

    def results(self, explain=None) -> dict:
        """The ``results.json`` content, without the caller's extra meta."""
        methods, per, model, net = self.methods, self.per, self.model, self.rows.net
        summary = {m: {k: summarise(v) for k, v in per[m].items()} for m in methods}
        results = {
            "methods": summary,
            "nonrigid_share": nonrigid_shares(summary),
            "paired": {f"{a} vs {m}": paired(summary[a]["dice_mean"], summary[m]["dice_mean"])
                       for a in (net, self.rows.io) if a in summary for m in methods
                       if m != a and (a == net or m == net or m in PEER_METHODS)},
            "pair_ids": self.ids,
            "structures": list(model.label_names.values()),
            "meta": {
                "model": model.net.NAME, "compared": [rows.net for rows, _ in self.models[1:]],
                "n_pairs": len(self.ids), "device": str(self.device), "spacing_mm": list(model.spacing),
                "iterations": int(model.iteration), "threads": self.threads, "cpu": cpu_name(),
                "cpu_count": os.cpu_count(), "gpu": self.gpu_name, "torch": torch.__version__,
                "timing": "seconds per pair, one pair at a time; FIRE = model.register (both fields, warped image) "
                          "after one warm-up call; a peer = its registration calls (ANTs: ants.registration; its "
                          "deformable method includes its affine stage)"
                          + (f"; FIRE and FIRE+IO timed on each pair just before {tool_names(self.peers)} register it"
                             if self.interleaved else ""),
                "peers": list(self.peers),
                "ants": self.peers["ants"].record() if "ants" in self.peers else None,
                **{name: p.record() for name, p in self.peers.items() if name != "ants"},
                "refine": dataclasses.asdict(self.refine) if self.io else None,
            },
        }
        if explain is not None:
            from .explain_report import correlations
            from .explain_report import summarise as summarise_explain

            dice = {m: per[m]["dice_mean"] for m in ("FIRE", "FIRE-Affine")}  # Grad-CAM explains FIRE only
            example = self.example
            results["explain"] = {"settings": dataclasses.asdict(explain),
                                  "measures": summarise_explain(self.per_explain),
                                  "correlations": correlations(self.per_explain, dice),
                                  "maps": list(example["gradcam"]) if example and "gradcam" in example else []}
        return results


#: Grad-CAM runs on this many voxels' worth of pairs at a time (they keep activations and gradients):
#: 16 of the 2D phantom's 64x72 pairs (a quarter faster per pair than 4 on the 2-core CPU), one 3D volume
EXPLAIN_CHUNK_VOXELS = 16 * 64 * 72


def _explain_batch(model: FIREModule, batch: dict, field: torch.Tensor, settings, per: dict, device,
                   chunk: int | None = None) -> dict:
    """Grad-CAM maps of a batch (``chunk`` pairs at a time; default: :data:`EXPLAIN_CHUNK_VOXELS`' worth)
    and their per-pair measures, appended to ``per`` (``{key: [floats]}``); returns the first chunk's maps."""
    from .explain import explain_pair
    from .explain_report import pair_values

    chunk = chunk or max(1, EXPLAIN_CHUNK_VOXELS // batch["moving"][0].numel())
    first = None
    for lo in range(0, batch["moving"].shape[0], chunk):
        sl = slice(lo, lo + chunk)
        labels = {"A": batch["moving_label"][sl].to(device), "B": batch["fixed_label"][sl].to(device)}
        maps = explain_pair(model.net, batch["moving"][sl].to(device), batch["fixed"][sl].to(device), settings,
                            fixed_label=labels["B"], moving_label=labels["A"])
        for k, v in pair_values(maps, field[sl].to(device), labels, model.label_names).items():
            per.setdefault(k, []).extend(v)
        first = first or maps
    return first


def _example(batch: dict, fields: dict) -> dict:
    """The first pair of a batch with every method's field, on the CPU."""
    return {"moving": batch["moving"][0], "fixed": batch["fixed"][0], "fixed_label": batch["fixed_label"][0],
            "moving_label": batch["moving_label"][0], "id": batch["id"][0],
            "fields": {m: (None if u is None else u[0].cpu()) for m, u in fields.items()}}
