"""The families on their own: log_prob against the formulas, the torch and numpy draws agreeing value for
value (and with draw.onnx), value checks, specs, and the family-generic protocol on a model that emits a
family through ``conditional_params`` alone."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from densreg.registry import ConfigError, DataError, DensityModel
from densreg.registry.conformance import run_checks
from densreg.registry.families import (FAMILIES, Categorical, Family, GaussianMixture, MixtureParams, family_from_spec,
                                       register_family)


def mixture(batch=64, m=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return MixtureParams(torch.randn(batch, m, generator=gen, dtype=torch.float64) * 2,
                         torch.randn(batch, m, generator=gen, dtype=torch.float64) * 3,
                         torch.randn(batch, m, generator=gen, dtype=torch.float64) * 0.5)


def test_categorical_log_prob_is_the_log_softmax_entry_and_its_export_form_agrees():
    logits = torch.tensor([[0.0, 1.0, -2.0], [3.0, 3.0, 3.0]], dtype=torch.float64)
    x = torch.tensor([1, 2])
    expected = torch.log_softmax(logits, -1)[torch.arange(2), x]
    assert torch.equal(Categorical(3).log_prob((logits,), x), expected)
    assert torch.equal(Categorical(3).export_log_prob((logits,), x), expected)  # K > 2: the same computation
    binary = torch.tensor([[0.5, -1.5], [2.0, 0.0], [-30.0, 30.0]], dtype=torch.float64)
    for value in (0, 1):
        x = torch.full((3,), value)
        exact = torch.log_softmax(binary, -1)[:, value]
        assert torch.allclose(Categorical(2).export_log_prob((binary,), x), exact, atol=1e-12, rtol=0)


def test_gaussian_mixture_log_prob_matches_the_formula():
    params = mixture(8)
    x = torch.linspace(-3, 3, 8, dtype=torch.float64)
    w = torch.softmax(params.logits, -1)
    scale = params.log_scales.exp()
    density = (w * torch.exp(-0.5 * ((x[:, None] - params.means) / scale) ** 2) / (scale * math.sqrt(2 * math.pi)))
    assert torch.allclose(GaussianMixture(3).log_prob(params, x), density.sum(-1).log(), atol=1e-12, rtol=0)
    assert torch.allclose(GaussianMixture(3).cdf(params, torch.full((8,), 1e6, dtype=torch.float64)),
                          torch.ones(8, dtype=torch.float64))


@pytest.mark.parametrize("family", [Categorical(2), Categorical(5), GaussianMixture(3)])
def test_the_torch_and_numpy_draws_agree_value_for_value(family):
    gen = torch.Generator().manual_seed(1)
    params = (torch.randn(500, family.param_size, generator=gen, dtype=torch.float64) * 3,) if family.discrete \
        else tuple(mixture(500))
    noise = torch.rand(500, family.noise_width, generator=gen, dtype=torch.float64)
    ours = family.draw(params, noise).double().numpy()
    theirs = family.draw_numpy(tuple(p.numpy() for p in params), noise.numpy())
    assert np.array_equal(ours, theirs) if family.discrete else np.allclose(ours, theirs, atol=1e-12, rtol=0)
    if family.discrete:
        assert ours.min() >= 0 and ours.max() <= family.num_categories - 1 and len(np.unique(ours)) > 1


def test_the_categorical_draw_inverts_the_cdf_and_draw_onnx_agrees():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]] * 5, dtype=torch.float64))
    u = torch.tensor([0.0, 0.19, 0.21, 0.6, 1 - 1e-12], dtype=torch.float64)
    assert Categorical(3).draw((logits,), u[:, None]).tolist() == [0, 0, 1, 2, 2]
    session = ort.InferenceSession(Categorical(3).onnx_draw(18, 10).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"logits": logits.float().numpy(), "noise": u.numpy()})[0]
    assert got.tolist() == Categorical(3).draw_numpy((logits.float().numpy(),), u.numpy()).tolist()


def test_the_gaussian_mixture_draw_is_box_muller_on_the_chosen_component():
    params = MixtureParams(torch.tensor([[0.0, 50.0]]), torch.tensor([[-9.0, 2.0]]), torch.tensor([[0.0, math.log(3)]]))
    u1, u2 = 0.3, 0.1
    value = GaussianMixture(2).draw(params, torch.tensor([[0.5, u1, u2]], dtype=torch.float64))
    z = math.sqrt(-2 * math.log(1 - u1)) * math.cos(2 * math.pi * u2)
    assert float(value) == pytest.approx(2.0 + 3.0 * z, abs=1e-6)


def test_noise_shapes_and_columns():
    assert Categorical(2).noise_shape(4, 9) == (4, 9) and GaussianMixture(2).noise_shape(4, 9) == (4, 9, 3)
    noise = np.arange(12.0).reshape(2, 3, 2)
    assert Categorical(2).noise_column(np.arange(6.0).reshape(2, 3), 1).tolist() == [[1.0], [4.0]]
    assert GaussianMixture().noise_column(noise, 2).tolist() == [[4.0, 5.0], [10.0, 11.0]]


def test_value_checks_refuse_what_the_family_cannot_hold():
    shape = (1, 1, 2)
    assert Categorical(3).check_values(np.array([[[[0, 2]]]], dtype=np.uint8), shape).dtype == np.int64
    for bad, message in ((np.array([[[[0, 3]]]]), "must lie in 0..2; got values from 0 to 3"),
                         (np.array([[[[0.5, 1]]]]), "non-integer"), (np.array([[[[np.nan, 1]]]]), "NaN"),
                         (np.zeros((1, 1, 1, 3)), r"shape \(B, 1, 1, 2\)"), (np.array([[[["a", "b"]]]]), "dtype")):
        with pytest.raises(DataError, match=message):
            Categorical(3).check_values(bad, shape)
    assert GaussianMixture().check_values(np.full((1, 1, 1, 2), 1e300), shape).dtype == np.float64
    with pytest.raises(DataError, match="float32"):
        GaussianMixture().graph_input(np.full((1, 1, 1, 2), 1e300), shape)
    with pytest.raises(DataError, match="NaN or infinite"):
        GaussianMixture().check_tensor_values(torch.tensor([[[[1.0, math.inf]]]]))
    assert Categorical(3).check_tensor_values(torch.tensor([[[[2.0, 0.0]]]])).dtype == torch.int64


def test_specs_rebuild_the_family_and_unknown_ones_are_refused():
    for family in (Categorical(7), GaussianMixture(4), GaussianMixture()):
        assert family_from_spec(family.spec()) == family
    assert Categorical(2) != Categorical(3) and Categorical(2) != GaussianMixture(2)
    with pytest.raises(ConfigError, match="unknown family 'logistic'"):
        family_from_spec({"name": "logistic"})
    with pytest.raises(ConfigError, match="bad arguments"):
        family_from_spec({"name": "categorical", "components": 3})
    with pytest.raises(ConfigError, match="num_categories must be an integer from 2"):
        Categorical(1)
    with pytest.raises(ConfigError, match="already registered"):
        register_family(type("Other", (Categorical,), {"name": "categorical"}))
    assert FAMILIES["categorical"] is Categorical


def test_a_family_checks_the_parameters_a_model_returns():
    with pytest.raises(ValueError, match="3 tensors"):
        GaussianMixture().params((torch.zeros(2, 3), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="share one shape"):
        GaussianMixture().params((torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4)))
    assert isinstance(Categorical(2).params(torch.zeros(2, 2)), torch.Tensor)  # a categorical model's logits


class ParamsOnly(DensityModel):
    """A categorical model written in the new style: ``conditional_params`` only, through the family."""

    def __init__(self, event_shape=(1, 2, 2), num_categories: int = 3, ordering: str = "raster") -> None:
        super().__init__(event_shape, num_categories, ordering)
        self.table = torch.nn.Parameter(torch.zeros(self.num_positions, num_categories, num_categories))

    def conditional_params(self, x):
        previous = torch.nn.functional.pad(self.to_sequence(x)[:, :-1], (1, 0))
        return self.table[torch.arange(self.num_positions, device=x.device), previous]


def test_a_model_that_writes_conditional_params_alone_passes_the_kit():
    results = run_checks(ParamsOnly, spaces=[((1, 2, 2), 3)], checks=["normalization", "chain_rule", "causality",
                                                                      "step", "sampling"])
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]
    model = ParamsOnly()
    assert torch.equal(model.conditional_logits(torch.zeros(1, 1, 2, 2, dtype=torch.int64)),
                       model.conditional_params(torch.zeros(1, 1, 2, 2, dtype=torch.int64)))


def test_a_model_that_writes_neither_pass_says_so():
    class Empty(DensityModel):
        pass

    with pytest.raises(NotImplementedError, match="neither conditional_params nor conditional_logits"):
        Empty((1, 1, 2), 2).log_prob(torch.zeros(1, 1, 1, 2, dtype=torch.int64))
    assert issubclass(Empty, DensityModel) and isinstance(Categorical(2), Family)


class LogitBernoulli(Family):
    """A family written here, as a plugin author would: one logit per binary value, p(1) = sigmoid(logit),
    drawn as 1 iff u < sigmoid(logit). Nothing in the kit, the exporter or the runtime knows it."""

    name = "test-logit-bernoulli"
    discrete = True
    param_names = ("logit",)
    noise_width = 1
    noise_rule = "noise = numpy.random.default_rng(seed).random((n, D))"
    draw_rule = "value = 1 iff noise < sigmoid(logit), in float64"
    param_size = 1
    num_categories = 2

    def spec(self):
        return {"name": self.name}

    @classmethod
    def for_data(cls, num_categories):
        if num_categories != 2:
            raise ConfigError("models binary values only")
        return cls()

    def log_prob(self, params, x):
        z = (1 - 2 * x).to(params[0].dtype) * params[0][..., 0]  # log sigmoid(+-logit) = -softplus(z)
        return -(z.relu() + (-z.abs()).exp().log1p())

    def draw(self, params, noise):
        return (noise[..., 0].double() < params[0][..., 0].double().sigmoid()).long()

    def draw_numpy(self, params, noise):
        return (noise[:, 0] < 1 / (1 + np.exp(-params[0][:, 0].astype(np.float64)))).astype(np.int64)

    def check_values(self, x, event_shape):
        return Categorical(2).check_values(x, event_shape)

    def check_tensor_values(self, x):
        return Categorical(2).check_tensor_values(x)

    numpy_dtype = np.dtype(np.int64)


class LogitChain(DensityModel):
    """Binary values, each with a logit that depends on the value before it (an order-1 chain)."""

    families = (LogitBernoulli,)

    def __init__(self, event_shape=(1, 2, 3), num_categories: int = 2, ordering: str = "raster") -> None:
        super().__init__(event_shape, num_categories, ordering)
        self.weight = torch.nn.Parameter(torch.zeros(self.num_positions, 2))

    def conditional_params(self, x):
        previous = torch.nn.functional.pad(self.to_sequence(x)[:, :-1], (1, 0))
        return self.weight[torch.arange(self.num_positions, device=x.device), previous].unsqueeze(-1)  # (B, D, 1)


def test_a_new_family_needs_no_change_in_the_kit_the_exporter_or_the_runtime(tmp_path):
    register_family(LogitBernoulli)
    try:
        results = run_checks(LogitChain)  # every check, export and the torch-free runtime included
        assert [r.name for r in results if not r.passed] == [], [(r.name, r.detail) for r in results]
        model = LogitChain()
        assert model.family == LogitBernoulli() and model.noise_shape(4) == (4, 6)
        from densreg.export import export_model
        from densreg.export.runtime import ExportedModel

        with torch.no_grad():
            model.weight.copy_(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))
        export_model(model, tmp_path / "export")
        exported = ExportedModel(tmp_path / "export", provider="cpu")
        assert exported.manifest["family"] == {"name": "test-logit-bernoulli"}
        noise = np.random.default_rng(3).random((50, 6))
        assert np.array_equal(exported.sample(50, noise=noise), model.sample(50, noise=torch.from_numpy(noise)).numpy())
    finally:
        FAMILIES.pop(LogitBernoulli.name, None)


# -- the edges of the draws and checks (each kills a mutant of tools/mutation.py that the rest let live) --------
def test_the_numpy_draws_break_ties_and_clamp_as_torch_does():
    """u exactly at a cdf value takes the lower level; seven equal levels leave the float64 cdf below
    1 - 2**-53, so that u draws the last level, never K; huge logits do not overflow."""
    cases = [(np.log(np.array([[0.25, 0.25, 0.5]] * 2)), np.array([0.25, 0.5])),
             (np.log(np.array([[0.5, 0.5]] * 2)), np.array([0.5, 0.5 + 2 ** -53])),
             (np.zeros((2, 7)), np.array([1 - 2 ** -53, 0.5])),
             (np.array([[800.0, 0.0, -800.0], [-800.0, 800.0, 0.0]]), np.array([0.9, 0.9])),
             (np.array([[400.0, 399.0, 0.0]] * 2), np.array([0.9, 0.5]))]  # exp(l + max) would overflow
    for logits, u in cases:
        k = logits.shape[-1]
        torch_draw = Categorical(k).draw((torch.from_numpy(logits),), torch.from_numpy(u)[:, None]).numpy()
        assert Categorical(k).draw_numpy((logits,), u[:, None]).tolist() == torch_draw.tolist()
        means = np.zeros_like(logits)  # the mixture's component draw is the same inverse CDF
        chosen = GaussianMixture(k).draw_numpy((logits, means + np.arange(k), means), np.stack([u, u, u * 0], -1))
        z = np.sqrt(-2 * np.log1p(-u)) * np.cos(0.0)
        assert np.allclose(chosen, torch_draw + z)
    assert Categorical(7).draw_numpy((np.zeros((1, 7)),), np.array([[1 - 2 ** -53]])).tolist() == [6]
    assert Categorical(2).draw_numpy((np.zeros((2, 2)),), np.array([[0.5], [0.5 + 2 ** -53]])).tolist() == [0, 1]


def test_categorical_value_checks_at_their_edges():
    shape = (1, 1, 2)
    with pytest.raises(DataError, match=r"non-integer values; expected integers 0\.\.2$"):
        Categorical(3).check_values(np.array([[[[0.6, 1.0]]]]), shape)  # rounds up: caught all the same
    assert Categorical(3).check_values(np.array([[[[True, False]]]]), shape).tolist() == [[[[1, 0]]]]
    with pytest.raises(DataError, match=r"non-integer values; expected integers 0\.\.2$"):
        Categorical(3).check_tensor_values(torch.tensor([[[[0.6, 1.0]]]]))


def test_real_value_checks_give_float32_unless_float64_came():
    shape = (1, 1, 2)
    assert GaussianMixture().check_values(np.array([[[[1, 2]]]], dtype=np.int64), shape).dtype == np.float32
    assert GaussianMixture().check_values(np.array([[[[1, 2]]]], dtype=np.float32), shape).dtype == np.float32
    assert GaussianMixture().check_values(np.array([[[[1, 2]]]], dtype=np.longdouble), shape).dtype == np.float32
    assert GaussianMixture().check_tensor_values(torch.ones(1, 1, 1, 2, dtype=torch.float16)).dtype == torch.float32
    assert GaussianMixture().check_tensor_values(torch.ones(1, 1, 1, 2, dtype=torch.float64)).dtype == torch.float64
    assert GaussianMixture().check_tensor_values(torch.ones(1, 1, 1, 2, dtype=torch.int64)).dtype == torch.float32


def test_the_mixture_views_work_on_the_last_axis_of_any_rank():
    params = MixtureParams(*(t.reshape(4, 2, 3) for t in mixture(8)))  # (B, D, M)
    logits, means, log_scales = GaussianMixture(3).normalized(params)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(4, 2, dtype=torch.float64))
    assert torch.equal(means, params.means) and torch.equal(log_scales, params.log_scales)
    view = GaussianMixture(3).comparable(params)
    weights = torch.softmax(params.logits, -1)
    assert view.shape == (4, 2, 3, 3)
    assert torch.equal(view, torch.stack([weights, weights * params.means, weights * params.log_scales], -1))


def test_integration_points_span_twelve_sigmas_and_integrate_a_gaussian_exactly():
    means, log_scales = torch.tensor([[5.0], [-2.0]], dtype=torch.float64), torch.tensor([[math.log(0.5)], [0.0]],
                                                                                            dtype=torch.float64)
    nodes, weights = GaussianMixture(1).integration_points((torch.zeros(2, 1, dtype=torch.float64), means, log_scales))
    scales = log_scales.exp()
    # the outermost Gauss-Legendre node of [mu - 12 sigma, mu - 8 sigma] lies 0.135 sigma inside it
    assert torch.all(((nodes.min(-1).values - (means - 12 * scales)[:, 0]) / scales[:, 0] - 0.135).abs() < 0.01)
    assert torch.all((((means + 12 * scales)[:, 0] - nodes.max(-1).values) / scales[:, 0] - 0.135).abs() < 0.01)
    assert torch.allclose(weights.sum(-1), 24 * scales[:, 0])
    density = torch.exp(-0.5 * ((nodes - means) / scales) ** 2) / (scales * math.sqrt(2 * math.pi))
    assert torch.allclose((density * weights).sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-10, rtol=0)
