"""The classical peers beside ANTs (Greedy, elastix): they register tiny 2D and 3D pairs, their fields mean what
ANTs' mean, a failed call is tried once more and then named, and ``fire benchmark --peers`` runs them."""

from __future__ import annotations

import json

import pytest
import torch

from fire_lightning import metrics, spatial
from fire_lightning.peers import PEERS, parse_peers
from fire_lightning.peers.common import PeerFailed

from .conftest import PHANTOM2D
from .test_baselines import _pair

pytestmark = pytest.mark.usefixtures("single_thread")

#: quick settings for tiny images (the defaults are tuned for the 64 x 72 demo)
FAST = {"greedy": dict(threads=1, affine_iterations=(50, 20), iterations=(30, 10)),
        "elastix": dict(threads=1, affine_resolutions=2, resolutions=2, affine_iterations=100, iterations=100,
                        grid_spacing_mm=16.0)}
TOOLS = ("greedy", "elastix")
#: one attempt's calls, counted: Greedy's affine from one start (a start of several that fails is only dropped)
ONE_START = {"greedy": dict(FAST["greedy"], rotation_starts=0), "elastix": FAST["elastix"]}


def _pair3d():
    """A two-structure ellipsoid and a copy shifted by (2, -1, 1) voxels, with another contrast: ``(1, 24, 22, 18)``."""
    shape = (24, 22, 18)
    ii, jj, kk = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    r = ((ii - 12) / 8) ** 2 + ((jj - 11) / 7) ** 2 + ((kk - 9) / 5.5) ** 2
    lab = torch.zeros(1, *shape, dtype=torch.long)
    lab[0][r < 1] = 1
    lab[0][(((ii - 13) / 4) ** 2 + ((jj - 10) / 3) ** 2 + ((kk - 9) / 3) ** 2) < 1] = 2
    fixed = torch.tensor([-1.0, 0.6, -0.2])[lab]
    lab_m = torch.roll(lab, (2, -1, 1), dims=(1, 2, 3))
    moving = torch.tensor([-1.0, -0.3, 0.9])[lab_m]
    return moving, fixed, lab_m, lab


def _scores(out: dict, lab_m, lab_f, spacing, inverse: bool) -> dict:
    fields = {name: r["field"][None] for name, r in out.items()}
    fields["Unaligned"] = None
    inv = {name: r["inverse"][None] for name, r in out.items()} if inverse else None
    return metrics.score_methods(lab_m[None], lab_f[None], fields, {1: "ring", 2: "core"}, spacing, inverse_fields=inv)


@pytest.mark.parametrize("tool", TOOLS)
def test_a_peer_registers_a_tiny_multimodal_2d_pair_with_the_project_s_field_convention(tool, tmp_path,
                                                                                          monkeypatch):
    moving, fixed, lab_m, lab_f = _pair()
    spacing = (2.0, 1.5)
    peer = PEERS[tool]
    monkeypatch.chdir(tmp_path)
    out = peer.register(moving, fixed, spacing, peer.make_params(**FAST[tool]), True)
    assert set(out) == set(peer.methods) and not list(tmp_path.iterdir())  # nothing written where it ran
    scores = _scores(out, lab_m, lab_f, spacing, inverse=True)
    assert scores["Unaligned"]["dice_mean"][0] < 0.75
    for name, r in out.items():
        assert r["field"].shape == r["inverse"].shape == (2, 40, 36) and r["seconds"] > 0
        assert scores[name]["dice_mean"][0] > 0.85, name
        assert scores[name]["folding_pct"][0] == 0, name
        assert scores[name]["ice_mm"][0] < 4.0, name  # a flipped convention: about 2 × 6.7 mm
        # our warp with the converted field reproduces the tool's own warped image (the same convention)
        ours = spatial.warp(moving[None], r["field"][None])[0]
        diff = (ours - r["warped"]).abs()[..., 4:-4, 4:-4]
        assert diff.mean() < 0.05, name
    # as ANTs' (tests/test_baselines.py): fixed point p lies at p + (3, -2) voxels in the moving image
    t_vox = spatial.normalised_to_voxel(out[peer.affine]["field"][None])[0].mean(dim=(1, 2))
    assert torch.allclose(t_vox, torch.tensor([3.0, -2.0]), atol=0.5), t_vox


