"""PixelCNN and Gated PixelCNN: receptive fields by gradients (causal; the gated one without blind spot, its
last value seeing every earlier one), the cached step's cost (independent of the height, a small fraction of a
full pass) and its samples identical to the naive re-run's for the same noise, config errors, features.
Normalization, chain rule, causality by perturbation, step == conditional_params (several rows, colour,
K = 256, both families), sampling and the checkpoint round trip are the conformance kit's checks in
test_conformance.py::test_registered_models_pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from densreg.registry import ConfigError, create_model
from densreg.registry.conformance import randomize
from densreg.registry.testing import single_torch_thread  # noqa: F401 (autouse: one torch thread)
from test_pixelrnn import step_cost

VARIANTS = ["pixelcnn", "gated-pixelcnn"]
FAMILIES = [{}, {"family": "logistic-mixture", "components": 3}]


def build(name, shape, k, seed=0, **config):
    """A small model with random weights, in float64 (gradients of deep stacks stay far from zero)."""
    config = {"hidden": 6, "output_hidden": 6, "layers": 2, **config}
    model = create_model(name, shape, k, **config).double()
    randomize(model, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    return model.eval()


def value_gradients(model, x):
    """G (D, D): G[d, e] = |gradient of position d's parameters w.r.t. the value generated e-th| (summed), with
    the output layers' ReLUs dropped (a dead ReLU could zero a gradient by chance; the masks are unchanged)."""
    d_count = model.num_positions
    model.head = lambda h: model.output_conv(model.output_hidden_conv(h))
    scaled = model.scale(x).repeat(d_count, 1, 1, 1).requires_grad_()
    out = model.output_conv(model.output_hidden_conv(model.hidden_maps(scaled)))  # (D, C*n*P, H, W)
    channels, height, width = model.event_shape
    out = out.view(d_count, channels, -1, height, width).permute(0, 3, 4, 1, 2).reshape(d_count, d_count, -1)
    weights = torch.randn(d_count, out.shape[-1], generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    rows = torch.arange(d_count)
    (grad,) = torch.autograd.grad((out[rows, rows] * weights).sum(), scaled)
    return model.to_sequence(grad.abs())


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("shape, k", [((1, 6, 7), 2), ((3, 4, 5), 4)])
def test_causality_by_gradients(name, shape, k):
    model = build(name, shape, k)
    x = torch.randint(0, k, (1, *shape), generator=torch.Generator().manual_seed(1))
    grads = value_gradients(model, x)
    assert torch.equal(grads.triu(), torch.zeros_like(grads)), "a position sees itself or a later value"
    assert (grads > 0)[1:].any(dim=1).all(), "some position after the first sees no earlier value"


@pytest.mark.parametrize("shape, k", [((1, 6, 7), 2), ((3, 4, 5), 4)])
def test_gated_pixelcnn_has_no_blind_spot(shape, k):
    """With 3 + layers >= the width, the last value sees every earlier one, and every value sees every value
    of the rows above within layers + 3 columns (PixelCNN's blind spot would hide the top right)."""
    model = build("gated-pixelcnn", shape, k, layers=4)
    x = torch.randint(0, k, (1, *shape), generator=torch.Generator().manual_seed(1))
    seen = value_gradients(model, x) > 0
    assert seen[-1, :-1].all(), "the last value misses an earlier one"
    assert torch.equal(seen, torch.ones_like(seen).tril(-1))


def test_plain_pixelcnn_has_its_blind_spot():
    """One residual block: pixel (2, 0) of a 1x4x8 image sees (1, 0..3) through the 7x7 mask but not (1, 4..7):
    the 3x3 block reads (1, 1), whose own 7x7 field stops at (1, 0) in its row. The gated model sees them all."""
    shape = (1, 4, 8)
    x = torch.randint(0, 2, (1, *shape), generator=torch.Generator().manual_seed(2))
    plain = value_gradients(build("pixelcnn", shape, 2, layers=1), x) > 0
    gated = value_gradients(build("gated-pixelcnn", shape, 2, layers=5), x) > 0
    d = 2 * 8
    assert plain[d, 8:12].all() and not plain[d, 12:16].any()
    assert gated[d, :d].all()


@pytest.mark.parametrize("name", VARIANTS)
def test_step_cost_does_not_grow_with_height_and_is_a_fraction_of_a_pass(name):
    """Same FLOPs and state shapes for a 1x3x6 and a 1x12x6 image, mid-row (and, for the gated model, whose
    row start runs the finished row's vertical stack, at a row's start); a step costs under 1/20 of a pass."""
    short, tall = build(name, (1, 3, 6), 2), build(name, (1, 12, 6), 2)
    for position in (8, 12):
        flops_short, shapes_short = step_cost(short, position)
        assert (flops_short, shapes_short) == step_cost(tall, position)
    full = FlopCounterMode(display=False)
    with full, torch.no_grad():
        tall.conditional_params(torch.zeros(2, 1, 12, 6, dtype=torch.int64))
    assert step_cost(tall, 8)[0] * 20 < full.get_total_flops()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES, ids=["categorical", "logistic-mixture"])
