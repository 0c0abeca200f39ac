"""Bernoulli and Markov baselines: what is special to them (the Markov context, counting fits,
parameter counts, the table limit). Normalization, chain rule, causality, step, sampling and the
checkpoint round trip, for bernoulli and markov orders 1-3 with random tables, are the conformance
kit's checks in test_conformance.py::test_registered_models_pass."""

import math

import numpy as np
import pytest
import torch

from densreg.registry import create_model
from densreg.registry.conformance import randomize


def test_markov_context_depends_on_more_than_k_back_never():
    model = create_model("markov", (1, 1, 6), 2, order=2)
    randomize(model, buffers=True)
    x = torch.zeros(2, 1, 1, 6, dtype=torch.int64)
    x[1, 0, 0, 0] = 1  # three or more positions back from position 3
    logits = model.conditional_logits(x)
    assert torch.equal(logits[0, 3:], logits[1, 3:])
    assert not torch.equal(logits[0, 1], logits[1, 1])


@pytest.mark.parametrize("alpha", [1.0, 0.25, 3.0])
def test_bernoulli_fit_is_smoothed_frequency(alpha):
    x = torch.tensor([[[[1, 0]]], [[[1, 1]]], [[[0, 0]]]])
    model = create_model("bernoulli", (1, 1, 2), 2, alpha=alpha)
    model.fit_closed_form(x)
    p1 = model.log_probs.exp()[:, 1].double()
    expected = torch.tensor([(2 + alpha) / (3 + 2 * alpha), (1 + alpha) / (3 + 2 * alpha)], dtype=torch.float64)
    torch.testing.assert_close(p1, expected, rtol=1e-6, atol=1e-7)


def test_markov_fit_matches_counting_by_hand():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 2, size=(200, 1, 1, 5))
    model = create_model("markov", (1, 1, 5), 2, order=1, alpha=0.5)
    model.fit_closed_form(torch.from_numpy(data))
    seq = data.reshape(200, 5)
    for d in range(1, 5):
        for prev in (0, 1):
            rows = seq[seq[:, d - 1] == prev]
            expected = ((rows[:, d] == 1).sum() + 0.5) / (len(rows) + 1.0)
            got = model.log_probs[d, prev, 1].exp().item()
            assert abs(got - expected) < 1e-6


def test_fit_improves_likelihood_over_uniform():
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(300, 1, 4, 4, generator=gen) < torch.linspace(0.05, 0.95, 16).reshape(1, 1, 4, 4)).long()
    for name in ("bernoulli", "markov"):
        model = create_model(name, (1, 4, 4), 2)
        before = -model.log_prob(x).mean()
        model.fit_closed_form(x)
        assert -model.log_prob(x).mean() < before - 1.0


@pytest.mark.parametrize("k, order, expected", [(2, 1, lambda d: 2 * d - 1), (2, 2, lambda d: 1 + 2 + 4 * (d - 2)),
                                                (3, 1, lambda d: 2 + 6 * (d - 1))])
def test_markov_free_parameters(k, order, expected):
    model = create_model("markov", (1, 4, 5), k, order=order)
    assert model.free_parameters() == expected(20)


def test_bernoulli_free_parameters():
    assert create_model("bernoulli", (1, 28, 28), 2).free_parameters() == 784
    assert create_model("bernoulli", (1, 8, 8), 17).free_parameters() == 64 * 16


