"""The plugin registry: entry points, throwaway plugins, clashes, broken plugins, strict mode, and
hooks that gain an argument without breaking the plugins written before."""

import types
from importlib.metadata import EntryPoint

import pluggy
import pytest
import torch

import densreg.registry.plugin_manager as plugin_manager
from densreg.registry import (ConfigError, PluginError, UnknownNameError, create_model, get_catalog, hookimpl,
                              list_models, list_plugins, register_plugin, unregister_plugin)
from densreg.registry.catalog import Catalog
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
        ("good", "densreg.plugins.baselines_plugin"), ("bad", "densreg_no_such_module_xyz")))
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


# -- a hook that gains an argument --------------------------------------------------------
def newer_hookspecs() -> types.ModuleType:
    """densreg's hookspecs, with ``register_models`` grown an argument (``aliases``)."""
    hookspec = pluggy.HookspecMarker("densreg")
    module = types.ModuleType("newer_hookspecs")

    def register_models(register, aliases):
        """Add models; ``aliases(name, alias)`` is new."""

    module.register_models = hookspec(register_models)
    for name in ("register_datasets", "register_commands", "register_checks"):  # the other specs as they are
        setattr(module, name, getattr(plugin_manager.hookspecs, name))
    return module


def test_an_older_plugin_loads_after_a_hook_gains_an_argument(monkeypatch):
    monkeypatch.setattr(plugin_manager, "hookspecs", newer_hookspecs())
    calls = []
    older = types.SimpleNamespace(register_models=hookimpl(lambda register: calls.append(("older", register))))
    newer = types.SimpleNamespace(register_models=hookimpl(
        lambda aliases, register: calls.append(("newer", register, aliases))))
    host = PluginHost()
    host.register_module("older", lambda: older)
    host.register_module("newer", lambda: newer)
    host.call_each("register_models", lambda info: {"register": f"register-{info.name}", "aliases": "aliases"})
    assert calls == [("older", "register-older"), ("newer", "register-newer", "aliases")]
    assert not host.failed()


def test_a_plugin_newer_than_its_densreg_is_refused_in_one_line(monkeypatch):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)  # strict: the same line, raised
    newer = types.SimpleNamespace(register_models=hookimpl(lambda register, aliases: None))
    info = PluginHost().register_module("newer", lambda: newer)
    assert info.error.startswith("load: PluginValidationError: Plugin 'newer' for hook 'register_models'; ")
    assert "{'aliases'} are declared in the hookimpl but can not be found in the hookspec" in info.error
    assert "\n" not in info.error


def test_an_argument_densreg_does_not_pass_fails_that_plugin_only(monkeypatch):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)
    monkeypatch.setattr(plugin_manager, "hookspecs", newer_hookspecs())
    host = PluginHost()
    host.register_module("newer", lambda: types.SimpleNamespace(
        register_models=hookimpl(lambda register, aliases: None)))
    host.register_module("older", lambda: types.SimpleNamespace(register_models=hookimpl(lambda register: None)))
    catalog = Catalog.from_host(host)  # passes ``register`` alone
    assert host.infos["older"].error is None and catalog.models == {}
    assert host.infos["newer"].error == ("run register_models: TypeError: register_models implementation takes "
                                         "'aliases', which densreg does not pass (it passes 'register')")
