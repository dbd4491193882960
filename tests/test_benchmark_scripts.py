"""The measurement scripts in benchmarks/ run, compare what they say they compare, and refuse bad input."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .conftest import PHANTOM2D, ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_times_every_variant_in_turns_and_restores_the_cost_volume_route(tiny_overrides, tmp_path):
    from fire_lightning.nets import cost_volume

    interleaved = _script("interleaved")
    out = tmp_path / "cmp.json"
    default = cost_volume.DENSE_POINTS_PER_OFFSET
    result = interleaved.main([str(PHANTOM2D), *tiny_overrides,
                               "--variant", "model.channels_last=false conv3d=torch cost_volume=24",
                               "--variant", "model.channels_last=true cost_volume=shifted norm=instance",
                               "--rounds", "2", "--skip", "1", "--threads", "1", "--out", str(out)])
    assert cost_volume.DENSE_POINTS_PER_OFFSET == default
    assert json.loads(out.read_text()) == result
    rows = result["variants"]
    assert list(rows) == ["model.channels_last=false conv3d=torch cost_volume=24",
                          "model.channels_last=true cost_volume=shifted norm=instance"]
    for row in rows.values():
        assert row["rounds"] == 1 and row["register_calls"] == 4
        assert (0 < row["step_ms_min"] <= row["step_ms_median"]
                and 0 < row["register_ms_min"] <= row["register_ms_median"])
    with pytest.raises(SystemExit, match="cost_volume must be one of"):
        interleaved.main([str(PHANTOM2D), *tiny_overrides, "--variant", "cost_volume=fast"])
    with pytest.raises(SystemExit, match="conv3d must be one of"):
        interleaved.main([str(PHANTOM2D), *tiny_overrides, "--variant", "conv3d=cudnn"])


def test_step_ops_attributes_every_op_of_the_step_to_a_call_site(tiny_overrides, tmp_path):
    out = tmp_path / "ops.json"
    result = _script("step_ops").main([str(PHANTOM2D), *tiny_overrides, "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["ops"] == result["forward"] + result["backward"] == sum(result["by_site"].values())
    assert result["by_site"]["(backward)"] == result["backward"] and result["forward"] > 100
    assert sum(result["by_op"].values()) == result["ops"]
    assert result["host_syncs"] == 0 and result["host_copies"] == {}


def test_interleaved_conv3d_torch_gives_the_networks_3d_convolutions_torchs_forward():
    import torch

    from fire_lightning.nets.blocks import Conv3d, conv

    net = torch.nn.Sequential(conv(3, 1, 2, 3, padding=1), torch.nn.Sequential(conv(3, 2, 2, 3, padding=1)),
                              conv(2, 2, 2, 3))
    x = torch.randn(1, 1, 5, 5, 5)
    before = net[1](net[0](x))
    _script("interleaved")._torch_conv3d(net)
    assert [type(m) for m in (net[0], net[1][0], net[2])] == [torch.nn.Conv3d, torch.nn.Conv3d, torch.nn.Conv2d]
    assert not any(isinstance(m, Conv3d) for m in net.modules())
    torch.testing.assert_close(net[1](net[0](x)), before)
