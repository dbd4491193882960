"""Data keys that moved into their dataset's section (``schema.RENAMED_KEYS``) still load under their
old names, from the command line, an experiment file, a run's saved config and a checkpoint's, with a
warning that names the new key."""

import warnings

import pytest
import torch
from omegaconf import OmegaConf

from fire_lightning.config import load_config
from fire_lightning.inference import InferenceModel
from fire_lightning.module import FIREModule
from fire_lightning.schema import RENAMED_KEYS, rename_old_keys

from .conftest import PHANTOM2D, TINY

OLD_VALUES = {"phantom_seed": 3, "noise_std": 0.05, "bias_strength": 0.1,
              "split": {"blocks": 2, "gap_mm": 4.0, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}},
              "releases": {"mrbrains18": "train18"}, "files": {"mrbrains18": {"T1": ["t1.nii"]}},
              "acdc_subsets": ["training", "testing"], "slice_spacing": 8.0, "acdc_augment": True}


def _old_style(cfg) -> dict:
    """``cfg`` saved as before the data sections: every renamed key at its old flat place."""
    saved = OmegaConf.to_container(cfg, resolve=True)
    for section in ("phantom", "mrbrains", "acdc"):
        del saved["data"][section]
    saved["data"].update(OLD_VALUES)
    return saved


def _check_new_places(data) -> None:
    assert data.phantom.seed == 3 and data.phantom.noise_std == 0.05 and data.phantom.bias_strength == 0.1
    assert data.phantom.split.blocks == 2 and data.phantom.split.fractions.train == 0.6
    assert data.mrbrains.releases["mrbrains18"] == "train18" and data.mrbrains.files["mrbrains18"]["T1"] == ["t1.nii"]
    assert list(data.acdc.subsets) == ["training", "testing"] and data.acdc.slice_spacing == 8.0 and data.acdc.augment


def test_every_renamed_key_names_a_key_of_the_schema():
    cfg = load_config(PHANTOM2D)
    renamed = {old: new for old, new in RENAMED_KEYS.items() if old.startswith("data.")}
    assert len(renamed) == 9
    for old, new in renamed.items():
        assert OmegaConf.select(cfg, old) is None
        assert OmegaConf.select(cfg, new, default="missing") != "missing", new


def test_old_keys_on_the_command_line_are_renamed_with_a_warning_naming_the_new_key():
    with pytest.warns(FutureWarning, match=r"data\.split\.blocks → data\.phantom\.split\.blocks"):
        cfg = load_config(PHANTOM2D, ["data.split.blocks=2", "data.phantom_seed=3", "data.acdc_augment=true"])
    assert cfg.data.phantom.split.blocks == 2 and cfg.data.phantom.seed == 3 and cfg.data.acdc.augment
    assert load_config(PHANTOM2D, ["data.phantom.seed=4"]).data.phantom.seed == 4


def test_an_old_experiment_file_and_a_run_folders_saved_config_load(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(_old_style(load_config(PHANTOM2D)))))
    with pytest.warns(FutureWarning, match=r"data\.acdc_subsets → data\.acdc\.subsets"):
        cfg = load_config(path, ["data.noise_std=0.05"])
    _check_new_places(cfg.data)
    assert cfg.data.size == load_config(PHANTOM2D).data.size


def test_an_old_checkpoints_config_builds_both_models_with_the_same_values():
    saved = _old_style(load_config(PHANTOM2D, TINY))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        light, full = InferenceModel(saved), FIREModule(saved)
    _check_new_places(light.cfg.data)
    _check_new_places(full.cfg.data)
    assert "phantom_seed" not in full.hparams["cfg"]["data"] and full.hparams["cfg"]["data"]["phantom"]["seed"] == 3
    light.net.load_state_dict(full.net.state_dict())
    x = torch.rand(1, 1, *saved["data"]["size"]) * 2 - 1
    assert torch.equal(light.eval().register(x, x)["field"], full.eval().register(x, x)["field"])


def test_a_config_without_old_keys_comes_back_equal_and_without_a_warning():
    plain = OmegaConf.to_container(load_config(PHANTOM2D))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rename_old_keys(plain, source="file") == plain