@pytest.mark.parametrize("tool", TOOLS)
def test_a_peer_registers_a_tiny_3d_pair(tool):
    moving, fixed, lab_m, lab_f = _pair3d()
    spacing = (2.0, 2.0, 2.5)
    peer = PEERS[tool]
    out = peer.register(moving, fixed, spacing, peer.make_params(**FAST[tool]), False)
    scores = _scores(out, lab_m, lab_f, spacing, inverse=False)
    for name, r in out.items():
        assert r["field"].shape == (3, 24, 22, 18) and "inverse" not in r
        assert scores[name]["dice_mean"][0] > scores["Unaligned"]["dice_mean"][0] + 0.2, name
    t_vox = spatial.normalised_to_voxel(out[peer.affine]["field"][None])[0].mean(dim=(1, 2, 3))
    assert torch.allclose(t_vox, torch.tensor([2.0, -1.0, 1.0]), atol=0.5), t_vox


def _flaky_greedy(monkeypatch, fail: int, nan: bool = False, bad=None) -> list:
    """Greedy whose affine calls fail ``fail`` times (raise, or with ``nan`` hand back ``bad``: by default a
    NaN matrix)."""
    import numpy as np
    import picsl_greedy

    calls, real = [], picsl_greedy.Greedy2D

    class Flaky:
        def __init__(self):
            self.g, self.nan = real(), False

        def execute(self, command, **kw):
            if " -a " in command:
                calls.append((id(self), command))
                if len(calls) <= fail:
                    if not nan:
                        raise RuntimeError("greedy: a tool failure")
                    self.nan = True
                    return None
                self.nan = False
            return self.g.execute(command, **kw)

        def __getitem__(self, key):
            if key.startswith("aff") and self.nan:
                return np.full((3, 3), np.nan) if bad is None else np.asarray(bad)
            return self.g[key]

        def metric_log(self):
            return self.g.metric_log()

    monkeypatch.setattr(picsl_greedy, "Greedy2D", Flaky)
    return calls


def _flaky_elastix(monkeypatch, fail) -> list:
    """elastix whose first ``fail`` calls raise (or the calls numbered in ``fail``, a set)."""
    import itk

    calls, real = [], itk.elastix_registration_method
    fail = set(range(1, fail + 1)) if isinstance(fail, int) else fail

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) in fail:
            raise RuntimeError("elastix: too many samples map outside moving image buffer")
        return real(*args, **kwargs)

    monkeypatch.setattr(itk, "elastix_registration_method", flaky)
    return calls


@pytest.mark.parametrize("tool", TOOLS)
def test_a_failed_peer_call_is_tried_once_more_and_a_second_failure_is_an_error(tool, monkeypatch):
    moving, fixed, _, _ = _pair()
    peer = PEERS[tool]
    params = peer.make_params(**ONE_START[tool])
    flaky = _flaky_greedy if tool == "greedy" else _flaky_elastix
    calls = flaky(monkeypatch, fail=1)
    out = peer.register(moving, fixed, (1.0, 1.0), params, False)
    assert out[peer.deformable]["field"].shape == (2, 40, 36)
    # the affine twice: Greedy's two stages (similarity, affine) the second time; then elastix's B-spline call
    assert len(calls) == 3
    monkeypatch.undo()
    flaky(monkeypatch, fail=2)
    with pytest.raises(PeerFailed, match=f"{peer.tool} failed twice"):
        peer.register(moving, fixed, (1.0, 1.0), params, False)


def test_a_failed_deformable_stage_starts_the_peer_again_from_its_affine_stage(monkeypatch):
    moving, fixed, _, _ = _pair()
    peer = PEERS["elastix"]
    calls = _flaky_elastix(monkeypatch, fail={2})  # the B-spline call of the first attempt
    out = peer.register(moving, fixed, (1.0, 1.0), peer.make_params(**FAST["elastix"]), False)
    assert len(calls) == 4 and out["elastix-B-spline"]["seconds"] > out["elastix-Affine"]["seconds"] > 0


def test_a_nan_result_counts_as_a_failure(monkeypatch):
    moving, fixed, _, _ = _pair()
    peer = PEERS["greedy"]
    calls = _flaky_greedy(monkeypatch, fail=2, nan=True)
    with pytest.raises(PeerFailed, match="Greedy failed twice: Greedy's affine returned non-finite values"):
        peer.register(moving, fixed, (1.0, 1.0), peer.make_params(**ONE_START["greedy"]), False)
    assert len(calls) == 2
    assert calls[0][0] != calls[1][0]  # the second attempt with a new Greedy object, not the one that failed


