"""Plugins registered by import path: listing imports neither torch nor scikit-learn, a model's
module is imported on first use, a broken path is a one-line error naming its plugin, and
built-in command names stay the built-ins' before their modules load."""

import json
from contextlib import contextmanager
import os
import subprocess
import sys
import textwrap
import types

import pytest
from click.testing import CliRunner

from densreg.registry import (PluginError, create_model, get_catalog, hookimpl, list_models, list_plugins,
                              model_spec, register_plugin, unregister_plugin)
from densreg.registry.catalog import Catalog
from densreg.registry.plugin_manager import PluginHost

KNOWN_PLUGINS = "baselines,continuous,datasets,export,nade,pixelrnn,mixture"  # densreg's own and the example's
# Runs the CLI in a fresh interpreter, then prints which heavy packages it imported.
HEAVY_CHECK = textwrap.dedent("""
    import sys
    from densreg.app.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        if exc.code:
            raise
    print("heavy:", sorted({name.split(".")[0] for name in sys.modules} & {"torch", "sklearn"}))
""")


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["models"], ["models", "mark*"], ["models", "--json"],
                                  ["datasets"]])
def test_listing_imports_neither_torch_nor_sklearn(args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENSREG_")}
    env["DENSREG_LOAD_PLUGINS"] = KNOWN_PLUGINS  # a stray third-party plugin may import torch
    result = subprocess.run([sys.executable, "-c", HEAVY_CHECK, *args], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "heavy: []", result.stdout[-300:]


@contextmanager
def installed(plugin, name: str):
    """``plugin`` registered in-process as ``name`` for the block."""
    try:
        register_plugin(plugin, name)  # inside: a registration that raises (strict mode) is undone too
        yield
    finally:
        unregister_plugin(name)


def test_builtin_models_are_registered_by_import_path_matching_their_classes():
    specs = get_catalog().model_specs()
    builtin = [s for s in specs if s.distribution == "densreg"]
    assert {s.name for s in builtin} >= {"bernoulli", "markov", "nade", "pixelrnn", "row-lstm", "diagonal-bilstm",
                                         "rnade", "gaussian-mixture"}
    for spec in (s for s in specs if isinstance(s.target, str)):
        factory = spec.load()
        assert (factory.registry_name, factory.description) == (spec.name, spec.description), spec.target
    assert all(isinstance(s.target, str) for s in builtin)


def test_plugin_packages_still_export_their_classes():
    from densreg.plugins.continuous import RNADE
    from densreg.plugins.pixelrnn import RowLSTM

    assert RNADE.registry_name == "rnade" and RowLSTM.registry_name == "row-lstm"


LAZY_MODULE = '''
from densreg.plugins.baselines import Bernoulli


class Lazy(Bernoulli):
    """Imported on first use."""
    registry_name = "lazy-model"
'''


def lazy_plugin(target: str, name: str = "lazy-model", description: str = "a lazily imported model"):
    """A plugin that registers ``target`` by import path."""
    @hookimpl
    def register_models(register):
        register(target, name=name, description=description)

    return types.SimpleNamespace(register_models=register_models)


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """The name of a fresh module, importable but not imported, holding class ``Lazy``."""
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)  # strict mode imports paths at registration
    name = f"densreg_lazy_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_model_module_is_imported_on_first_use(lazy_module):
    with installed(lazy_plugin(f"{lazy_module}:Lazy"), "lazy"):
        assert "lazy-model" in list_models()
        assert model_spec("lazy-model").description == "a lazily imported model"
        assert lazy_module not in sys.modules  # listed, not imported
        assert type(create_model("lazy-model", (1, 2, 2))).__name__ == "Lazy"
        assert lazy_module in sys.modules


def test_missing_module_fails_the_plugin_at_registration(monkeypatch):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)
    with installed(lazy_plugin("densreg_no_such_module_xyz:Model", "ghost"), "ghosts"):
        info = {p.name: p for p in list_plugins()}["ghosts"]
        assert info.error == ("run register_models: ConfigError: model 'ghost': its import path 'densreg_no_such_"
                              "module_xyz:Model' names no installed module 'densreg_no_such_module_xyz'")
        assert "markov" in list_models()  # the rest keeps working


