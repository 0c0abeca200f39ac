"""Real-valued models (issue 15): the continuous protocol, rnade, gaussian-mixture and their conformance kit."""

import json
import math
import re
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
from densreg.registry.families import GaussianMixture as MixtureFamily, mixture_log_density
from densreg.registry.testing import single_torch_thread  # noqa: F401 - autouse fixture
from densreg.plugins.continuous import RNADE, GaussianMixture

SMALL = {"hidden": 6, "components": 3}

from blockers import SERVING_BOX, blocker


def test_mixture_density_and_draw_by_hand():
    params = MixtureParams(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[-1.0, 2.0]]),
                           torch.tensor([[0.0, math.log(0.5)]]))
    x = torch.tensor([0.3])
    by_hand = 0.25 * math.exp(-0.5 * 1.3 ** 2) / math.sqrt(2 * math.pi) \
        + 0.75 * math.exp(-0.5 * (1.7 / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi))
    assert float(mixture_log_density(params, x)) == pytest.approx(math.log(by_hand), abs=1e-6)
    # u0 = 0.2 < 0.25 picks component 0; Box-Muller with u1 = 1 - e^-2, u2 = 0: z = 2
    noise = torch.tensor([[0.2, 1 - math.exp(-2), 0.0]], dtype=torch.float64)
    assert float(MixtureFamily().draw(params, noise)) == pytest.approx(-1.0 + 2.0, abs=1e-6)
    noise[0, 0] = 0.3  # component 1: 2 + 0.5 * 2
    assert float(MixtureFamily().draw(params, noise)) == pytest.approx(3.0, abs=1e-6)


def test_gaussian_mixture_density_is_the_full_covariance_mixture():
    """Its chain of mixture conditionals is exactly the joint density, against torch.distributions."""
    model = GaussianMixture((1, 2, 2), components=3, ordering="random:1").double()
    model.fit_closed_form(random_values((1, 2, 2), 300, seed=3))
    x = random_values((1, 2, 2), 20, seed=9).double()
    flat = x.reshape(20, -1)
    inverse = torch.argsort(model.order)
    mu = model.means[:, inverse]  # back to pixel order
    tril = torch.linalg.inv(model.precision_tril)  # the Cholesky factor L = P^-1
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


def test_rnade_rescale_is_rho_times_the_pre_activation_and_optional(tmp_path):
    plain = RNADE((1, 1, 3), hidden=4, components=2, activation="tanh").double()
    scaled = RNADE((1, 1, 3), hidden=4, components=2, activation="tanh", rescale=True).double()
    assert "rescale" not in plain.config() and scaled.config()["rescale"] is True  # old configs unchanged
    assert scaled.free_parameters() == plain.free_parameters() + 3
    scaled.load_state_dict({**plain.state_dict(), "rho": torch.ones(3, dtype=torch.float64)})
    x = random_values((1, 1, 3), 4, seed=3).double()
    with torch.no_grad():
        assert torch.equal(scaled.log_prob(x), plain.log_prob(x))  # rho = 1 is the model without it
        scaled.rho.copy_(torch.tensor([0.5, -2.0, 3.0]))
        h = torch.tanh(-2.0 * (plain.c + float(x[0, 0, 0, 0]) * plain.W[0]))  # position 1 sees x_0 only
        out = torch.einsum("h,kmh->km", h, plain.V[1]) + plain.b[1]
        expected = mixture_log_density(MixtureParams(out[0], out[1], out[2]), x[0, 0, 0, 1])
        assert float(scaled.conditional_log_probs(x)[0, 1]) == pytest.approx(float(expected), abs=1e-12)
    save_checkpoint(tmp_path / "r.safetensors", scaled, "rnade")
    again, info = load_checkpoint(tmp_path / "r.safetensors")
    assert info.config["rescale"] is True and torch.equal(again.rho, scaled.rho.float())
    with pytest.raises(ConfigError, match="rescale must be true or false"):
        RNADE((1, 1, 3), rescale="yes")


def test_rnade_collapsing_component_keeps_gradients_finite():
    # a component whose log-scale runs off to -100 (as in early training at a high learning rate) once gave
    # exp(100) = inf in float32 and inf * 0 = NaN gradients; its log-scale is floored at MIN_LOG_SCALE
    from densreg.plugins.continuous.rnade import MIN_LOG_SCALE

    model = RNADE((1, 1, 4), hidden=4, components=3)
    with torch.no_grad():
        model.b[:, 2, 0] = -100.0
    x = random_values((1, 1, 4), 8, seed=4)
    log_p = model.log_prob(x)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    params = model.conditional_params(x)
    assert torch.allclose(params.log_scales[..., 0], torch.full((8, 4), MIN_LOG_SCALE))  # loc 0, scale 1


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
    result = run_check("chain_rule", Heavy, SMALL)  # log_prob no longer the sum of its conditionals
    assert result.failed and "differs from the chain rule" in result.detail


