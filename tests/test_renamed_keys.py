"""Keys renamed when the model's settings became sections (``schema.RENAMED_KEYS``): old command
lines and experiment files still work, with a warning naming each new key; old run folders and
checkpoints (their hyperparameters saved flat) load silently, to the same networks."""

from __future__ import annotations

import copy
import warnings

import lightning
import pytest
import torch

from fire_lightning.config import ConfigError, load_config
from fire_lightning.inference import load_model
from fire_lightning.module import FIREModule, load_module
from fire_lightning.schema import RENAMED_KEYS, from_dict, rename_old_keys

from .conftest import PHANTOM2D, TINY, gen


def _flat(saved: dict) -> dict:
    """A saved configuration as it was written before the sections: ``model``'s renamed keys flat."""
    old = copy.deepcopy(saved)
    model = old["model"]
    for old_key, new_key in RENAMED_KEYS.items():
        if not old_key.startswith("model."):
            continue
        _, section, leaf = new_key.split(".")
        model[old_key.split(".", 1)[1]] = model[section].pop(leaf)
    # keys added to a section since (not renamed) were not in such a file: dropped, their defaults apply
    old["model"] = {k: v for k, v in model.items() if k not in ("synthesis", "affine", "loss")}
    return old


def test_an_old_override_name_lands_on_its_new_key_with_a_warning_naming_it():
    with pytest.warns(FutureWarning, match=r"model\.affine_passes_eval → model\.affine\.passes_eval"):
        cfg = load_config(PHANTOM2D, ["model.affine_passes_eval=8"])
    assert cfg.model.affine.passes_eval == 8
    with pytest.warns(FutureWarning, match=r"model\.similarity → model\.loss\.similarity"):
        assert load_config(None, ["model.similarity=mi"]).model.loss.similarity == "mi"
    with pytest.raises(ConfigError, match="model.affine.passes_eval"):  # still checked under its new name
        load_config(PHANTOM2D, ["model.affine_passes_eval=0"])


def test_an_old_experiment_file_loads_with_one_warning_and_old_and_new_together_are_an_error(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  width: 6\n  affine_head: match\n  diffeomorphic: true\n  nonrigid:\n    passes: 2\n")
    with pytest.warns(FutureWarning, match=r"model\.width → model\.synthesis\.width") as record:
        cfg = load_config(old)
    assert len(record) == 1
    assert (cfg.model.synthesis.width, cfg.model.affine.head, cfg.model.nonrigid.diffeomorphic,
            cfg.model.nonrigid.passes) == (6, "match", True, 2)
    both = tmp_path / "both.yaml"
    both.write_text("model:\n  width: 6\n  synthesis:\n    width: 8\n")
    with pytest.raises(ConfigError, match="give only 'model.synthesis.width'"):
        load_config(both)


def test_every_renamed_key_has_a_place_in_the_schema():
    schema = from_dict({})
    flat = {}
    for old in RENAMED_KEYS:
        top, key = old.split(".", 1)
        flat.setdefault(top, {})[key] = None
    moved = rename_old_keys(flat)
    for new in RENAMED_KEYS.values():
        top, section, leaf = new.split(".")
        assert leaf in moved[top][section]
        assert hasattr(getattr(getattr(schema, top), section), leaf)


def test_a_checkpoint_with_flat_hyperparameters_loads_silently_to_the_same_networks(tmp_path):
    cfg = load_config(PHANTOM2D, [*TINY, "model.affine.fine_passes=1", "model.affine.passes_eval=2",
                                  "model.nonrigid.head=conv", "model.nonrigid.symmetric_passes_eval=0"])
    torch.manual_seed(0)
    module = FIREModule(cfg)
    with torch.no_grad():  # non-trivial heads
        for t in (module.net.T_ab, module.net.T_ba):
            t.nonrigid.head.weight.copy_(torch.randn(t.nonrigid.head.weight.shape, generator=gen(1)) * 0.05)
    hparams = dict(module.hparams)
    hparams["cfg"] = _flat(hparams["cfg"])
    assert "affine_passes_eval" in hparams["cfg"]["model"] and "affine" not in hparams["cfg"]["model"]
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": lightning.__version__}, path)
    x = torch.rand(1, 1, *cfg.data.size, generator=gen(2)) * 2 - 1
    with torch.no_grad():
        expected = module.net.eval()(x, x.flip(-1)).field(tuple(cfg.data.size))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        inference, lightning_module = load_model(path), load_module(path)
    for loaded in (inference, lightning_module):
        assert loaded.cfg.model.affine.passes_eval == 2 and loaded.cfg.model.affine.fine_passes == 1
        assert loaded.net.T_ab.passes_eval["affine"] == 2
        with torch.no_grad():
            torch.testing.assert_close(loaded.net.eval()(x, x.flip(-1)).field(tuple(cfg.data.size)), expected)
