"""PixelCNN++'s discretized logistic mixture family (``LogisticMixture``): exact normalization over the K levels,
log_prob against the bin-probability formula, the torch, numpy and draw.onnx draws agreeing value for value and
inverting the CDF of log_prob, the family's selection by the config key ``family``, and export parity on a model
that emits it (torch against onnxruntime: log_prob, samples for the same noise through every engine)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from densreg.export import export_model
from densreg.export.runtime import ExportedModel
from densreg.registry import ConfigError, create_model
from densreg.registry.conformance import randomize
from densreg.registry.families import (Categorical, LogisticMixture, MixtureParams, family_from_spec,
                                       levels_family)
from densreg.registry.testing import single_torch_thread  # noqa: F401 (autouse: one torch thread)


def mixture(batch, m, dtype=torch.float64, seed=0, scale=1.0):
    """Random mixture parameters (batch, m) each: means beyond [-1, 1] and log scales beyond the clamp."""
    gen = torch.Generator().manual_seed(seed)
    return MixtureParams(torch.randn(batch, m, generator=gen, dtype=dtype) * 2,
                         torch.randn(batch, m, generator=gen, dtype=dtype) * 1.5,
                         torch.randn(batch, m, generator=gen, dtype=dtype) * 4 * scale)


def all_levels(params, k):
    """log p of every level: params (B, M) each -> (B, K)."""
    levels = torch.arange(k)[:, None].expand(k, params[0].shape[0])
    return LogisticMixture(k, params[0].shape[1]).log_prob(MixtureParams(*(p[None] for p in params)), levels).T


@pytest.mark.parametrize("k", [2, 3, 16, 256])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_probabilities_of_the_k_levels_sum_to_one(k, dtype, tol):
    params = mixture(300, 4, dtype)
    params.log_scales[:5] = torch.tensor([-30.0, -7.0, 0.0, 7.0, 30.0], dtype=dtype)[:, None]  # both clamps
    log_p = all_levels(params, k)
    assert log_p.dtype == dtype and bool(log_p.isfinite().all())
    assert (log_p.double().exp().sum(-1) - 1).abs().max() < tol


def test_log_prob_is_the_mixture_of_logistic_bin_masses_with_open_edge_bins():
    k, params = 5, mixture(50, 3)
    half, centre = 1 / (k - 1), torch.linspace(-1, 1, k, dtype=torch.float64)
    scale = params.log_scales.clamp(-7, 7).exp()[..., None]
    upper = torch.sigmoid((centre + half - params.means[..., None]) / scale)
    lower = torch.sigmoid((centre - half - params.means[..., None]) / scale)
    upper[..., -1], lower[..., 0] = 1.0, 0.0  # the edge bins reach to +-infinity
    expected = (params.logits.softmax(-1)[..., None] * (upper - lower)).sum(1).log()  # (B, K)
    assert torch.allclose(all_levels(params, k), expected, atol=1e-10, rtol=0)


def test_log_prob_keeps_precision_where_a_bin_holds_almost_nothing():
    """A narrow logistic far from the bin: the difference of two sigmoids would round to 0 (log = -inf);
    the family's form stays finite and equals the logistic tail there."""
    params = MixtureParams(torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), -0.9, dtype=torch.float64),
                           torch.full((1, 1), -7.0, dtype=torch.float64))
    log_p = all_levels(params, 256)
    assert bool(log_p.isfinite().all())
    z = (1.0 - 1 / 255 + 0.9) * np.exp(7.0)  # the last bin's lower edge, in scales from the mean
    assert float(log_p[0, -1]) == pytest.approx(-z, rel=1e-9)  # log(1 - sigmoid(z)) = -z - log(1 + e^-z)