def test_normalization_integrates_two_dimensions_and_catches_an_error_only_there():
    assert run_check("normalization", RNADE, SMALL).passed

    class HeavyInTwoDimensions(RNADE):
        def log_prob(self, x):
            return super().log_prob(x) + (0.01 if self.num_positions == 2 else 0.0)

    result = run_check("normalization", HeavyInTwoDimensions, SMALL)
    assert result.failed and "integrates to 1.01" in result.detail and "over R^2 (1x1x2 K=0" in result.detail


def spoiled(change):
    """The gaussian-mixture model with its conditional_params passed through ``change(params) -> params`` (its
    log_prob is the protocol's, from conditional_params)."""
    class Spoiled(GaussianMixture):
        def conditional_params(self, x):
            return change(super().conditional_params(x))

    return Spoiled


@pytest.mark.parametrize("change, message", [
    (lambda p: p._replace(means=p.means + math.inf), "conditional_params returned NaN or infinite values in means"),
    (lambda p: p._replace(log_scales=p.log_scales * math.nan), "NaN or infinite values in log_scales"),
    (lambda p: p._replace(logits=p.logits + math.inf), r"conditional_params returned NaN or \+inf values in logits"),
    (lambda p: MixtureParams(*(t[:, :-1] for t in p)), r"conditional_params returned \(16, 5, 3\), expected \(B, D, P\)"),
    (lambda p: (p.logits, p.means), "returned tuple: gaussian-mixture parameters are 3 tensors"),
])
def test_the_kit_names_what_is_wrong_with_real_parameters(change, message):
    untouched = dict(prepare=lambda model, seed: None)  # its EM fit would read the spoiled parameters
    result = run_check("chain_rule", spoiled(change), {"components": 3}, **untouched)
    assert result.failed and re.search(message, result.detail), result.detail
    no_weight = spoiled(lambda p: p._replace(logits=p.logits.index_fill(-1, torch.tensor([2]), -math.inf)))
    assert run_check("chain_rule", no_weight, {"components": 3}, **untouched).passed  # -inf log weight: weight 0


def test_a_model_whose_family_leaves_m_open_is_checked_on_the_m_it_returns():
    """A ContinuousDensityModel (GaussianMixture() without M): the kit reads M off the parameters, here 2 on
    D = 6 values; a second tensor that is not a tensor is named."""
    from densreg.registry import ContinuousDensityModel

    class TwoComponents(ContinuousDensityModel):
        def __init__(self, event_shape=(1, 2, 3), num_categories: int = 0, ordering: str = "raster") -> None:
            super().__init__(event_shape, num_categories, ordering)
            self.weights = torch.nn.Parameter(torch.zeros(self.num_positions, 3, 2))

        def conditional_params(self, x):
            previous = torch.nn.functional.pad(self.to_sequence(self.validate(x))[:, :-1], (1, 0)).unsqueeze(-1)
            logits, means, log_scales = (self.weights[:, i] * (1 + 0.1 * previous) for i in range(3))
            return MixtureParams(logits, means + 0.5 * previous, log_scales)

    assert TwoComponents().family.param_size is None
    assert run_check("chain_rule", TwoComponents).passed
    broken = spoiled(lambda p: (p.logits, p.means, 0.5))
    result = run_check("chain_rule", broken, {"components": 3}, prepare=lambda model, seed: None)
    assert result.failed and "conditional_params returned tuple" in result.detail, result.detail


@pytest.mark.parametrize("n, shift", [(40, 0.0), (400, 0.0), (400, 0.03), (3000, 0.02)])
def test_the_kolmogorov_smirnov_test_is_the_textbook_one(n, shift):
    """The statistic is scipy's two-sided D_n; the p-value is Kolmogorov's limit law at Stephens' corrected
    (sqrt(n) + 0.12 + 0.11 / sqrt(n)) D_n (scipy.special.kolmogorov, an independent implementation)."""
    from scipy import special, stats

    from densreg.registry.checks.sampling import ks_p_value

    u = (torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) + shift).clamp(max=1.0)
    stat, p = ks_p_value(u)
    assert stat == pytest.approx(stats.kstest(u.numpy(), "uniform").statistic, abs=1e-12)
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * stat
    assert p == pytest.approx(min(1.0, float(special.kolmogorov(lam))), abs=1e-12)


