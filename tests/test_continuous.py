"""Real-valued models (issue 15): the continuous protocol, rnade, gaussian-mixture and their conformance kit."""

import json
import math
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.app.training import fit
from densreg.registry import (CheckpointError, ConfigError, DataError, Dataset, MixtureParams, create_model, hookimpl,
                              load_checkpoint, register_plugin, save_checkpoint, unregister_plugin)
from densreg.registry.checkpoint import read_header
from densreg.registry.conformance import random_values, run_check
from densreg.registry.mixtures import mixture_from_uniform, mixture_log_density
from densreg.registry.testing import single_torch_thread  # noqa: F401 - autouse fixture
from densreg.plugins.continuous import RNADE, GaussianMixture

SMALL = {"hidden": 6, "components": 3}


def test_mixture_density_and_draw_by_hand():
    params = MixtureParams(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[-1.0, 2.0]]),
                           torch.tensor([[0.0, math.log(0.5)]]))
    x = torch.tensor([0.3])
    by_hand = 0.25 * math.exp(-0.5 * 1.3 ** 2) / math.sqrt(2 * math.pi) \
        + 0.75 * math.exp(-0.5 * (1.7 / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi))
    assert float(mixture_log_density(params, x)) == pytest.approx(math.log(by_hand), abs=1e-6)
    # u0 = 0.2 < 0.25 picks component 0; Box-Muller with u1 = 1 - e^-2, u2 = 0: z = 2
    noise = torch.tensor([[0.2, 1 - math.exp(-2), 0.0]], dtype=torch.float64)
    assert float(mixture_from_uniform(params, noise)) == pytest.approx(-1.0 + 2.0, abs=1e-6)
    noise[0, 0] = 0.3  # component 1: 2 + 0.5 * 2
    assert float(mixture_from_uniform(params, noise)) == pytest.approx(3.0, abs=1e-6)


def test_gaussian_mixture_density_is_the_full_covariance_mixture():
    """Its chain of mixture conditionals is exactly the joint density, against torch.distributions."""
    model = GaussianMixture((1, 2, 2), components=3, ordering="random:1").double()
    model.fit_closed_form(random_values((1, 2, 2), 300, seed=3))
    x = random_values((1, 2, 2), 20, seed=9).double()
    flat = x.reshape(20, -1)
    inverse = torch.argsort(model.order)
    mu = model.means[:, inverse]  # back to pixel order
    tril = model.scale_tril
    cov = (tril @ tril.transpose(1, 2))[:, inverse][:, :, inverse]
    components = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
    direct = torch.logsumexp(components.log_prob(flat.unsqueeze(1)) + torch.log_softmax(model.log_weights, 0), -1)
    assert torch.allclose(model.log_prob(x), direct, atol=1e-9)


def test_rnade_conditional_by_hand():
    model = RNADE((1, 1, 2), hidden=3, components=2, activation="sigmoid").double()
    x = torch.tensor([[[[0.7, -0.4]]]], dtype=torch.float64)
    h = torch.sigmoid(model.c + 0.7 * model.W[0])  # position 1 sees x_0 only
    out = torch.einsum("h,kmh->km", h, model.V[1]) + model.b[1]
    expected = mixture_log_density(MixtureParams(out[0], out[1], out[2]), torch.tensor(-0.4, dtype=torch.float64))
    with torch.no_grad():
        got = model.conditional_log_probs(x)[0, 1]
    assert float(got) == pytest.approx(float(expected.detach()), abs=1e-12)
    assert model.free_parameters() == 2 * 3 + 3 + 3 * 2 * 2 * 4


