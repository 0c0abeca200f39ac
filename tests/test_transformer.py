"""The autoregressive Transformer (plugins/transformer.py): the kit on levels, colour and real values (export
included), the key/value cache against re-running the prefix, and the cache's size."""

from __future__ import annotations

import pytest
import torch

import densreg
from densreg.registry.conformance import run_checks
from densreg.registry.testing import single_torch_thread  # noqa: F401 - autouse fixture

SMALL = {"width": 16, "layers": 2, "heads": 2}


def test_the_kit_passes_on_levels_and_colour():
    results = run_checks("transformer", SMALL, skip=("export",))
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]


def test_the_kit_passes_on_real_values_export_included():
    results = run_checks("transformer", {**SMALL, "components": 2}, spaces=[((1, 1, 2), 0)])
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]
    assert "export" in {r.name for r in results}


@pytest.mark.parametrize("k", [2, 4, 0])
def test_cached_sampling_draws_what_re_running_the_prefix_draws(k):
    torch.manual_seed(0)
    model = densreg.create_model("transformer", (1, 4, 4), k, **SMALL, ordering="snake").eval()
    if k == 0:
        model.init_from_data(torch.randn(64, 1, 4, 4) * 3 + 1)
    noise = torch.rand(model.noise_shape(8), dtype=torch.float64)
    cached, naive = model.sample(8, noise=noise), model.sample(8, noise=noise, naive=True)
    if k:
        assert torch.equal(cached, naive)
    else:
        assert torch.allclose(cached, naive, atol=1e-4) and bool(torch.isfinite(cached).all())


def test_the_cache_holds_keys_and_values_of_every_layer_and_position():
    model = densreg.create_model("transformer", (1, 28, 28), 2)  # the defaults: width 64, 4 layers
    state = model.initial_state(1)
    assert len(state) == 2 * model.layers
    assert all(t.shape == (1, model.heads, 784, model.width // model.heads) for t in state)
    assert sum(t.numel() * t.element_size() for t in state) == 2 * 4 * 784 * 64 * 4  # 1.6 MB per image


def test_width_must_split_into_heads():
    with pytest.raises(densreg.ConfigError, match=r"width \(10\) must be a multiple of heads \(4\)"):
        densreg.create_model("transformer", (1, 2, 2), 2, width=10, heads=4)