def test_the_kits_real_probe_values_follow_their_documented_recursion():
    """random_values: noise N(0, 0.6^2) from a generator seeded with ``seed``, the first value offset by -1 or +1
    (uniform below 0.5: -1), then each value 0.8 times the previous one plus its noise (flat C, H, W order)."""
    values = random_values((1, 2, 2), 5, seed=3)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(5, 4, generator=gen) * 0.6
    expected = noise.clone()
    expected[:, 0] += torch.where(torch.rand(5, generator=gen) < 0.5, -1.0, 1.0)
    for j in range(1, 4):
        expected[:, j] = 0.8 * expected[:, j - 1] + noise[:, j]
    assert torch.equal(values, expected.reshape(5, 1, 2, 2))
    assert random_values((1, 1, 3)).shape == (200, 1, 1, 3)
    assert torch.equal(random_values((1, 1, 3)), random_values((1, 1, 3), 200, seed=0))


def test_the_kit_perturbs_values_as_documented():
    """Causality probes: a discrete value becomes (x + 1) mod K, a suffix is redrawn from 0..K-1; a real value
    moves by N(0.5, 1), a real suffix is redrawn from N(0, 4); each from the generator it is given."""
    from densreg.registry.checks.density import changed_at

    real, discrete = create_model("rnade", (1, 1, 4), 0, **SMALL), create_model("markov", (1, 1, 4), 3)
    seq = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = changed_at(real, seq, 2, 0, torch.Generator().manual_seed(7))
    moved = seq.clone()
    moved[:, 2] += torch.randn(2, generator=torch.Generator().manual_seed(7)) + 0.5
    assert torch.equal(got, moved)
    got = changed_at(real, seq, slice(1, None), 0, torch.Generator().manual_seed(8))
    redrawn = seq.clone()
    redrawn[:, 1:] = torch.randn(2, 3, generator=torch.Generator().manual_seed(8)) * 2
    assert torch.equal(got, redrawn)
    levels = torch.tensor([[0, 1, 2, 2]])
    assert changed_at(discrete, levels, 2, 3, torch.Generator()).tolist() == [[0, 1, 0, 2]]
    got = changed_at(discrete, levels, slice(2, None), 3, torch.Generator().manual_seed(9))
    assert torch.equal(got[:, 2:], torch.randint(0, 3, (1, 2), generator=torch.Generator().manual_seed(9)))


def test_fit_trains_rnade_and_em_fits_the_mixture():
    torch.manual_seed(0)
    train, valid = random_values((1, 1, 4), 400, seed=0), random_values((1, 1, 4), 100, seed=1)
    model = create_model("rnade", (1, 1, 4), 0, hidden=16, components=3)
    with torch.no_grad():
        before = float(-model.log_prob(valid).mean())
    result = fit(model, train, valid, epochs=3, batch_size=50, lr=0.01)
    seq = model.to_sequence(train)  # fit standardized the network's inputs by the data first
    assert torch.allclose(model.loc, seq.mean(0), atol=1e-5)
    assert torch.allclose(model.log_scale.exp(), seq.std(0), rtol=1e-4)
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


# -- export (issue 15 item 6) -----------------------------------------------------------------
NO_TORCH = blocker(SERVING_BOX)


@pytest.fixture(scope="module", params=["rnade", "gaussian-mixture"])
def continuous_export(request, tmp_path_factory):
    from densreg.export import export_model

    torch.manual_seed(0)
    if request.param == "rnade":
        model = create_model("rnade", (1, 2, 3), 0, ordering="snake", rescale=True, **SMALL)
        model.init_from_data(random_values((1, 2, 3), 100, seed=7) * 0.1 + 0.3)  # a non-trivial standardization
        with torch.no_grad():
            model.rho.copy_(torch.linspace(0.5, 2.0, 6))  # and a rescaling
    else:
        model = create_model("gaussian-mixture", (1, 2, 3), 0, components=3, ordering="random:2")
        model.fit_closed_form(random_values((1, 2, 3), 200))
    out = tmp_path_factory.mktemp("export") / request.param
    report = export_model(model, out)
    return model.eval(), out, report