@pytest.mark.parametrize("k", [2, 7, 256])
def test_the_torch_numpy_and_onnx_draws_agree_and_invert_the_cdf_of_log_prob(k):
    family, params = LogisticMixture(k, 3), mixture(400, 3, torch.float32, seed=k, scale=0.5)
    noise = torch.rand(400, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = family.draw(params, noise)
    theirs = family.draw_numpy(tuple(p.numpy() for p in params), noise.numpy())
    assert ours.dtype == torch.int64 and np.array_equal(ours.numpy(), theirs)
    session = ort.InferenceSession(family.onnx_draw(18, 10).SerializeToString(), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {**{n: p.numpy() for n, p in zip(family.param_names, params)}, "noise": noise[:, 0].numpy()})
    assert np.array_equal(onnx[0], theirs)
    cdf = all_levels(MixtureParams(*(p.double() for p in params)), k).exp().cumsum(-1)[:, :-1]
    expected = (cdf < noise).sum(-1)
    assert torch.equal(ours, expected) and len(torch.unique(ours)) > 1


def test_spec_round_trip_and_selection_by_name():
    family = LogisticMixture(256, 10)
    assert family.spec() == {"name": "logistic-mixture", "num_categories": 256, "components": 10}
    assert family_from_spec(family.spec()) == family
    assert levels_family("logistic-mixture", 4, 3) == LogisticMixture(4, 3)
    assert levels_family("categorical", 4, 3) == Categorical(4)
    with pytest.raises(ConfigError, match="unknown family 'softmax'"):
        levels_family("softmax", 4, 3)
    with pytest.raises(ConfigError, match="real-valued"):
        LogisticMixture.for_data(0)
    with pytest.raises(ConfigError, match="components must be an integer"):
        LogisticMixture(4, 0)


@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn"])
def test_a_model_selects_the_family_by_its_config_and_learns_with_it(name):
    model = create_model(name, (3, 2, 3), 256, hidden=6, layers=1, output_hidden=6, family="logistic-mixture",
                         components=2)
    assert model.family == LogisticMixture(256, 2) and model.config()["family"] == "logistic-mixture"
    params = model.conditional_params(torch.zeros(2, 3, 2, 3, dtype=torch.int64))
    assert isinstance(params, MixtureParams) and all(p.shape == (2, 18, 2) for p in params)
    with pytest.raises(ConfigError, match="unknown family"):
        create_model(name, (1, 2, 3), 2, family="gaussian-mixture")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = create_model("gated-pixelcnn", (3, 3, 4), 16, hidden=6, layers=2, output_hidden=6,
                         family="logistic-mixture", components=3)
    randomize(model, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)
    out = tmp_path_factory.mktemp("export") / "gated-logistic"
    report = export_model(model.eval(), out)
    return model, ExportedModel(out), report


def test_export_parity_torch_against_onnxruntime(exported):
    model, ort_model, report = exported
    assert ort_model.family == model.family and report["log_prob_max_abs_diff"] < 1e-4
    x = torch.randint(0, 16, (5, 3, 3, 4), generator=torch.Generator().manual_seed(2))
    assert np.allclose(ort_model.log_prob(x.numpy()), model.log_prob(x).detach().numpy(), atol=1e-4, rtol=0)
    ours = model.family.unpack(model.conditional_params(x))
    theirs = ort_model.conditional_params(x.numpy())
    assert np.allclose(theirs[0], ours[0].log_softmax(-1).detach().numpy(), atol=1e-5)  # the normalized weights
    assert np.allclose(theirs[1], ours[1].detach().numpy(), atol=1e-5)


def test_exported_samples_equal_torch_samples_for_the_same_noise(exported):
    model, ort_model, _ = exported
    noise = np.random.default_rng(4).random((6, model.num_positions))
    torch_samples = model.sample(6, noise=torch.from_numpy(noise)).numpy()
    assert np.array_equal(ort_model.sample(6, noise=noise), torch_samples)
    assert np.array_equal(ort_model.sample(6, noise=noise, engine="graph"), torch_samples)
    bound = ExportedModel(ort_model.path, provider="cpu", io_binding=True)
    assert bound.io_binding and np.array_equal(bound.sample(6, noise=noise), torch_samples)
