"""Bernoulli and Markov baselines: what is special to them (the Markov context, counting fits,
parameter counts, the table limit). Normalization, chain rule, causality, step, sampling and the
checkpoint round trip, for bernoulli and markov orders 1-3 with random tables, are the conformance
kit's checks in test_conformance.py::test_registered_models_pass."""

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