def test_export_parity_and_runtime(continuous_export):
    from densreg.export.runtime import ExportedModel

    model, out, report = continuous_export
    assert report["log_prob_max_abs_diff"] <= 1e-3 and report["max_abs_diff"] <= 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["value_kind"] == "continuous" and manifest["num_categories"] == 0
    assert manifest["components"] == 3 and "Box-Muller" in manifest["draw_rule"]
    assert {"conditionals.onnx", "step.onnx", "draw.onnx", "sample.onnx"} <= set(manifest["files"])  # format 3
    runtime = ExportedModel(out)
    x = random_values((1, 2, 3), 50, seed=11) * (0.1 if model.registry_name == "rnade" else 1.0)  # as trained
    with torch.no_grad():
        expected = model.log_prob(x).double().numpy()
        params = [t.numpy() for t in model.conditional_params(x)]
    assert np.abs(runtime.log_prob(x.numpy()) - expected).max() <= 1e-3
    got = runtime.conditional_params(x.numpy())
    assert np.abs(np.exp(got[0]) - torch.softmax(torch.from_numpy(params[0]), -1).numpy()).max() < 1e-5
    assert np.abs(got[1] - params[1]).max() < 1e-4 and np.abs(got[2] - params[2]).max() < 1e-4
    noise = np.random.default_rng(3).random((40, 6, 3))
    with torch.no_grad():
        ours = model.sample(40, noise=torch.from_numpy(noise)).numpy()
    theirs = runtime.sample(40, noise=noise)
    assert theirs.dtype == np.float32 and np.abs(theirs - ours).max() < 1e-3
    assert np.array_equal(runtime.sample(40, seed=5), runtime.sample(40, noise=np.random.default_rng(5).random((40, 6, 3))))
    with pytest.raises(DataError, match="NaN or infinite"):
        runtime.log_prob(np.full((1, 1, 2, 3), np.nan))
    graph = runtime.sample(40, noise=noise, engine="graph")  # sample.onnx: one call, the same draw (no log1p in ONNX)
    assert graph.dtype == np.float32 and np.abs(graph - ours).max() < 1e-3
    with pytest.raises(DataError, match=r"noise must have shape \(2, 6, 3\)"):
        runtime.sample(2, noise=np.zeros((2, 6)))
    (weights, means, log_scales), state = runtime.step(np.zeros(2, dtype=np.float32), 0, runtime.initial_state(2))
    assert weights.shape == means.shape == log_scales.shape == (2, 3)


def test_export_readme_client_runs_without_torch(continuous_export, tmp_path):
    import subprocess
    import sys

    from densreg.export import readme

    model, out, _ = continuous_export
    snippet = readme.snippet_of((out / "README.md").read_text())
    (tmp_path / "sitecustomize.py").write_text(NO_TORCH)
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=out, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("ok "))
    golden = json.loads((out / "golden.json").read_text())
    with torch.no_grad():
        assert np.abs(np.array(printed) - model.log_prob(torch.tensor(golden["images"])).numpy()).max() <= 1e-3
        drawn = model.sample(len(golden["noise"]), noise=torch.tensor(golden["noise"], dtype=torch.float64))
    assert np.abs(drawn.numpy() - np.array(golden["samples"])).max() <= 1e-3


def test_cli_exports_and_samples_a_continuous_checkpoint(tmp_path, patches_dataset):
    runner = CliRunner()
    ckpt, folder = tmp_path / "gm.safetensors", tmp_path / "gm-onnx"
    assert runner.invoke(cli, ["train", "gaussian-mixture", "--dataset", patches_dataset, "--set", "components=2",
                               "--out", str(ckpt)]).exit_code == 0
    result = runner.invoke(cli, ["export", str(ckpt), "--out", str(folder)])
    assert result.exit_code == 0, result.output
    for source in (ckpt, folder):
        result = runner.invoke(cli, ["sample", str(source), "-n", "4", "--out", str(tmp_path / "s.png"),
                                     "--npz", str(tmp_path / f"{source.name}.npz")])
        assert result.exit_code == 0, result.output
    a, b = (np.load(tmp_path / f"{s.name}.npz")["samples"] for s in (ckpt, folder))
    assert np.abs(a - b).max() < 1e-3  # same seed, same samples in torch and onnxruntime
    outputs = [runner.invoke(cli, ["eval", str(s), "--dataset", patches_dataset, "--json"]).output for s in (ckpt, folder)]
    evals = [json.loads(text[text.index("{"):]) for text in outputs]  # the export's line on stderr comes first
    assert abs(evals[0]["nll_nats"] - evals[1]["nll_nats"]) < 1e-3
