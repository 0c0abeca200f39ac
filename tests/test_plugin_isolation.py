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


# -- hostile packages in a temporary site folder, run through the real command line ---------
HOSTILE = {  # distribution: (entry-point name, module source)
    "densreg-exits": ("exits", "raise SystemExit(3)\n"),
    "densreg-interrupts": ("interrupts", "raise KeyboardInterrupt('at import')\n"),
    "densreg-namesake": ("nade", "raise RuntimeError('a namesake entry point must never be imported')\n"),
    "densreg-hijack": ("hijack", '''
import click
from densreg.registry import hookimpl
from densreg.plugins.baselines import Bernoulli

class Fake(Bernoulli):
    registry_name = "nade"
    def log_prob(self, x):
        return -self.order.new_ones(x.shape[0]).float()

@click.command(name="eval")
@click.argument("args", nargs=-1)
def fake_eval(args):
    click.echo("1.0000 nats per image")

@hookimpl
def register_models(register):
    register(Fake)

@hookimpl
def register_commands(cli):
    cli.add_command(fake_eval)
'''),
}


def install(site, distribution: str, entry_point: str, source: str) -> None:
    """What pip leaves for a one-module distribution: the module and its .dist-info."""
    module = distribution.replace("-", "_")
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[densreg]\n{entry_point} = {module}\n")


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    for distribution, (entry_point, source) in HOSTILE.items():
        install(site, distribution, entry_point, source)
    return site


def densreg_cli(site, *args, **env):
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith("DENSREG_")}
    environ.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "densreg", *args], capture_output=True, text=True,
                          env=environ, timeout=300)


def test_plugins_raising_systemexit_or_keyboardinterrupt_are_isolated(hostile_site):
    version = densreg_cli(hostile_site, "--version")
    assert version.returncode == 0 and "densreg, version" in version.stdout
    listed = densreg_cli(hostile_site, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    errors = {p["name"]: p["error"] for p in json.loads(listed.stdout)}
    assert errors["exits"] == "load: SystemExit: 3"
    assert errors["interrupts"] == "load: KeyboardInterrupt: at import"
    assert errors["nade"] is None and "already used by densreg" in errors["nade@densreg-namesake"]
    assert "clash: command 'eval' of plugin hijack" in listed.stderr
    models = densreg_cli(hostile_site, "models")
    assert models.returncode == 0 and "markov" in models.stdout and "clash: model name 'nade'" in models.stderr
    assert "plugin 'exits' (densreg-exits) failed to load" in models.stderr
    assert "plugin 'interrupts' (densreg-interrupts) failed to load" in models.stderr
    unknown = densreg_cli(hostile_site, "info", "exits-model")
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    assert "unknown model 'exits-model'" in unknown.stderr and "exits (load: SystemExit: 3)" in unknown.stderr


def test_strict_plugins_is_fatal_in_one_line_and_traceback_with_debug(hostile_site):
    strict = densreg_cli(hostile_site, "models", DENSREG_STRICT_PLUGINS="1", DENSREG_LOAD_PLUGINS="baselines,exits")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert strict.stderr.strip().splitlines() == [
        "Error: plugin 'exits' (densreg-exits 1.0) failed to load: SystemExit: 3 (DENSREG_STRICT_PLUGINS is set)"]
    debug = densreg_cli(hostile_site, "--debug", "models", DENSREG_STRICT_PLUGINS="1",
                        DENSREG_LOAD_PLUGINS="baselines,exits")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "raise SystemExit(3)" in debug.stderr


def test_namesakes_cannot_take_over_a_builtin_model_or_command(hostile_site, tmp_path):
    from densreg.app.evaluation import evaluate
    from densreg.registry import load_split

    model = create_model("nade", (1, 8, 8), hidden=5)
    save_checkpoint(tmp_path / "n.safetensors", model, "nade")
    expected = evaluate(model, load_split("digits", "test"))["nll_nats"]
    result = densreg_cli(hostile_site, "eval", str(tmp_path / "n.safetensors"), "--dataset", "digits", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nll_nats"] == pytest.approx(expected, rel=1e-6)
    listing = densreg_cli(hostile_site, "datasets")  # every listing command reports the clashes
    assert listing.returncode == 0 and "digits" in listing.stdout
    assert "clash: model name 'nade' is registered by nade (densreg), hijack (densreg-hijack): 'nade' means the " \
           "built-in nade:nade" in listing.stderr
    assert "clash: command 'eval' of plugin hijack (densreg-hijack) is already a densreg command" in listing.stderr
    assert "clash: plugin name 'nade' of densreg-namesake is already used by densreg" in listing.stderr
