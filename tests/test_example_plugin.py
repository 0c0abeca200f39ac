"""The example third-party package (examples/densreg-mixture), installed next to densreg:
listed, trained on digits, evaluated, sampled, checked and exported like a built-in model."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("densreg_mixture", reason="the example plugin is not installed: "
                    "pip install -e examples/densreg-mixture (.ci/run does)")

from densreg.registry import load_checkpoint, load_split  # noqa: E402
from densreg.app.cli import cli  # noqa: E402
from densreg.registry.testing import single_torch_thread  # noqa: E402,F401 (autouse: one torch thread)



def run_ok(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The mixture and the independent baseline, trained on digits through the CLI."""
    out = tmp_path_factory.mktemp("mixture")
    run_ok("train", "mixture", "--dataset", "digits", "--set", "components=8", "--set", "iterations=20",
           "--out", out / "mixture.safetensors")
    run_ok("train", "bernoulli", "--dataset", "digits", "--out", out / "bernoulli.safetensors")
    return out


def test_listed_as_a_third_party_plugin():
    models = {m["name"]: m for m in json.loads(run_ok("models", "--json"))}
    assert models["mixture"]["plugin"] == "mixture" and models["mixture"]["distribution"] == "densreg-mixture"
    plugins = {p["name"]: p for p in json.loads(run_ok("plugins", "--json"))}
    assert plugins["mixture"]["distribution"] == "densreg-mixture" and plugins["mixture"]["error"] is None
    assert "mixture" in run_ok("models", "mix*")


def test_trained_evaluated_and_better_than_independence(trained):
    mixture = json.loads(run_ok("eval", trained / "mixture.safetensors", "--dataset", "digits", "--json"))
    independent = json.loads(run_ok("eval", trained / "bernoulli.safetensors", "--dataset", "digits", "--json"))
    assert mixture["model"] == "mixture" and mixture["images"] == 300
    assert mixture["nll_nats"] < independent["nll_nats"] - 2.0, (mixture, independent)
    model, info = load_checkpoint(trained / "mixture.safetensors")
    assert info.config["components"] == 8 and info.metrics["em_iterations"] == 20
    assert model.free_parameters() == 7 + 8 * 64


def test_sampled(trained):
    out = run_ok("sample", trained / "mixture.safetensors", "-n", "16", "--out", trained / "grid.png",
                 "--npz", trained / "samples.npz")
    assert "wrote 16 samples" in out
    samples = np.load(trained / "samples.npz")["samples"]
    assert samples.shape == (16, 1, 8, 8) and set(np.unique(samples)) <= {0, 1}


def test_checked():
    data = json.loads(run_ok("check", "mixture", "--set", "components=3", "--set", "iterations=3", "--skip", "export",
                             "--json"))  # export: test_exported
    assert data["passed"] and data["model"] == "mixture:mixture"
    main = ["normalization", "chain_rule", "causality", "gradient_path", "step", "sampling", "round_trip"]
    colour = [f"{name} (colour)" for name in main if name != "round_trip"]  # the colour pass: 3-channel spaces
    assert [r["name"] for r in data["results"]] == main + colour
    assert all(r["status"] == "passed" for r in data["results"]), data


def test_exported(trained, tmp_path):
    try:
        from densreg.export import export_model
        from densreg.export.runtime import ExportedModel
    except ImportError:
        pytest.skip("densreg.export has no exporter in this installation")
    model, _ = load_checkpoint(trained / "mixture.safetensors")
    info = export_model(model, tmp_path / "onnx", name="mixture", parity=True)
    assert info["max_abs_diff"] <= 1e-4
    runtime = ExportedModel(tmp_path / "onnx")
    test = load_split("digits", "test")
    with torch.no_grad():
        expected = model.log_prob(test).double().numpy()
    assert np.abs(np.asarray(runtime.log_prob(test.numpy()), dtype=np.float64) - expected).max() < 1e-4
    noise = torch.rand(8, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = model.sample(8, noise=noise).numpy()
    assert (np.asarray(runtime.sample(8, noise=noise.numpy())).reshape(8, -1) != ours.reshape(8, -1)).any(-1).sum() <= 1