def test_a_diverged_affine_counts_as_a_failure_and_names_its_scales(monkeypatch):
    """A finite matrix whose scales are absurd (Greedy's affine reached about 11 on a test pair, and its
    deformable stage then returned only NaN) is a failure of the affine stage, not of the deformable one."""
    import numpy as np

    from fire_lightning.peers.common import check_scales

    moving, fixed, _, _ = _pair()
    peer = PEERS["greedy"]
    calls = _flaky_greedy(monkeypatch, fail=2, nan=True, bad=[[2.2, 10.3, 94.1], [-10.3, 2.2, -15.7], [0, 0, 1]])
    with pytest.raises(PeerFailed, match=r"Greedy's affine diverged: its scales are 10.5, 10.5"):
        peer.register(moving, fixed, (1.0, 1.0), peer.make_params(**ONE_START["greedy"]), False)
    assert len(calls) == 2
    check_scales("an affine", [[1.5, 0.3, 9.0], [-0.2, 0.6, -4.0], [0, 0, 1]])  # the test pairs' range passes
    with pytest.raises(RuntimeError, match="an affine diverged: its scales are 1, 1, 0.05"):
        check_scales("an affine", np.diag([1.0, 1.0, 0.05, 1.0]))


def test_a_greedy_start_that_fails_is_dropped_and_every_start_failing_fails_the_attempt(monkeypatch):
    """With several starts, the first start's failing call only drops that start (no retry); when every start of
    the first attempt fails, the second attempt runs them all again."""
    moving, fixed, _, _ = _pair()
    peer = PEERS["greedy"]
    params = peer.make_params(**FAST["greedy"])
    calls = _flaky_greedy(monkeypatch, fail=1)
    out = peer.register(moving, fixed, (1.0, 1.0), params, False)
    assert out["Greedy"]["field"].shape == (2, 40, 36)
    assert len(calls) == 1 + 2 * (len(params.rotation_starts) - 1)  # one failed call, the other starts' two each
    monkeypatch.undo()
    calls = _flaky_greedy(monkeypatch, fail=len(params.rotation_starts))  # each start's first call, once
    peer.register(moving, fixed, (1.0, 1.0), params, False)
    assert len(calls) == 3 * len(params.rotation_starts)


def test_greedy_s_turned_starts_find_a_rotation_that_one_start_misses():
    """An ellipse with an off-centre blob, turned by 75° and given another contrast: Greedy's affine from the
    centres of mass alone ends in the wrong orientation; from the seven turned starts it finds it."""
    import math

    shape = (48, 48)
    ii, jj = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    lab = torch.zeros(1, *shape, dtype=torch.long)
    lab[0][(((ii - 24) / 16) ** 2 + ((jj - 24) / 9) ** 2) < 1] = 1
    lab[0][(((ii - 30) / 5) ** 2 + ((jj - 20) / 4) ** 2) < 1] = 2
    a = math.radians(75.0)
    theta = torch.tensor([[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]])
    lab_m = spatial.warp_labels(lab[None], spatial.affine_to_displacement(theta, shape))[0]
    fixed, moving = torch.tensor([-1.0, 0.6, -0.2])[lab], torch.tensor([-1.0, -0.3, 0.9])[lab_m]
    peer, dice = PEERS["greedy"], {}
    for starts in ((0,), (0, -10, 10, -20, 20, -30, 30)):
        out = peer.register(moving, fixed, (2.0, 2.0), peer.make_params(**dict(FAST["greedy"], rotation_starts=starts)),
                            False)
        dice[len(starts)] = _scores({"A": out["Greedy-Affine"]}, lab_m, lab, (2.0, 2.0), False)["A"]["dice_mean"][0]
    assert dice[1] < 0.6 and dice[7] > 0.8, dice


