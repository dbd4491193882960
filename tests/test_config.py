from __future__ import annotations

import pytest

from fire_lightning.config import ConfigError, load_config

from .conftest import PHANTOM2D


def test_yaml_and_overrides_reach_the_typed_config():
    cfg = load_config(PHANTOM2D, ["trainer.max_steps=2000", "model.synthesis.width=16"])
    assert cfg.trainer.max_steps == 2000
    assert cfg.model.synthesis.width == 16
    assert cfg.experiment == "phantom2d"
    # a value from the YAML, and a schema default the YAML does not set
    assert cfg.data.size == [64, 72]
    assert cfg.optim.grad_clip == 1.0


def test_misspelt_key_in_override_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"model\.synthesis\.widht.*did you mean 'model\.synthesis\.width'"):
        load_config(PHANTOM2D, ["model.synthesis.widht=16"])


def test_misspelt_key_in_yaml_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_stpes: 10\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*max_stpes"):
        load_config(bad)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(None, ["trainer.max_steps=lots"])


def test_bad_similarity_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'lncc'"):
        load_config(None, ["model.loss.similarity=lnc"])


def test_size_must_fit_the_encoder():
    with pytest.raises(ConfigError, match="divisible by 4"):
        load_config(None, ["data.size=[62,64]"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_misspelt_nested_split_key_and_bad_list_values_are_errors():
    with pytest.raises(ConfigError, match="tset"):
        load_config(PHANTOM2D, ["data.split.fractions.tset=0.5"])
    with pytest.raises(ConfigError, match="data.size"):
        load_config(PHANTOM2D, ["data.size=[64,7x]"])
    with pytest.raises(ConfigError, match="change_range needs 2 values"):
        load_config(PHANTOM2D, ["data.augment.change_range=[0.2]"])


def test_a_malformed_override_value_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot parse overrides"):
        load_config(None, ["data.structures={WM:[3]}"])  # YAML flow mappings need "key: value"


@pytest.mark.parametrize("override,message", [
    ("model.affine.weighting=apperture", "model.affine.weighting"),
    ("model.affine.passes_eval=0", "model.affine.passes_eval"),
    ("model.affine.passes=0", "model.affine.passes"),
    ("model.affine.head=mlp", "model.affine.head"),
    ("model.affine.init=moments", "model.affine.init"),
    ("model.affine.symmetric_passes_eval=-1", "model.affine.symmetric_passes_eval"),
    ("model.affine.fine_passes=0 model.affine.full_passes=1", "model.affine.fine_passes >= 1"),
    ("model.affine.channels=[4,4]", "model.affine.channels needs 3"),
    ("model.synthesis.down_kernel=5", "model.synthesis.down_kernel"),
    ("model.synthesis.outer_kernel=4", "model.synthesis.outer_kernel"),
    ("model.nonrigid.out_level=4", "out_level"),
    ("model.nonrigid.head=unet model.nonrigid.symmetric_passes_eval=-1", "model.nonrigid.symmetric_passes_eval"),
    ("model.nonrigid.head=conv model.nonrigid.symmetric_passes_eval=1", "head is 'unet'"),
    # the demo config sets it, so switching that config's head is an error that names the override to add
    ("model.nonrigid.head=conv", r"\(add model.nonrigid.symmetric_passes_eval=0\)"),
])
def test_bad_model_settings_are_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PHANTOM2D, override.split())
    assert load_config(PHANTOM2D, ["model.affine.passes_eval=8"]).model.affine.passes_eval == 8


def test_a_saved_config_comes_back_as_the_schema_dataclasses_without_omegaconf():
    """``schema.from_dict`` (how ``fire register`` reads a checkpoint's config): the same values as the
    OmegaConf config it was saved from, the schema's defaults for keys saved before they existed, and
    an unknown key is an error naming it in full."""
    import dataclasses

    from omegaconf import OmegaConf

    from fire_lightning.schema import Config, from_dict

    cfg = load_config(PHANTOM2D, ["model.synthesis.width=5", "data.structures={CSF: [5, 6]}", "optim.betas=[0.5,0.9]"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    back = from_dict(saved)
    assert isinstance(back, Config) and dataclasses.asdict(back) == saved
    assert back.model.synthesis.width == 5 and back.data.structures == {"CSF": [5, 6]}
    assert back.data.phantom.split.fractions.val == 0.1
    del saved["model"]["affine"]["fine_passes"], saved["data"]["phantom"]["split"]["fractions"]
    older = from_dict(saved)
    assert older.model.affine.fine_passes == Config().model.affine.fine_passes == 0
    assert older.data.phantom.split.fractions.train == 0.7 and older.model.synthesis.width == 5
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.synthesis\.widht' \(did you mean "
                                          r"'model\.synthesis\.width'\?\)"):
        from_dict({"model": {"synthesis": {"widht": 8}}})
    with pytest.raises(ConfigError, match="'data.phantom' must be a section"):
        from_dict({"data": {"phantom": 3}})


@pytest.mark.parametrize("path", sorted((PHANTOM2D.parent).glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_config_loads_onto_the_schema(path):
    cfg = load_config(path, ["data.root=/data"])
    assert cfg.experiment == path.stem and cfg.model.synthesis.width >= 1
    if cfg.model.synthesis.checkpoint_chunk:
        assert cfg.model.synthesis.checkpoint_activations  # the chunk applies only with checkpointing