def test_sampling_with_noise_is_deterministic_and_naive_agrees():
    model = create_model("markov", (1, 3, 3), 3, order=2, ordering="random:2")
    randomize(model, buffers=True)
    noise = torch.rand(6, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(model.sample(6, noise=noise), model.sample(6, noise=noise, naive=True))


def test_markov_rejects_huge_tables():
    from densreg.registry import ConfigError

    with pytest.raises(ConfigError, match="over the limit"):
        create_model("markov", (1, 28, 28), 2, order=20)


@pytest.mark.parametrize("name", ["bernoulli", "markov"])
def test_constructor_defaults_are_binary_28x28_raster_add_one(name):
    from densreg.plugins.baselines import Bernoulli, Markov

    model = {"bernoulli": Bernoulli, "markov": Markov}[name]()
    assert (model.event_shape, model.num_categories, model.ordering, model.alpha) == ((1, 28, 28), 2, "raster", 1.0)
    assert name == "bernoulli" or model.markov_order == 1


@pytest.mark.parametrize("name, config", [("bernoulli", {}), ("markov", {"order": 2})])
@pytest.mark.parametrize("k", [2, 3])
def test_an_unfitted_model_is_uniform(name, config, k):
    model = create_model(name, (1, 2, 3), k, **config)
    x = torch.randint(0, k, (5, 1, 2, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.log_prob(x), torch.full((5,), -6 * math.log(k)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["bernoulli", "markov"])
def test_alpha_zero_is_the_raw_frequency_and_negative_alpha_is_refused(name):
    from densreg.registry import ConfigError

    x = torch.tensor([[[[1, 0]]], [[[1, 1]]], [[[0, 0]]], [[[1, 0]]]])
    model = create_model(name, (1, 1, 2), 2, alpha=0.0)
    model.fit_closed_form(x)
    assert model.log_prob(torch.tensor([[[[1, 0]]]])).exp().item() == pytest.approx(
        0.75 * (2 / 3 if name == "markov" else 0.75), rel=1e-6)
    for alpha in (-0.5, -1e-9, -2.0):
        with pytest.raises(ConfigError):
            create_model(name, (1, 1, 2), 2, alpha=alpha)


@pytest.mark.parametrize("name", ["bernoulli", "markov"])
def test_fit_reports_the_mean_train_nll_in_nats(name):
    x = torch.randint(0, 3, (50, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    model = create_model(name, (1, 2, 2), 3)
    metrics = model.fit_closed_form(x)
    assert metrics["train_nll_nats"] > 0
    assert metrics["train_nll_nats"] == pytest.approx(float(-model.log_prob(x).mean()), rel=1e-6)


@pytest.mark.parametrize("name", ["bernoulli", "markov"])
def test_fit_counts_without_gradient_steps(name):
    from densreg.app.training import fit

    x = torch.randint(0, 2, (40, 1, 2, 2), generator=torch.Generator().manual_seed(2))
    by_fit, by_counting = create_model(name, (1, 2, 2)), create_model(name, (1, 2, 2))
    fit(by_fit, x, x[:10])
    by_counting.fit_closed_form(x)
    assert torch.equal(by_fit.log_probs, by_counting.log_probs)


def test_markov_refuses_order_zero():
    from densreg.registry import ConfigError

    with pytest.raises(ConfigError):
        create_model("markov", (1, 2, 2), 2, order=0)
    assert create_model("markov", (1, 2, 2), 2, order=1).markov_order == 1


@pytest.mark.parametrize("k, order, limit, refused", [(2, 1, 24, False), (2, 2, 24, True), (3, 1, 24, True),
                                                     (2, 3, 24, True), (2, 2, 40, True), (2, 2, 48, False)])
def test_markov_table_limit_counts_positions_contexts_and_levels(monkeypatch, k, order, limit, refused):
    """The limit is on D * K^order * K entries (here 6 * K^order * K against a lowered limit)."""
    from densreg.plugins import baselines
    from densreg.registry import ConfigError

    monkeypatch.setattr(baselines, "MAX_TABLE_ENTRIES", limit)
    if refused:
        with pytest.raises(ConfigError):
            create_model("markov", (1, 2, 3), k, order=order)
    else:
        assert create_model("markov", (1, 2, 3), k, order=order).log_probs.numel() == 6 * k ** order * k


@pytest.mark.parametrize("positions, k, order, fits", [
    (128, 5, 7, True), (129, 5, 7, False), (12_500_000, 2, 1, True), (12_500_001, 2, 1, False),
    (5000, 10, 3, True), (5001, 10, 3, False), (1, 2, 10**18, False)])
def test_markov_table_limit_is_exact_at_50_million_entries(positions, k, order, fits):
    """D * K^order * K <= 50 000 000 in whole numbers: a table of exactly the limit fits (the earlier
    comparison in logs refused 5000 x 10^3 x 10 by rounding), one more position does not; decided
    without building anything, and at once for a hostile order."""
    from densreg.plugins.baselines import table_fits

    assert table_fits(positions, k, order) is fits


def test_markov_refuses_a_table_one_position_over_the_limit():
    """Refused before anything is allocated, with the limit in the message."""
    from densreg.registry import ConfigError

    with pytest.raises(ConfigError, match="over the limit of 50000000"):
        create_model("markov", (3, 43, 1), 5, order=7)  # 129 x 5^7 x 5 entries


def test_markov_context_does_not_depend_on_the_batch_size():
    model = create_model("markov", (1, 1, 6), 2, order=3)
    randomize(model, buffers=True)
    x = torch.randint(0, 2, (5, 1, 1, 6), generator=torch.Generator().manual_seed(3))
    together = model.conditional_logits(x)
    for i in range(5):
        assert torch.equal(model.conditional_logits(x[i:i + 1])[0], together[i])
