"""Plugins cannot hijack or kill the program: saved models name their plugin and distribution,
built-ins keep their bare names, and a plugin's BaseException at import stays its own load error.

Hostile plugin packages are written into a temporary site folder (a module plus a ``.dist-info``
with its entry points) and found through sys.path, as pip would install them."""

import json

import pytest
import torch
from safetensors import safe_open

from densreg.registry import (CheckpointError, create_model, hookimpl, load_checkpoint, register_plugin,
                              save_checkpoint, unregister_plugin)
from densreg.registry.checkpoint import read_tensors, save_tensors
from densreg.plugins.baselines import Bernoulli


class Impostor(Bernoulli):
    """A third party's model that reuses a built-in name."""

    registry_name = "nade"


class ImpostorPlugin:
    @hookimpl
    def register_models(self, register):
        register(Impostor)


def metadata_of(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_checkpoint_records_plugin_distribution_and_version(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("markov", (1, 2, 2)), "markov")
    meta = metadata_of(path)
    assert (meta["model"], meta["plugin"], meta["distribution"]) == ("markov", "baselines", "densreg")
    assert meta["distribution_version"] and meta["distribution_version"][0].isdigit()
    _, info = load_checkpoint(path)
    assert info.qualified_name == "baselines:markov" and info.distribution == "densreg"


def test_export_records_plugin_distribution_and_version(tmp_path):
    from densreg.export import export_model
    from densreg.export.runtime import ExportedModel

    export_model(create_model("bernoulli", (1, 2, 2)), tmp_path / "e", name="bernoulli", parity=False)
    info = ExportedModel(tmp_path / "e").info
    assert (info.model, info.plugin, info.distribution) == ("bernoulli", "baselines", "densreg")


def test_third_party_model_with_a_builtin_name_neither_hijacks_nor_breaks_checkpoints(tmp_path):
    builtin = create_model("nade", (1, 2, 2), hidden=3)
    save_checkpoint(tmp_path / "builtin.safetensors", builtin, "nade")
    try:
        register_plugin(ImpostorPlugin(), "impostor")
        assert type(create_model("nade", (1, 2, 2))).__name__ == "NADE"  # the built-in keeps the bare name
        again, info = load_checkpoint(tmp_path / "builtin.safetensors")
        assert type(again).__name__ == "NADE" and info.qualified_name == "nade:nade"
        save_checkpoint(tmp_path / "impostor.safetensors", create_model("impostor:nade", (1, 2, 2)), "impostor:nade")
        theirs, info = load_checkpoint(tmp_path / "impostor.safetensors")
        assert type(theirs) is Impostor and info.qualified_name == "impostor:nade"
    finally:
        unregister_plugin("impostor")


def test_format_0_1_checkpoint_loads_by_bare_name_despite_a_clash():
    import os

    path = os.path.join(os.path.dirname(__file__), "data", "format-0.1", "nade.safetensors")
    assert "plugin" not in metadata_of(path)
    try:
        register_plugin(ImpostorPlugin(), "impostor")
        model, info = load_checkpoint(path)
    finally:
        unregister_plugin("impostor")
    assert type(model).__name__ == "NADE" and info.plugin == "" and info.qualified_name == "nade"


def test_missing_plugin_names_the_distribution_to_install(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("bernoulli", (1, 2, 2)), "bernoulli")
    tensors, meta = read_tensors(path)
    meta.update(model="mine", plugin="mine", distribution="densreg-mine", distribution_version="0.3.0")
    save_tensors(path, tensors, meta)
    with pytest.raises(CheckpointError, match=r"holds model 'mine' of plugin 'mine' \(distribution densreg-mine "
                                              r"0\.3\.0\), which is not installed here: pip install densreg-mine"):
        load_checkpoint(path)
