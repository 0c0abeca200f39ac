"""Samples of the built-in models of real values are finite (plugins/continuous/rnade.py's docstring: what
a drawn value can do to the conditionals after it is bounded), in torch and in the exported runtime alike.

Before the bound, the RNADE trained below drew +-inf in 3 of its 10,000 samples: a rare wide component
at one position widened the next conditionals until the values overflowed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import densreg
from densreg.app.training import fit
from densreg.plugins.continuous.rnade import CONDITION_RANGE, MAX_LOG_SCALE
from densreg.registry import api
from densreg.registry.testing import single_torch_thread  # noqa: F401

SHAPE = (1, 1, 63)  # image-patches


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    return api.load_split("image-patches", "train")[:3000]


@pytest.fixture(scope="module")
def rnade(patches):
    """An RNADE trained briefly (3 epochs on 3,000 patches, about 3 s on one thread)."""
    torch.manual_seed(0)
    model = densreg.create_model("rnade", SHAPE, 0, hidden=100, components=10)
    fit(model, patches, None, epochs=3, lr=3e-3, batch_size=100, threads=1)
    return model.eval()


def test_a_briefly_trained_rnade_draws_10000_finite_samples(rnade):
    samples = rnade.sample(10000, generator=torch.Generator().manual_seed(0))  # the protocol refuses non-finite
    assert samples.shape == (10000, *SHAPE) and bool(torch.isfinite(samples).all())


def test_the_exported_rnade_draws_the_same_finite_samples(rnade, tmp_path):
    from densreg.export.runtime import ExportedModel

    densreg.export_model(rnade, tmp_path / "rnade")
    runtime = ExportedModel(tmp_path / "rnade", threads=1)
    noise = np.random.default_rng(1).random(runtime.noise_shape(2000))
    ours = rnade.sample(2000, noise=torch.from_numpy(noise)).double().numpy()
    theirs = runtime.sample(2000, noise=noise).astype(np.float64)
    assert np.isfinite(theirs).all()
    scale = np.maximum(1.0, np.abs(ours))
    assert np.quantile(np.abs(theirs - ours) / scale, 0.99) < 1e-3  # float32 graphs; a rare draw may go further


def test_a_gaussian_mixture_fit_by_em_draws_10000_finite_samples(patches):
    model = densreg.create_model("gaussian-mixture", SHAPE, 0, components=5, iterations=20)
    fit(model, patches[:500])
    samples = model.sample(10000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (10000, *SHAPE) and bool(torch.isfinite(samples).all())


@torch.no_grad()
def test_an_extreme_value_moves_the_next_conditionals_no_further_than_the_bound():
    """The hidden layer reads a standardized value clamped to +-CONDITION_RANGE, and the log-scales are capped
    at MAX_LOG_SCALE: a value of 1e30 gives the conditionals that a value at the bound gives, finite, in the
    teacher-forced pass and in the step."""
    torch.manual_seed(0)
    model = densreg.create_model("rnade", (1, 1, 3), 0, hidden=8, components=2)
    with torch.no_grad():
        model.b[:, 2] = 50.0  # log-scales far above the cap
    at_bound, extreme = torch.zeros(1, 1, 1, 3), torch.zeros(1, 1, 1, 3)
    at_bound[..., 0], extreme[..., 0] = CONDITION_RANGE, 1e30
    expected, got = model.conditional_params(at_bound), model.conditional_params(extreme)
    for a, b in zip(expected, got):
        assert torch.isfinite(b).all() and torch.equal(a[:, 1:], b[:, 1:])
    assert float(got.log_scales.max()) == MAX_LOG_SCALE
    state = model.initial_state(1)
    _, state = model.step(torch.zeros(1), 0, state)
    params, _ = model.step(torch.tensor([1e30]), 1, state)
    assert all(torch.allclose(p, e[:, 1]) for p, e in zip(params, expected))
