"""Plugin loading details (issue 28 item 8): a hook that fails half-way is rolled back, a plugin left
out by DENSREG_LOAD_PLUGINS is named as such, and a dataset reader's exception names its dataset."""

from __future__ import annotations

import types

import numpy as np
import pytest

from densreg.plugins.baselines import Bernoulli
from densreg.registry import (Dataset, DataError, PluginError, UnknownNameError, create_model, get_catalog,
                              hookimpl, load_checkpoint, load_split, register_plugin, save_checkpoint,
                              unregister_plugin)
from densreg.registry.errors import CheckpointError
from densreg.registry.plugin_manager import left_out


class Half(Bernoulli):
    """A model its plugin registers just before its hook raises."""


def half_plugin():
    module = types.SimpleNamespace()

    @hookimpl
    def register_models(register):
        register(Half, name="half-model", description="registered, then the hook raised")
        raise RuntimeError("second model broke")

    @hookimpl
    def register_datasets(register):
        register(Dataset("half-data", "x", (1, 2, 2), 2, lambda split, data, download: np.zeros((2, 1, 2, 2))))

    module.register_models, module.register_datasets = register_models, register_datasets
    return module


def test_a_hook_that_raises_half_way_rolls_its_plugin_back(monkeypatch):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)
    register_plugin(half_plugin(), "half")
    try:
        catalog = get_catalog()
        assert "half-model" not in catalog.models and "half-data" not in catalog.datasets
        assert catalog.registered_by("half") == []
        assert "run register_models: RuntimeError: second model broke" in catalog.host.infos["half"].error
        with pytest.raises(UnknownNameError, match="half .run register_models: RuntimeError"):
            create_model("half-model", (1, 2, 2))
    finally:
        unregister_plugin("half")


def reader_plugin(error: BaseException):
    module = types.SimpleNamespace()

    def read(split, data, download):
        raise error

    @hookimpl
    def register_datasets(register):
        register(Dataset("fragile", "x", (1, 2, 2), 2, read))

    module.register_datasets = register_datasets
    return module


@pytest.mark.parametrize("error, kind", [(KeyError("train_images"), PluginError),
                                          (FileNotFoundError(2, "No such file", "/x/y.npz"), DataError)])
def test_a_dataset_readers_exception_names_the_dataset_and_its_plugin(error, kind):
    register_plugin(reader_plugin(error), "fragile-plugin")
    try:
        with pytest.raises(kind, match=r"dataset 'fragile' of plugin fragile-plugin \(in-process\) could not read "
                                       r"split 'train': (KeyError|FileNotFoundError)"):
            load_split("fragile", "train")
    finally:
        unregister_plugin("fragile-plugin")


def test_load_plugins_names_what_it_leaves_out(monkeypatch, tmp_path):
    path = tmp_path / "n.safetensors"
    save_checkpoint(path, create_model("nade", (1, 2, 2), hidden=2), "nade")
    monkeypatch.setenv("DENSREG_LOAD_PLUGINS", "datasets,baselines")
    try:
        assert "nade" in left_out() and left_out("nade", "densreg") == ["nade"]
        get_catalog(reload=True)
        with pytest.raises(CheckpointError, match=r"which is not loaded; DENSREG_LOAD_PLUGINS=datasets,baselines "
                                                  r"leaves out the installed plugin nade \(add it"):
            load_checkpoint(path)
        with pytest.raises(UnknownNameError, match=r"leaves out the installed plugins .*nade"):
            create_model("nade", (1, 2, 2))
    finally:
        monkeypatch.delenv("DENSREG_LOAD_PLUGINS")
        get_catalog(reload=True)
    assert left_out() == []