def test_greedy_keeps_the_start_of_lowest_final_metric():
    """:func:`_best_of_starts` on stand-in chains: each reads its start's angle back from the matrix file; the
    lowest metric wins, a start that raises is dropped, and all raising names every start."""
    import numpy as np

    from fire_lightning.peers.greedy import _best_of_starts, _to_sitk

    f = _to_sitk(torch.zeros(1, 40, 36), (2.0, 1.5), False)

    class Chain:
        def __init__(self, path):
            m = np.loadtxt(path)
            self.angle = round(float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))))
            if self.angle in bad:
                raise RuntimeError(f"diverged at {self.angle}")

        def metric_log(self):
            return [{"TotalPerPixelMetric": [0.0, abs(self.angle - 20) - 100.0]}]

    bad = {-30}
    assert _best_of_starts(np.eye(3), (0, -20, 20, -30, 30), f, Chain).angle == 20
    bad = {20, 30}
    assert _best_of_starts(np.eye(3), (0, -20, 20, -30, 30), f, Chain).angle == 0
    bad = {0, 20}
    with pytest.raises(RuntimeError, match="failed from every start \\(0°: diverged at 0; 20°: diverged at 20\\)"):
        _best_of_starts(np.eye(3), (0, 20), f, Chain)
    with pytest.raises(RuntimeError, match="^diverged at 0$"):  # one start: its own error
        _best_of_starts(np.eye(3), (0,), f, Chain)


@pytest.mark.parametrize("centred", [False, True])
def test_greedy_s_start_is_turned_about_the_fixed_grid_s_centre(centred, tmp_path):
    """The start matrix (Greedy's RAS, fixed → moving) is ``base`` after a turn about the fixed grid's centre:
    that centre goes where ``base`` sends it, and the linear part is ``base``'s times the turn."""
    import numpy as np

    from fire_lightning.peers.greedy import _to_sitk, _turned_start

    f = _to_sitk(torch.zeros(1, 40, 36), (2.0, 1.5), centred)
    lps = np.array(f.TransformContinuousIndexToPhysicalPoint([19.5, 17.5]))
    centre = np.array([*(-lps), 1.0])  # RAS
    base = np.array([[1.1, 0.1, 4.0], [-0.2, 0.9, -3.0], [0.0, 0.0, 1.0]])
    m = np.loadtxt(_turned_start(base, 90.0, f, str(tmp_path / "s.mat")))
    assert np.allclose(m @ centre, base @ centre)
    assert np.allclose(m[:2, :2], base[:2, :2] @ np.array([[0.0, -1.0], [1.0, 0.0]]))
    assert np.allclose(np.loadtxt(_turned_start(base, 0.0, f, str(tmp_path / "z.mat"))), base)


def test_greedy_multi_starts_and_pads_in_2d_only():
    params = PEERS["greedy"].make_params
    p = params()
    assert p.starts(2) == (0.0, -10.0, 10.0, -20.0, 20.0, -30.0, 30.0) and p.starts(3) == (0.0,)
    two, three = p.affine_commands(1, (64, 72)), p.affine_commands(1, (48, 56, 48))
    assert all(" -ref-pad 8x8 " in c for c, _ in two) and not any("-ref-pad" in c for c, _ in three)
    assert two[0][0].count("-ia start.mat") == 1 and "-ia aff0" in two[1][0]
    assert not any("-ref-pad" in c for c, _ in params(ref_pad=0).affine_commands(1, (64, 72)))
    assert params(rotation_starts=0).starts(2) == (0.0,) and params(start_dims=(2, 3)).starts(3) == p.starts(2)
    with pytest.raises(ValueError, match="at least one angle"):
        params(rotation_starts=())
    with pytest.raises(ValueError, match="not 'moment'"):
        params(affine_init="moment")


def test_elastix_refuses_its_bending_penalty_on_several_threads():
    moving, fixed, _, _ = _pair()
    with pytest.raises(ValueError, match="bending-energy penalty"):
        PEERS["elastix"].register(moving, fixed, (1.0, 1.0), PEERS["elastix"].make_params(bending_weight=1.0,
                                                                                          threads=2), False)


def test_greedy_s_stationary_velocity_mode_is_one_flag_of_its_deformable_call_only():
    params = PEERS["greedy"].make_params
    plain, sv = params(), params(stationary_velocity=True)
    assert " -sv" not in plain.deformable_command(1)
    assert sv.deformable_command(1) == plain.deformable_command(1).replace(" -o warp", " -sv -o warp")
    assert sv.affine_commands(1) == plain.affine_commands(1)


