"""The densreg CLI: listing, info, train/eval/sample, and one-line errors with non-zero exits."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from densreg.registry import hookimpl, load_checkpoint, register_plugin, unregister_plugin
from densreg.app.cli import cli, main


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def run_ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def test_listing_json_contracts():
    models = json.loads(run_ok("models", "--json").output)
    assert {"name", "plugin", "description"} <= set(models[0])
    assert {m["name"] for m in models} >= {"bernoulli", "markov"}
    assert [m["name"] for m in json.loads(run_ok("models", "mark*", "--json").output)] == ["markov"]
    plugins = {p["name"]: p for p in json.loads(run_ok("plugins", "--json").output)}
    assert plugins["baselines"]["distribution"] == "densreg" and plugins["baselines"]["error"] is None
    assert {"name", "distribution", "version", "hooks", "error"} <= set(plugins["baselines"])
    datasets = {d["name"]: d for d in json.loads(run_ok("datasets", "--json").output)}
    assert datasets["digits-grey"]["num_categories"] == 17


def test_info_counts_parameters():
    data = json.loads(run_ok("info", "markov", "--json").output)
    assert data["parameters"] == 2 * 784 - 1
    assert data["joint_parameters"] == "2^784 - 1"
    data = json.loads(run_ok("info", "bernoulli", "--shape", "1,2,3", "--categories", "3", "--json").output)
    assert data["parameters"] == 6 * 2 and data["joint_parameters"] == str(3 ** 6 - 1)
    data = json.loads(run_ok("info", "markov", "--dataset", "digits", "--set", "order=2", "--json").output)
    assert data["config"]["order"] == 2 and data["config"]["event_shape"] == [1, 8, 8]
    text = run_ok("info", "markov").output
    assert "free parameters: 1,567" in text and "2^784 - 1" in text


def test_train_eval_sample_on_digits(tmp_path):
    ckpt, png, npz = tmp_path / "m.safetensors", tmp_path / "s.png", tmp_path / "s.npz"
    run_ok("train", "markov", "--dataset", "digits", "--set", "ordering=snake", "--out", ckpt)
    model, info = load_checkpoint(ckpt)
    assert info.ordering == "snake" and info.metrics["dataset"] == "digits" and "valid_nll_nats" in info.metrics
    result = json.loads(run_ok("eval", ckpt, "--dataset", "digits", "--json").output)
    assert result["images"] == 300 and set(result) >= {"nll_nats", "bits_per_dim", "images"}
    assert abs(result["bits_per_dim"] - result["nll_nats"] / (64 * np.log(2))) < 1e-9
    run_ok("sample", ckpt, "-n", "9", "--out", png, "--npz", npz, "--seed", "3")
    samples = np.load(npz)["samples"]
    assert samples.shape == (9, 1, 8, 8) and set(np.unique(samples)) <= {0, 1}
    assert Image.open(png).size[0] >= 3 * 8
    run_ok("sample", ckpt, "-n", "9", "--out", tmp_path / "t.png", "--npz", tmp_path / "t.npz", "--seed", "3")
    assert np.array_equal(np.load(tmp_path / "t.npz")["samples"], samples)


def test_grey_digits_end_to_end(tmp_path):
    ckpt = tmp_path / "g.safetensors"
    run_ok("train", "bernoulli", "--dataset", "digits-grey", "--out", ckpt)
    result = json.loads(run_ok("eval", ckpt, "--dataset", "digits-grey", "--split", "valid", "--json").output)
    assert result["images"] == 300
    run_ok("sample", ckpt, "-n", "4", "--out", tmp_path / "g.png")


def test_mnist_from_npz(tmp_path, mnist_npz):
    ckpt = tmp_path / "b.safetensors"
    run_ok("train", "bernoulli", "--dataset", "binarized-mnist", "--data", mnist_npz, "--out", ckpt)
    result = json.loads(run_ok("eval", ckpt, "--dataset", "binarized-mnist", "--data", mnist_npz, "--json").output)
    assert result["images"] == 10000 and 150 < result["nll_nats"] < 300


@pytest.mark.parametrize("args, message", [
    (["info", "nope"], "unknown model 'nope'"),
    (["info", "markov", "--set", "order"], "bad --set value 'order': expected key=value"),
    (["info", "markov", "--set", "order=x"], "bad value for 'order'"),
    (["info", "markov", "--set", "depth=3"], "unknown config key 'depth'"),
    (["info", "markov", "--shape", "1,2"], "bad --shape"),
    (["train", "markov", "--dataset", "nope", "--out", "x.safetensors"], "unknown dataset 'nope'"),
    (["eval", "missing.safetensors", "--dataset", "digits"], "no such checkpoint file"),
    (["train", "markov", "--dataset", "binarized-mnist", "--data", "/nonexistent/mnist.npz", "--out", "x.st"],
     "binarized MNIST not found"),
])
def test_user_errors_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_checkpoint_dataset_mismatch(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    run_ok("train", "markov", "--dataset", "digits", "--out", ckpt)
    result = run("eval", ckpt, "--dataset", "digits-grey")
    assert result.exit_code == 1 and "trained on shape (1, 8, 8) with K=2" in result.output


def test_subprocess_exit_codes_and_debug(tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 5)
    cmd = [sys.executable, "-m", "densreg", "eval", str(bad), "--dataset", "digits"]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 1 and "not a readable safetensors file" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_plugins_can_add_commands():
    import click

    @click.command(name="hello-test")
    def hello():
        click.echo("hello from a plugin")

    plugin = types.SimpleNamespace(register_commands=hookimpl(lambda cli: cli.add_command(hello)))
    try:
        register_plugin(plugin, "commands-plugin")
        with pytest.raises(SystemExit) as exit_info:
            main(["hello-test"])
        assert exit_info.value.code == 0
    finally:
        unregister_plugin("commands-plugin")
        cli.commands.pop("hello-test", None)


def test_help_shows_each_builtin_command_as_its_module_would():
    """`densreg --help` takes the short help of a command whose module is not loaded from
    BUILTIN_COMMANDS: it must shorten exactly as the command's own help does."""
    import click

    from densreg.app import cli as package

    package.load_builtins()
    for name, (_, text) in package.BUILTIN_COMMANDS.items():
        stand_in, command = click.Command(name, help=text), package.cli.commands[name]
        for limit in (10, 30, 45, 60, 80, 200):
            assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit), (name, limit)
