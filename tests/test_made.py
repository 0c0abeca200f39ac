"""MADE (plugins/made.py): the masks' degrees, the exact ensemble over connectivities, the training draw of
one member per minibatch, and the conformance kit on levels and on real values (export included)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from click.testing import CliRunner

import densreg
from densreg.app.cli import cli
from densreg.plugins.made import MADE, connectivity
from densreg.registry import mixture_log_density
from densreg.registry.conformance import run_checks
from densreg.registry.testing import single_torch_thread  # noqa: F401 - autouse fixture


def member_log_prob(model: MADE, x: torch.Tensor, i: int) -> torch.Tensor:
    """log p_i(x) of member i, computed from its outputs alone (not through the ensemble's conditionals)."""
    seq, inputs = model.inputs(x)
    out = model.member(inputs, i)
    if model.num_categories:
        return torch.log_softmax(model.member_params(out), -1).gather(-1, seq.unsqueeze(-1)).squeeze(-1).sum(-1)
    _, u = model.standardize(x)
    mixture = model.standardized_mixture(out.unflatten(-1, (3, model.components)))
    return (mixture_log_density(mixture, u) - model.log_scale).sum(-1)


def all_images(shape, k):
    return torch.tensor(list(itertools.product(range(k), repeat=math.prod(shape)))).reshape(-1, *shape)


@pytest.mark.parametrize("positions, layers", [(1, 1), (2, 2), (7, 3)])
def test_output_d_reaches_only_inputs_before_d(positions, layers):
    masks = connectivity(positions, 16, layers, seed=4)
    reach = masks[0].double()
    for mask in masks[1:]:
        reach = (mask.double() @ reach).clamp(max=1)  # output -> input paths through every layer
    allowed = torch.ones(positions, positions).tril(-1)  # output d may see inputs j < d
    assert bool((reach <= allowed).all())
    if positions == 7:
        assert reach[-1, :-1].sum() > 0  # and does see some: the network is not empty


@pytest.mark.parametrize("k", [2, 3])
def test_the_ensemble_is_the_exact_average_of_its_members(k):
    torch.manual_seed(0)
    model = densreg.create_model("made", (1, 2, 3), k, hidden=12, layers=2, masks=4, ordering="snake").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        x = all_images((1, 2, 3), k) if k == 2 else torch.randint(0, k, (50, 1, 2, 3))
        members = torch.stack([member_log_prob(model, x, i) for i in range(4)])
        expected = torch.logsumexp(members, 0) - math.log(4)
        assert torch.allclose(model.log_prob(x), expected, atol=1e-5)
        assert not torch.allclose(members[0], members[1], atol=1e-3)  # the masks differ
        if k == 2:
            assert float(model.log_prob(x).exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_real_values_ensemble_is_the_average_of_members_with_standardization():
    torch.manual_seed(1)
    model = densreg.create_model("made", (1, 1, 4), 0, hidden=10, masks=3, components=2).eval()
    data = torch.randn(200, 1, 1, 4) * 5 + 3
    model.init_from_data(data)
    assert model.family.components == 6  # N * M Gaussians per conditional
    with torch.no_grad():
        members = torch.stack([member_log_prob(model, data[:20], i) for i in range(3)])
        assert torch.allclose(model.log_prob(data[:20]), torch.logsumexp(members, 0) - math.log(3), atol=1e-4)


def test_training_draws_one_member_per_call_from_a_seeded_stream():
    def drawn(seed):
        model = densreg.create_model("made", (1, 2, 2), 2, hidden=8, masks=5, mask_seed=seed).train()
        x = torch.randint(0, 2, (6, 1, 2, 2))
        members = [member_log_prob(model, x, i).detach() for i in range(5)]
        picks = []
        for _ in range(12):
            got = model.log_prob(x).detach()
            picks.append(next(i for i, m in enumerate(members) if torch.allclose(got, m)))
        return picks
    first = drawn(3)
    assert first == drawn(3) and len(set(first)) > 1  # reproducible, and more than one member trains
    model = densreg.create_model("made", (1, 2, 2), 2, hidden=8, masks=5, mask_seed=3).train()
    with torch.no_grad():  # without gradients (validation inside training), the ensemble
        x = torch.randint(0, 2, (6, 1, 2, 2))
        assert torch.allclose(model.log_prob(x), model.eval().log_prob(x))


def test_the_kit_passes_an_ensemble_on_levels_and_colour():
    config = {"hidden": 16, "layers": 2, "masks": 3}
    results = run_checks("made", config, skip=("export", "round_trip"))
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]


def test_the_kit_passes_an_ensemble_of_real_values_export_included():
    results = run_checks("made", {"hidden": 8, "masks": 2, "components": 2}, spaces=[((1, 1, 2), 0)])
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]
    assert {r.name for r in results} >= {"normalization", "export", "sampling"}


@pytest.mark.parametrize("setting, message", [("masks=0", "masks must be an integer from 1 to 256, got 0"),
                                              ("layers=true", "bad value for 'layers': True is not a int"),
                                              ("activation=gelu", "activation must be one of relu, tanh, sigmoid")])
def test_bad_settings_are_one_line(setting, message):
    result = CliRunner().invoke(cli, ["info", "made", "--set", setting])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
