"""The plugin registry: entry points, throwaway plugins, clashes, broken plugins, strict mode."""

import types
from importlib.metadata import EntryPoint

import pytest
import torch

import densreg.registry.plugin_manager as plugin_manager
from densreg.registry import (ConfigError, PluginError, UnknownNameError, create_model, get_catalog, hookimpl,
                              list_models, list_plugins, register_plugin, unregister_plugin)
from densreg.registry.plugin_manager import PluginHost
from densreg.plugins.baselines import Bernoulli


class Constant(Bernoulli):
    """A throwaway model for registry tests."""


def plugin_with_model(name: str, factory=Constant):
    module = types.SimpleNamespace()

    @hookimpl
    def register_models(register):
        register(factory, name=name, description=f"test model {name}")

    module.register_models = register_models
    return module


def test_builtins_come_from_entry_points():
    names = {p.name: p for p in list_plugins()}
    assert names["baselines"].distribution == "densreg"
    assert names["baselines"].hooks == ["register_models"]
    assert {"bernoulli", "markov"} <= set(list_models())
    assert list_models("mark*") == ["markov"]


def test_throwaway_plugin_registers_and_unregisters():
    try:
        register_plugin(plugin_with_model("throwaway"), "throwaway-plugin")
        assert "throwaway" in list_models()
        assert isinstance(create_model("throwaway", (1, 2, 2)), Constant)
    finally:
        unregister_plugin("throwaway-plugin")
    assert "throwaway" not in list_models()


def test_builtin_keeps_its_bare_name_and_qualified_names_work():
    try:
        register_plugin(plugin_with_model("markov"), "other")
        assert type(create_model("markov", (1, 2, 2))).__name__ == "Markov"  # the built-in wins
        assert type(create_model("other:markov", (1, 2, 2))) is Constant
        assert type(create_model("baselines:markov", (1, 2, 2))).__name__ == "Markov"
        assert {"baselines:markov", "other:markov"} <= set(list_models())
        assert "model:markov" in get_catalog().clashes()
    finally:
        unregister_plugin("other")


def test_clash_between_third_parties_is_ambiguous():
    try:
        register_plugin(plugin_with_model("shared"), "one")
        register_plugin(plugin_with_model("shared"), "two")
        with pytest.raises(UnknownNameError, match=r"registered by several plugins: one .*two.*"
                                                   r"pick one with one:shared or two:shared"):
            create_model("shared", (1, 2, 2))
        assert type(create_model("two:shared", (1, 2, 2))) is Constant
    finally:
        unregister_plugin("one")
        unregister_plugin("two")


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="unknown model 'nope'; installed models: .*bernoulli"):
        create_model("nope")
    with pytest.raises(UnknownNameError, match="unknown model 'nobody:markov'"):
        create_model("nobody:markov")


def test_config_keys_and_types_are_checked():
    with pytest.raises(ConfigError, match="unknown config key 'hidden'; accepted: .*alpha"):
        create_model("markov", (1, 2, 2), hidden=3)
    with pytest.raises(ConfigError, match="bad value for 'order': 'two' is not a int"):
        create_model("markov", (1, 2, 2), order="two")
    assert create_model("markov", (1, 2, 2), alpha=2).alpha == 2.0


class BrokenOnRegister:
    @hookimpl
    def register_models(self, register):
        raise RuntimeError("boom")


def test_plugin_failing_to_register_is_reported_and_skipped(monkeypatch):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)
    try:
        register_plugin(BrokenOnRegister(), "broken")
        info = {p.name: p for p in list_plugins()}["broken"]
        assert info.error == "run register_models: RuntimeError: boom"
        assert "markov" in list_models()  # the rest keeps working
    finally:
        unregister_plugin("broken")


def fake_entry_points(*specs):
    def entry_points(group):
        assert group == "densreg"
        return [EntryPoint(name=name, value=value, group="densreg") for name, value in specs]
    return entry_points


def test_entry_point_that_fails_to_import(monkeypatch):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)
    monkeypatch.setattr(plugin_manager, "entry_points", fake_entry_points(
        ("good", "densreg.plugins.baselines"), ("bad", "densreg_no_such_module_xyz")))
    host = PluginHost()
    host.load_entry_points()
    assert host.infos["good"].error is None
    assert host.infos["bad"].error.startswith("load: ModuleNotFoundError")


def test_strict_mode_makes_failures_fatal(monkeypatch):
    monkeypatch.setenv("DENSREG_STRICT_PLUGINS", "1")
    monkeypatch.setattr(plugin_manager, "entry_points", fake_entry_points(("bad", "densreg_no_such_module_xyz")))
    with pytest.raises(PluginError, match="plugin 'bad' .* failed to load: ModuleNotFoundError"):
        PluginHost().load_entry_points()


def test_load_only_named_plugins(monkeypatch):
    monkeypatch.setenv("DENSREG_LOAD_PLUGINS", "datasets")
    try:
        catalog = get_catalog(reload=True)
        assert set(catalog.host.infos) == {"datasets"}
        assert catalog.models == {}
        assert "digits" in catalog.datasets
    finally:
        monkeypatch.delenv("DENSREG_LOAD_PLUGINS")
        get_catalog(reload=True)


def test_a_factory_failing_on_a_config_is_a_config_error():
    def factory(event_shape, num_categories=2, size: int = 1):
        return torch.nn.Linear(size, size) and Constant(event_shape, num_categories)

    try:
        register_plugin(plugin_with_model("sized", factory), "sized")
        assert isinstance(create_model("sized", (1, 2, 2), size=2), Constant)
        with pytest.raises(ConfigError, match=r"cannot build model 'sized' with \{'size': -3\}: RuntimeError: "):
            create_model("sized", (1, 2, 2), size=-3)
    finally:
        unregister_plugin("sized")