def test_greedy_leaves_out_affine_levels_coarser_than_its_minimum():
    """No level narrower than 24 voxels: the 2D demo's 64 × 72 keeps 32 × 36 and 64 × 72; a 3D volume of 48
    voxels keeps 24 and 48 (at 12, Greedy's affine diverged on a test pair)."""
    p = PEERS["greedy"].make_params()
    assert p.affine_levels((64, 72)) == (200, 100) and p.affine_levels(None) == (200, 200, 100)
    assert p.affine_levels((48, 56, 48)) == (200, 100) and p.affine_levels((10, 12)) == (100,)
    assert PEERS["greedy"].make_params(min_level_voxels=16).affine_levels((64, 72)) == (200, 200, 100)
    assert "-n 200x100 " in p.affine_commands(1, (48, 56, 48))[-1][0]
    searched = PEERS["greedy"].make_params(search=(1000, 20, 10)).affine_commands(1)
    assert "-search 1000 20 10" in searched[0][0] and "-search" not in searched[1][0]  # the first stage only


@pytest.mark.parametrize("shape", [(40, 36), (24, 22, 18)])
def test_greedy_s_images_can_have_their_centre_at_the_physical_origin(shape):
    """Greedy's affine acts about the physical origin: with ``centre_origin`` it turns the image about its
    centre; by default the origin is the first voxel."""
    from fire_lightning.peers.greedy import _to_sitk

    x, spacing = torch.zeros(1, *shape), (2.0, 1.5, 3.0)[:len(shape)]
    img = _to_sitk(x, spacing, True)
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
    assert img.GetSize() == shape and img.GetSpacing() == spacing
    assert centre == pytest.approx((0.0,) * len(shape), abs=1e-9)
    assert _to_sitk(x, spacing, False).GetOrigin() == (0.0,) * len(shape)


def test_elastix_s_b_spline_grid_follows_the_images_dimension_unless_set():
    params = PEERS["elastix"].make_params
    grids = {n: params().maps(1, n)[1]["FinalGridSpacingInPhysicalUnits"] for n in (2, 3)}
    assert float(grids[2][0]) == 18.0 and float(grids[3][0]) == 42.0
    assert params(grid_spacing_mm=30.0).grid_spacing(2) == params(grid_spacing_mm=30.0).grid_spacing(3) == 30.0
    assert set(params().record()["bspline_maps"]) == {"2D", "3D"}


def test_peers_parse_in_table_order_and_an_unknown_name_lists_the_known_ones(capsys):
    from fire_lightning.cli import COMMANDS
    from fire_lightning.cli_parser import build_parser

    assert parse_peers("elastix, ants,greedy") == ("ants", "greedy", "elastix")
    parser = build_parser(COMMANDS)
    assert parser.parse_args(["benchmark", "RUN"]).peers == ("ants",)
    assert parser.parse_args(["benchmark", "RUN", "--peers", "greedy,ANTs"]).peers == ("ants", "greedy")
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark", "RUN", "--peers", "ants,simpleelastix"])
    err = capsys.readouterr().err
    assert "unknown peer 'simpleelastix'" in err and "ants, greedy, elastix" in err
    with pytest.raises(ValueError, match="unknown peer ''"):
        parse_peers("ants,")


def test_the_methods_and_their_affine_parts_with_every_peer():
    from fire_lightning.benchmark_methods import AFFINE_PARTS, METHODS, method_names

    assert method_names(False, ("ants",), False) == METHODS
    assert method_names(False, True, False) == METHODS and method_names(False, (), False)[1] == "FIRE-Affine"
    assert method_names(True, ("elastix", "greedy", "ants"), True) == (
        "True", "True-Affine", "Unaligned", "ANTs-Affine", "Greedy-Affine", "elastix-Affine", "FIRE-Affine",
        "ANTs-SyN", "Greedy", "elastix-B-spline", "FIRE", "FIRE+IO")
    assert AFFINE_PARTS["Greedy"] == "Greedy-Affine" and AFFINE_PARTS["elastix-B-spline"] == "elastix-Affine"