def test_cached_and_naive_sampling_agree(name, family):
    model = build(name, (3, 3, 4), 8, **family)
    noise = torch.rand(5, model.num_positions, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    samples = model.sample(5, noise=noise)
    assert samples.shape == (5, 3, 3, 4) and samples.dtype == torch.int64 and len(samples.unique()) > 2
    assert torch.equal(samples, model.sample(5, noise=noise, naive=True))


@pytest.mark.parametrize("name, config, message", [
    ("pixelcnn", {"ordering": "snake"}, "raster order"),
    ("gated-pixelcnn", {"ordering": "column"}, "raster order"),
    ("pixelcnn", {"hidden": 4}, "hidden must be at least 2 x the number of channels"),
    ("gated-pixelcnn", {"output_hidden": 2}, "output_hidden must be at least 1 x the number of channels"),
    ("gated-pixelcnn", {"layers": 0}, "layers must be at least 1"),
    ("pixelcnn", {"family": "softmax"}, "unknown family 'softmax'"),
    ("gated-pixelcnn", {"family": "logistic-mixture", "components": 0}, "components must be an integer"),
    ("pixelcnn", {"components": 2 ** 31}, "components must be an integer"),
])
def test_bad_configs(name, config, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, (3, 4, 4), 4, **config)


@pytest.mark.parametrize("name", VARIANTS)
def test_features_are_the_output_layers_input_and_see_only_earlier_pixels(name):
    model = build(name, (1, 4, 5), 2)
    x = torch.randint(0, 2, (2, 1, 4, 5), generator=torch.Generator().manual_seed(3))
    features = model.features(x)
    assert features.shape == (2, 6 * 20)
    changed = x.clone()
    changed[:, 0, 2, 3] = 1 - changed[:, 0, 2, 3]  # pixel 13: features of pixels 0..13 unchanged
    maps, changed_maps = (model.features(v).view(2, 6, 20) for v in (x, changed))
    assert torch.equal(maps[..., :14], changed_maps[..., :14]) and not torch.equal(maps, changed_maps)


@pytest.mark.parametrize("reference", ["CausalPixelCNN", "CroppedGatedPixelCNN"])
def test_speed_references_are_causal(reference):
    """benchmarks/speed.py's pytorch-generative-style references: each pixel's logit depends on earlier pixels
    only (a benchmark against a network that could see its own pixel would compare nothing)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import speed_references

    torch.manual_seed(0)
    model = getattr(speed_references, reference)(4, 3, 8)
    x = torch.randint(0, 2, (30, 1, 5, 6), generator=torch.Generator().manual_seed(1)).float().requires_grad_()
    logits = model.logits(x).flatten(1)  # image d of the batch asks for pixel d's logit
    (grad,) = torch.autograd.grad(logits[torch.arange(30), torch.arange(30)].sum(), x)
    seen = grad.flatten(1) != 0
    assert not seen.triu().any(), "a logit sees its own pixel or a later one"
    assert seen[1:].any(dim=1).all()
