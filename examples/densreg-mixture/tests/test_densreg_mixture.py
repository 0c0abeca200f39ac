"""densreg-mixture's own tests: densreg's conformance kit, plus what is special to a mixture."""

import itertools

import pytest
import torch

pytest.importorskip("densreg_mixture", reason="pip install -e examples/densreg-mixture")

from densreg.registry import create_model, list_models, load_split  # noqa: E402
from densreg.registry.testing import ModelConformance, single_torch_thread  # noqa: E402,F401 (autouse: one torch thread)
from densreg_mixture import Mixture  # noqa: E402



class TestMixtureConformance(ModelConformance):
    """Every densreg conformance check, through the registry name the entry point gives."""

    model, config = "mixture", {"components": 3, "iterations": 3}


class TestMixtureFactoryConformance(ModelConformance):
    """The same checks on the class itself (no registry needed), categorical case K=3 included."""

    model, config = Mixture, {"components": 2, "iterations": 3}
    skip_checks = ("export",)


def test_registered_through_the_entry_point():
    assert "mixture" in list_models()
    assert type(create_model("mixture", (1, 2, 2), components=2)) is Mixture


@torch.no_grad()
def test_log_prob_is_the_mixture_density_by_brute_force():
    model = create_model("mixture", (1, 1, 3), 3, components=2)
    with torch.no_grad():
        model.logits.normal_(generator=torch.Generator().manual_seed(0))
        model.weight_logits.copy_(torch.tensor([0.3, -0.7]))
    weights = torch.softmax(model.weight_logits.double(), 0)
    tables = torch.softmax(model.logits.double(), -1)  # (M, D, K)
    for values in itertools.product(range(3), repeat=3):
        expected = sum(weights[m] * tables[m, 0, values[0]] * tables[m, 1, values[1]] * tables[m, 2, values[2]]
                       for m in range(2))
        got = model.log_prob(torch.tensor(values).reshape(1, 1, 1, 3)).double().exp()
        assert abs(float(got) - float(expected)) < 1e-6


def test_em_never_decreases_the_likelihood_and_beats_independence():
    train = load_split("digits", "train")
    nll = []
    for iterations in (0, 1, 3, 10):
        model = create_model("mixture", (1, 8, 8), components=5, iterations=iterations)
        nll.append(model.fit_closed_form(train)["train_nll_nats"])
    assert all(later <= earlier + 1e-9 for earlier, later in zip(nll, nll[1:])), nll
    independent = create_model("bernoulli", (1, 8, 8))
    independent.fit_closed_form(train)
    assert nll[-1] < float(-independent.log_prob(train).mean()) - 2.0


@torch.no_grad()
def test_conditional_logits_stay_normalized_at_28x28():
    """Logits are log-probabilities (<= 0, log-sum-exp 0), not prefix sums of hundreds of nats."""
    model = create_model("mixture", (1, 28, 28), components=4)
    x = torch.randint(0, 2, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    logits = model.conditional_logits(x)
    assert float(logits.max()) <= 1e-6
    torch.testing.assert_close(torch.logsumexp(logits, -1), torch.zeros(2, 784), atol=1e-5, rtol=0)


@torch.no_grad()
def test_features_are_the_posterior_over_components():
    model = create_model("mixture", (1, 2, 2), components=3)
    x = torch.randint(0, 2, (4, 1, 2, 2))
    features = model.features(x)
    assert features.shape == (4, 3)
    torch.testing.assert_close(features.sum(-1), torch.ones(4))


def test_gradient_training_through_densreg_fit():
    """fit="gradient": densreg's own training loop minimises the exact NLL by Adam."""
    from densreg.app.training import fit

    train, valid = load_split("digits", "train"), load_split("digits", "valid")
    model = create_model("mixture", (1, 8, 8), components=5, fit="gradient")
    assert not model.closed_form
    with torch.no_grad():
        before = float(-model.log_prob(valid).mean())
    metrics = fit(model, train, valid, epochs=3, lr=0.05, seed=0)
    assert metrics["epochs"] == 3 and metrics["valid_nll_nats"] < before - 5.0, (before, metrics)


class TestMixtureGradientConformance(ModelConformance):
    """With fit="gradient" the kit draws the parameters at random instead of running EM."""

    model, config = "mixture", {"components": 2, "fit": "gradient"}
    skip_checks = ("export",)


def test_bars_dataset_is_registered_by_the_plugin_and_loads():
    from densreg.registry import get_dataset

    bars = get_dataset("bars")
    assert (bars.plugin, bars.distribution) == ("mixture", "densreg-mixture")
    train = load_split("bars", "train")
    assert train.shape == (1000, 1, 4, 4) and train.dtype == torch.int64
    flat = train.reshape(len(train), 4, 4)
    rows_constant = (flat == flat[:, :, :1]).all(-1).all(-1)
    cols_constant = (flat == flat[:, :1, :]).all(-1).all(-1)
    assert bool((rows_constant | cols_constant).all())  # every image is bars, and nothing else
    assert torch.equal(load_split("bars", "test"), load_split("bars", "test"))  # seeded per split
    assert not torch.equal(load_split("bars", "valid"), load_split("bars", "test")[:200])


def test_mixture_fits_bars_better_than_independent_pixels():
    train, test = load_split("bars", "train"), load_split("bars", "test")
    scores = {}
    for name, config in (("mixture", {"components": 8, "iterations": 30}), ("bernoulli", {})):
        model = create_model(name, (1, 4, 4), **config)
        model.fit_closed_form(train)
        scores[name] = float(-model.log_prob(test).mean())
    assert scores["mixture"] < scores["bernoulli"] - 1.0, scores