def test_the_benchmark_scores_and_times_greedy_beside_fire_and_names_a_failing_pair(tiny_overrides, tmp_path,
                                                                                     monkeypatch):
    """``evaluate`` with ``peers``: Greedy's rows in the tables, timed on each pair right after FIRE, its
    parameters recorded; a pair on which it fails twice stops the benchmark with the pair's name."""
    from fire_lightning import benchmark_timing
    from fire_lightning import evaluate as ev
    from fire_lightning.config import load_config
    from fire_lightning.module import FIREModule
    from fire_lightning.train import make_datamodule

    cfg = load_config(PHANTOM2D, tiny_overrides)
    dm = make_datamodule(cfg)
    pairs = dm.test_dataset()
    model = FIREModule(cfg, label_names=dm.label_names, spacing=dm.spacing)
    events = []
    real = benchmark_timing.seconds_to_register
    monkeypatch.setattr(benchmark_timing, "seconds_to_register", lambda *a, **k: events.append("FIRE") or real(*a, **k))
    greedy = PEERS["greedy"]
    real_register = greedy.register

    def traced(self, *a, **k):
        events.append(self.tool)
        return real_register(*a, **k)

    monkeypatch.setattr(type(greedy), "register", traced)
    params = greedy.make_params(threads=4, ice_every=2, affine_iterations=(50, 20), iterations=(20, 10))
    results = ev.evaluate(model, pairs, tmp_path / "bm", threads=1, peers={"greedy": params})
    assert events == ["FIRE", "Greedy"] * len(pairs)
    assert list(results["methods"]) == ["True", "True-Affine", "Unaligned", "Greedy-Affine", "FIRE-Affine", "Greedy",
                                        "FIRE"]
    meta = results["meta"]
    assert meta["peers"] == ["greedy"] and meta["ants"] is None and meta["greedy"]["threads"] == 1  # FIRE's threads
    assert "just before Greedy register" in meta["timing"] and "-threads 1" in meta["greedy"]["deformable_call"]
    for method in ("Greedy-Affine", "Greedy"):
        res = results["methods"][method]
        assert all(v > 0 for v in res["seconds_per_pair"]["values"])
        assert res["ice_mm"]["values"][0] is not None and res["ice_mm"]["values"][1] is None  # ice_every=2
    assert "affine_err_mm" in results["methods"]["Greedy-Affine"] and "Greedy" in results["nonrigid_share"]
    md = (tmp_path / "bm" / "results.md").read_text()
    assert "| Greedy | CPU, 1 threads |" in md and "ICE of Greedy-Affine and Greedy: over the 1 of the 2 pairs" in md
    _flaky_greedy(monkeypatch, fail=2 * len(params.rotation_starts))  # every start of both attempts
    with pytest.raises(RuntimeError, match=f"pair {pairs[0]['id']}: Greedy failed twice"):
        ev.evaluate(model, pairs, tmp_path / "bm2", threads=1, peers={"greedy": params})


def test_the_shift_benchmark_scores_a_peer_one_way_at_every_level(tmp_path):
    """``fire benchmark --shift --peers greedy``: Greedy's rows at each level, beside FIRE's, with no
    swapped registrations (the shift benchmark reports no ICE)."""
    from omegaconf import OmegaConf

    from data_modules.shift import FACTORS
    from fire_lightning.config import data_section, load_config
    from fire_lightning.inference import InferenceModel
    from fire_lightning.shift import run_shift

    from .conftest import TINY

    model = InferenceModel(OmegaConf.to_container(load_config(PHANTOM2D, TINY), resolve=True)).eval()
    rotation = next(f for f in FACTORS if f.name == "rotation_deg")
    params = PEERS["greedy"].make_params(**FAST["greedy"], ice_every=1)
    out = run_shift(model, data_section(load_config(PHANTOM2D)), tmp_path / "shift", threads=1, factors=(rotation,),
                    max_per_level=1, peers={"greedy": params})
    assert [r["level"] for r in out["rows"]] == list(rotation.levels)
    assert all("Greedy" in r and "Greedy-Affine" in r and "FIRE" in r for r in out["rows"])
    assert all(r["Greedy"]["mean"] > r["Unaligned"]["mean"] for r in out["rows"])
    assert "| Greedy-Affine | Greedy |" in (tmp_path / "shift" / "shift.md").read_text()
    pairs = json.loads((tmp_path / "shift" / "pairs" / "results.json").read_text())
    assert all(v is None for v in pairs["methods"]["Greedy"]["ice_mm"]["values"])