def test_value_kinds_meet_the_right_data():
    with pytest.raises(ConfigError, match="real values, but these data have K=2"):
        create_model("rnade", (1, 1, 4), 2)
    with pytest.raises(ConfigError, match="real-valued .continuous.: use a continuous model"):
        create_model("nade", (1, 1, 4), 0)
    model = create_model("rnade", (1, 1, 4), 0, **SMALL)
    assert model.value_kind == "continuous" and model.num_categories == 0
    assert create_model("markov", (1, 1, 4), 2).value_kind == "categorical"
    with pytest.raises(DataError, match="NaN or infinite"):
        model.log_prob(torch.tensor([[[[0.0, float("nan"), 0.0, 0.0]]]]))
    with pytest.raises(DataError, match="shape"):
        model.log_prob(np.zeros((2, 4)))
    assert model.log_prob(np.zeros((2, 1, 1, 4), dtype=np.int16)).shape == (2,)  # integers are real values too


def test_sampling_is_deterministic_given_noise_and_matches_the_naive_sampler():
    model = create_model("rnade", (1, 2, 2), 0, **SMALL)
    noise = torch.rand(model.noise_shape(5), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = model.sample(5, noise=noise), model.sample(5, noise=noise)
    assert a.dtype == torch.float32 and a.shape == (5, 1, 2, 2) and torch.equal(a, b)
    assert torch.allclose(model.sample(5, noise=noise, naive=True), a, atol=1e-5)


def test_checkpoint_records_the_value_kind(tmp_path):
    model = create_model("gaussian-mixture", (1, 1, 3), 0, components=2)
    model.fit_closed_form(random_values((1, 1, 3), 50))
    path = tmp_path / "gm.safetensors"
    save_checkpoint(path, model, "gaussian-mixture")
    _, metadata = read_header(path)
    assert metadata["value_kind"] == "continuous" and metadata["num_categories"] == "0"
    again, info = load_checkpoint(path)
    assert info.value_kind == "continuous"
    x = random_values((1, 1, 3), 5, seed=2)
    assert torch.equal(again.log_prob(x), model.log_prob(x))
    nade = create_model("nade", (1, 1, 3), 2, hidden=2)
    save_checkpoint(tmp_path / "n.safetensors", nade, "nade")
    assert load_checkpoint(tmp_path / "n.safetensors")[1].value_kind == "categorical"


def test_a_tampered_value_kind_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = create_model("rnade", (1, 1, 3), 0, **SMALL)
    path = tmp_path / "r.safetensors"
    save_checkpoint(path, model, "rnade")
    _, metadata = read_header(path)
    save_file(load_file(path), tmp_path / "bad.safetensors", metadata={**metadata, "value_kind": "banana"})
    with pytest.raises(CheckpointError, match="value_kind 'banana'"):
        load_checkpoint(tmp_path / "bad.safetensors")
    save_file(load_file(path), tmp_path / "k.safetensors", metadata={**metadata, "value_kind": "categorical"})
    with pytest.raises(CheckpointError):  # K = 0 is not a categorical model
        load_checkpoint(tmp_path / "k.safetensors")


class OffSampler(RNADE):
    """RNADE whose step (hence its sampler) is slightly off; ``how`` says how."""

    how = ""

    def step(self, value, position, state):
        if self.how == "prefix":
            value = value * 0.9  # conditions on a slightly wrong prefix
        params, state = super().step(value, position, state)
        if self.how == "scale":
            params = params._replace(log_scales=params.log_scales + math.log(1.05))
        elif self.how == "shift":
            params = params._replace(means=params.means + 0.05 * params.log_scales.exp())
        return params, state


@pytest.mark.parametrize("how", ["scale", "shift", "prefix"])
def test_sampling_check_catches_a_sampler_slightly_off(how):
    broken = type(f"Off{how}", (OffSampler,), {"how": how})
    result = run_check("sampling", broken, SMALL)
    assert result.failed, result.detail
    honest = run_check("sampling", type("Honest", (OffSampler,), {"how": ""}), SMALL)
    assert honest.passed, honest.detail


def test_causality_check_catches_a_peek():
    class Peeking(RNADE):
        def conditional_params(self, x):
            params = super().conditional_params(x)
            seq = self.to_sequence(self.validate(x))
            return params._replace(means=params.means + 1e-3 * seq.roll(-1, 1).unsqueeze(-1))

    result = run_check("causality", Peeking, SMALL)
    assert result.failed and "peeks at the future" in result.detail


def test_normalization_check_catches_an_unnormalized_density():
    class Heavy(RNADE):
        def log_prob(self, x):
            return super().log_prob(x) + 0.01

    result = run_check("normalization", Heavy, SMALL)
    assert result.failed and "integrates to 1.01" in result.detail


def test_fit_trains_rnade_and_em_fits_the_mixture():
    torch.manual_seed(0)
    train, valid = random_values((1, 1, 4), 400, seed=0), random_values((1, 1, 4), 100, seed=1)
    model = create_model("rnade", (1, 1, 4), 0, hidden=16, components=3)
    with torch.no_grad():
        before = float(-model.log_prob(valid).mean())
    result = fit(model, train, valid, epochs=3, batch_size=50, lr=0.01)
    assert result["valid_nll_nats"] < before - 0.5
    gm = create_model("gaussian-mixture", (1, 1, 4), 0, components=2)
    fitted = fit(gm, train, valid)
    # the data are two clusters with AR(1) noise: an exact 2-component Gaussian mixture, ~4.9 nats per image
    with torch.no_grad():
        assert fitted["valid_nll_nats"] < float(-model.log_prob(valid).mean())
    assert fitted["converged"]


@pytest.fixture
def patches_dataset():
    def load(split, data, download):
        return random_values((1, 1, 5), 120, seed={"train": 0, "valid": 1, "test": 2}[split]).numpy()

    dataset = Dataset("toy-real", "toy real values", (1, 1, 5), 0, load)
    plugin = types.SimpleNamespace(register_datasets=hookimpl(lambda register: register(dataset)))
    register_plugin(plugin, "toy-real")
    yield "toy-real"
    unregister_plugin("toy-real")


def test_cli_trains_evaluates_and_checks_continuous_models(tmp_path, patches_dataset):
    runner = CliRunner()
    out = tmp_path / "r.safetensors"
    result = runner.invoke(cli, ["train", "rnade", "--dataset", patches_dataset, "--set", "hidden=8",
                                 "--set", "components=2", "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["eval", str(out), "--dataset", patches_dataset, "--json"])
    assert result.exit_code == 0, result.output
    assert math.isfinite(json.loads(result.output)["nll_nats"])
    result = runner.invoke(cli, ["train", "nade", "--dataset", patches_dataset, "--out", str(tmp_path / "n.st")])
    assert result.exit_code == 1 and "use a continuous model such as rnade" in result.output
    gm = tmp_path / "gm.safetensors"
    result = runner.invoke(cli, ["train", "gaussian-mixture", "--dataset", patches_dataset, "--set", "components=2",
                                 "--out", str(gm)])
    assert result.exit_code == 0, result.output
    samples_png, raw = tmp_path / "s.png", tmp_path / "s.npz"
    result = runner.invoke(cli, ["sample", str(gm), "-n", "6", "--out", str(samples_png), "--npz", str(raw)])
    assert result.exit_code == 0, result.output
    drawn = np.load(raw)["samples"]
    assert drawn.dtype == np.float32 and drawn.shape == (6, 1, 1, 5)
    again, _ = load_checkpoint(gm)
    noise = torch.from_numpy(np.random.default_rng(0).random((6, 5, 3)))
    assert np.allclose(again.sample(6, noise=noise).numpy(), drawn)
    for command in (["complete", str(gm), "--dataset", patches_dataset, "--keep", "2", "--out", str(tmp_path / "c.png")],
                    ["score", str(gm), "--dataset", patches_dataset, "--method", "complexity"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 1 and "real values" in result.output and "Traceback" not in result.output