def test_missing_attribute_is_a_one_line_error_naming_the_plugin_at_first_use(monkeypatch):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)
    with installed(lazy_plugin("densreg.plugins.baselines:NoSuchModel", "ghost"), "ghosts"):
        assert "ghost" in list_models()
        with pytest.raises(PluginError, match=r"^model 'ghost' of plugin ghosts \(in-process\) cannot be imported "
                                              r"from 'densreg.plugins.baselines:NoSuchModel': AttributeError: "):
            create_model("ghost", (1, 2, 2))
        from densreg.app.cli import cli

        result = CliRunner().invoke(cli, ["info", "ghost"])
        assert result.exit_code == 1 and result.output.count("\n") == 1
        assert result.output.startswith("Error: model 'ghost' of plugin ghosts (in-process) cannot be imported")


def test_strict_mode_imports_the_paths_at_registration(monkeypatch):
    monkeypatch.setenv("DENSREG_STRICT_PLUGINS", "1")
    host = PluginHost()
    host.register_module("ghosts", lambda: lazy_plugin("densreg.plugins.baselines:NoSuchModel", "ghost"))
    with pytest.raises(PluginError, match=r"plugin 'ghosts' .* failed to run register_models: PluginError: model "
                                          r"'ghost' .* cannot be imported .*AttributeError.*DENSREG_STRICT_PLUGINS"):
        Catalog.from_host(host)


@pytest.mark.parametrize("target, name, message", [
    ("densreg.plugins.baselines:Markov", None, "registered by import path: give its name="),
    ("densreg.plugins.baselines.Markov", "m", "bad import path 'densreg.plugins.baselines.Markov': expected "
                                              "'module:attribute'"),
])
def test_bad_registrations_by_import_path(monkeypatch, target, name, message):
    monkeypatch.delenv("DENSREG_STRICT_PLUGINS", raising=False)

    @hookimpl
    def register_models(register):
        register(target, name=name)

    host = PluginHost()
    host.register_module("bad", lambda: types.SimpleNamespace(register_models=register_models))
    Catalog.from_host(host)
    assert message in host.infos["bad"].error


def test_a_lazy_name_clash_is_reported_like_any_other(lazy_module):
    with installed(lazy_plugin(f"{lazy_module}:Lazy", "shared-lazy"), "one"), \
            installed(lazy_plugin(f"{lazy_module}:Lazy", "shared-lazy"), "two"):
        assert get_catalog().clashes()["model:shared-lazy"] == ["one (in-process)", "two (in-process)"]
        assert {"one:shared-lazy", "two:shared-lazy"} <= set(list_models())
        assert lazy_module not in sys.modules


# -- commands: a plugin cannot take a built-in name, even one whose module is not loaded ----
@pytest.fixture
def fresh_cli(monkeypatch):
    """The CLI package with no command module loaded (restored afterwards)."""
    from densreg.app import cli as package

    monkeypatch.setattr(package.cli, "commands", {})
    monkeypatch.setattr(package, "_LOADED", set())
    return package


def test_plugin_command_with_a_builtin_name_is_refused_before_the_builtin_loads(fresh_cli):
    import click

    @click.command(name="models")
    def fake_models():
        click.echo("fake")

    host = PluginHost()
    host.register_module("hijack", lambda: types.SimpleNamespace(
        register_commands=hookimpl(lambda cli: cli.add_command(fake_models))))
    fresh_cli.add_plugin_commands(host)
    assert fresh_cli.cli.commands == {} and fresh_cli._LOADED == set()
    assert host.clashes == ["command 'models' of plugin hijack (in-process) is already a densreg command; "
                            "the plugin's is ignored"]
    result = CliRunner().invoke(fresh_cli.cli, ["models", "--json"])
    assert result.exit_code == 0 and "markov" in {m["name"] for m in json.loads(result.output)}
