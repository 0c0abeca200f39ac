"""Bernoulli and Markov baselines: exact normalization, causality, step parity, counting fits."""

import numpy as np
import pytest
import torch

from conftest import all_images, randomize_
from densreg.registry import create_model

ORDERINGS = ["raster", "snake", "column", "random:5"]
CASES = [("bernoulli", {}), ("markov", {"order": 1}), ("markov", {"order": 2}), ("markov", {"order": 3})]


@pytest.mark.parametrize("name, config", CASES)
@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("shape, k", [((1, 3, 3), 2), ((1, 2, 2), 3)])
def test_normalization(name, config, ordering, shape, k):
    model = create_model(name, shape, k, ordering=ordering, **config)
    randomize_(model)
    total = model.log_prob(all_images(shape, k)).double().exp().sum()
    assert abs(total.item() - 1.0) < 1e-5


@pytest.mark.parametrize("name, config", CASES)
@pytest.mark.parametrize("ordering", ORDERINGS)
def test_causality(name, config, ordering):
    shape, k = (2, 2, 3), 3
    model = create_model(name, shape, k, ordering=ordering, **config)
    randomize_(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, k, (4, *shape), generator=gen)
    base = model.conditional_logits(x)
    for d in range(model.num_positions):
        seq = model.to_sequence(x).clone()
        seq[:, d:] = torch.randint(0, k, seq[:, d:].shape, generator=gen)
        changed = model.conditional_logits(model.from_sequence(seq))
        assert torch.equal(changed[:, : d + 1], base[:, : d + 1]), f"position {d} sees x at or after {d}"


@pytest.mark.parametrize("name, config", CASES)
def test_step_matches_conditional_logits(name, config):
    model = create_model(name, (1, 3, 4), 3, ordering="snake", **config)
    randomize_(model)
    x = torch.randint(0, 3, (5, 1, 3, 4))
    seq = model.to_sequence(x)
    expected = model.conditional_logits(x)
    state, value = model.initial_state(5), torch.zeros(5, dtype=torch.int64)
    for d in range(model.num_positions):
        logits, state = model.step(value, torch.tensor(d), state)
        torch.testing.assert_close(logits, expected[:, d], atol=1e-6, rtol=0)
        value = seq[:, d]


def test_markov_context_depends_on_more_than_k_back_never():
    model = create_model("markov", (1, 1, 6), 2, order=2)
    randomize_(model)
    x = torch.zeros(2, 1, 1, 6, dtype=torch.int64)
    x[1, 0, 0, 0] = 1  # three or more positions back from position 3
    logits = model.conditional_logits(x)
    assert torch.equal(logits[0, 3:], logits[1, 3:])
    assert not torch.equal(logits[0, 1], logits[1, 1])


def test_bernoulli_fit_is_smoothed_frequency():
    x = torch.tensor([[[[1, 0]]], [[[1, 1]]], [[[0, 0]]]])
    model = create_model("bernoulli", (1, 1, 2), 2, alpha=1.0)
    model.fit_closed_form(x)
    p1 = model.log_probs.exp()[:, 1]
    torch.testing.assert_close(p1, torch.tensor([(2 + 1) / (3 + 2), (1 + 1) / (3 + 2)]))


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


def test_samples_follow_the_model():
    """Frequencies of 20000 samples on 1x1x3 (8 images) match exp(log_prob): chi-square, alpha 1e-4."""
    shape = (1, 1, 3)
    model = create_model("markov", shape, 2, order=1)
    randomize_(model, seed=3)
    images = all_images(shape, 2)
    probs = model.log_prob(images).double().exp()
    samples = model.sample(20000, generator=torch.Generator().manual_seed(0))
    index = (model.to_sequence(samples) * torch.tensor([4, 2, 1])).sum(-1)
    image_index = (model.to_sequence(images) * torch.tensor([4, 2, 1])).sum(-1)
    counts = torch.bincount(index, minlength=8)[image_index].double()
    expected = probs * 20000
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 27.9  # chi-square quantile, 7 degrees of freedom, p = 1e-4


def test_sampling_with_noise_is_deterministic_and_naive_agrees():
    model = create_model("markov", (1, 3, 3), 3, order=2, ordering="random:2")
    randomize_(model)
    noise = torch.rand(6, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(model.sample(6, noise=noise), model.sample(6, noise=noise, naive=True))


@pytest.mark.parametrize("name", ["bernoulli", "markov"])
def test_config_rebuilds_the_model(name):
    model = create_model(name, (1, 3, 3), 3, ordering="column")
    config = model.config()
    again = create_model(name, config.pop("event_shape"), config.pop("num_categories"), **config)
    assert again.config() == model.config()


def test_markov_rejects_huge_tables():
    from densreg.registry import ConfigError

    with pytest.raises(ConfigError, match="over the limit"):
        create_model("markov", (1, 28, 28), 2, order=20)
