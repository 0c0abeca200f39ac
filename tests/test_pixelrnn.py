"""PixelRNN family (pixelrnn, row-lstm, diagonal-bilstm): receptive fields by gradients (the
causality masks), step cost independent of the height, orderings, config errors, features and a
short training run. Normalization, chain rule, causality by perturbation, step ==
conditional_logits (several rows, colour, K=256), sampling and the checkpoint round trip (layers 1
and 2) are the conformance kit's checks in test_conformance.py::test_registered_models_pass."""

import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from densreg.registry import ConfigError, create_model, load_split, make_ordering
from densreg.app.evaluation import evaluate
from densreg.registry.conformance import randomize
from densreg.registry.testing import single_torch_thread  # noqa: F401 (autouse: one torch thread)
from densreg.app.training import fit

VARIANTS = ["pixelrnn", "row-lstm", "diagonal-bilstm"]
SPATIAL = ["row-lstm", "diagonal-bilstm"]
SHAPES = [((1, 5, 6), 2), ((3, 5, 6), 4)]


def build(name, shape, k, seed=0, **config):
    """A small model with random weights (scaled so logits stay of order 10)."""
    config = {"hidden": 6, "layers": 2, **config}
    if name != "pixelrnn":
        config.setdefault("output_hidden", 6)
    model = create_model(name, shape, k, **config)
    randomize(model, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    return model.eval()


def value_gradients(model, x, linear_head=False):
    """G (D, D): G[d, e] = |gradient of position d's logits w.r.t. the value generated e-th| (summed).

    One copy of the image ``x`` (1, C, H, W) per position d, one backward pass.
    ``linear_head``: drop the ReLUs of the output layers (a dead ReLU can zero a gradient
    by chance; the masks, and so the receptive field, are unchanged).
    """
    d_count, k = model.num_positions, model.num_categories
    weights = torch.randn(d_count, k, generator=torch.Generator().manual_seed(7))
    rows = torch.arange(d_count)
    if model.registry_name == "pixelrnn":
        inp = model.inputs(model.to_sequence(x)).detach().repeat(d_count, 1, 1).requires_grad_()
        logits = model.logits_from_inputs(inp)
        (grad,) = torch.autograd.grad((logits[rows, rows] * weights).sum(), inp)
        slots = grad.abs().sum(-1)  # slot e holds the value generated (e-1)-th
        return torch.cat([slots[:, 1:], torch.zeros(d_count, 1)], dim=1)
    if linear_head:
        model.head = lambda h: model.output_conv(model.output_hidden_conv(h))
    scaled = model.scale(x).repeat(d_count, 1, 1, 1).requires_grad_()
    logits = model.logits_from_scaled(scaled)
    (grad,) = torch.autograd.grad((logits[rows, rows] * weights).sum(), scaled)
    return model.to_sequence(grad.abs())


def diagonal_blind_spot(shape):
    """(D, D) bool: the earlier values a Diagonal BiLSTM cannot see.

    No feature of a pixel depends on its own last channel, so the last value of row i-1
    reaches row i only through the 7x7 input layer, which spans 3 columns right: pixels
    (i, j) with j < W - 4 do not see it (as in the paper's architecture).
    """
    channels, height, width = shape
    per_row = width * channels
    d = torch.arange(channels * height * width)
    row_start, col = d - d % per_row, (d // channels) % width
    blind = (d[None, :] == row_start[:, None] - 1) & (col[:, None] < width - 4) & (row_start[:, None] > 0)
    return blind


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("shape, k", SHAPES)
def test_causality_by_gradients(name, shape, k):
    model = build(name, shape, k)
    x = torch.randint(0, k, (1, *shape), generator=torch.Generator().manual_seed(1))
    grads = value_gradients(model, x)
    assert torch.equal(grads.triu(), torch.zeros_like(grads)), "a position sees itself or a later value"
    grads = value_gradients(model, x, linear_head=True)
    assert torch.equal(grads.triu(), torch.zeros_like(grads)), "a position sees itself or a later value"
    seen = grads > 0
    earlier = torch.ones_like(seen).tril(-1)
    assert seen[1:].any(dim=1).all(), "some position after the first sees no earlier value"
    if name == "pixelrnn":
        assert torch.equal(seen, earlier)
    if name == "diagonal-bilstm":
        assert torch.equal(seen, earlier & ~diagonal_blind_spot(shape))


def test_row_lstm_field_is_triangular_and_diagonal_bilstm_is_not():
    """Pixel (2, 0) of a 1x5x8 image: the Row LSTM cannot see (1, 4), (0, 5) or (0, 7); the
    Diagonal BiLSTM sees them all."""
    shape = (1, 5, 8)
    x = torch.randint(0, 2, (1, *shape), generator=torch.Generator().manual_seed(2))
    row = value_gradients(build("row-lstm", shape, 2, layers=3), x, linear_head=True)
    diagonal = value_gradients(build("diagonal-bilstm", shape, 2), x, linear_head=True)
    d = 16
    assert row[d, [12, 5, 7]].max() == 0 and row[d, [0, 8, 11]].min() > 0
    assert diagonal[d, [12, 5, 7, 0, 8, 11]].min() > 0


def test_plain_pixelrnn_takes_any_ordering():
    """The plain Pixel RNN accepts every ordering (the spatial variants take raster only, see
    test_bad_configs); the kit checks it in raster, snake, column and random:3."""
    for ordering in ("raster", "snake", "column", "random:3"):
        model = build("pixelrnn", (2, 2, 3), 3, ordering=ordering)
        assert model.ordering == ordering and model.config()["ordering"] == ordering
        assert torch.equal(model.order, make_ordering(ordering, (2, 2, 3)))


def step_cost(model, position):
    """(FLOPs of one step at ``position``, state shapes); the state is that after a zero prefix."""
    state = model.initial_state(2)
    value = torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        for d in range(position):
            _, state = model.step(value, d, state)
        with FlopCounterMode(display=False) as counter:
            model.step(value, position, state)
    return counter.get_total_flops(), [tuple(s.shape) for s in state]


@pytest.mark.parametrize("name", VARIANTS)
def test_step_cost_does_not_grow_with_height(name):
    """Same FLOPs and state shapes for a 1x3x5 and a 1x12x5 image, mid-row and at a row's start."""
    short, tall = build(name, (1, 3, 5), 2), build(name, (1, 12, 5), 2)
    if name == "pixelrnn":  # its position embedding grows with D; the LSTM state does not
        short.position_embedding = tall.position_embedding = None
    for position in (7, 10):
        flops_short, shapes_short = step_cost(short, position)
        flops_tall, shapes_tall = step_cost(tall, position)
        assert flops_short == flops_tall > 0
        assert shapes_short == shapes_tall
    if name in SPATIAL:  # (the FLOP counter does not see inside nn.LSTM's fused kernel)
        full = FlopCounterMode(display=False)
        with full, torch.no_grad():
            tall.conditional_logits(torch.zeros(2, 1, 12, 5, dtype=torch.int64))
        assert step_cost(tall, 7)[0] * 10 < full.get_total_flops()


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_and_naive_sampling_agree(name):
    model = build(name, (3, 2, 3), 4)
    noise = torch.rand(4, model.num_positions, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    samples = model.sample(4, noise=noise)
    assert samples.shape == (4, 3, 2, 3) and samples.dtype == torch.int64
    assert torch.equal(samples, model.sample(4, noise=noise, naive=True))


@pytest.mark.parametrize("name, config, message", [
    ("row-lstm", {"ordering": "snake"}, "raster order"),
    ("diagonal-bilstm", {"ordering": "column"}, "raster order"),
    ("row-lstm", {"hidden": 2}, "at least the number of channels"),
    ("diagonal-bilstm", {"layers": 0}, "layers must be at least 1"),
    ("pixelrnn", {"hidden": 0}, "at least 1"),
])
def test_bad_configs(name, config, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, (3, 4, 4), 4, **config)


def test_plain_features_are_the_step_state_after_the_last_position():
    """pixelrnn's documented features: every layer's h once the cached step has run through all D
    positions (layer-major), so they never depend on the last value in generation order."""
    model = build("pixelrnn", (1, 3, 4), 3, ordering="snake")
    x = torch.randint(0, 3, (5, 1, 3, 4), generator=torch.Generator().manual_seed(0))
    seq, state = model.to_sequence(x), model.initial_state(5)
    value = torch.zeros(5, dtype=torch.int64)
    with torch.no_grad():
        for d in range(model.num_positions):
            _, state = model.step(value, d, state)
            value = seq[:, d]
    h = state[0]  # (layers, B, hidden)
    feats = model.features(x)
    assert feats.shape == (5, 2 * 6)
    torch.testing.assert_close(feats, torch.cat([h[0], h[1]], dim=1), atol=1e-5, rtol=1e-5)
    last = model.order[-1].item()
    changed = x.clone().flatten(1)
    changed[:, last] = (changed[:, last] + 1) % 3
    torch.testing.assert_close(model.features(changed.reshape(x.shape)), feats, atol=0, rtol=0)
    changed[:, model.order[0].item()] = (changed[:, model.order[0].item()] + 1) % 3
    assert (model.features(changed.reshape(x.shape)) - feats).abs().max() > 1e-4


@pytest.mark.parametrize("name", SPATIAL)
def test_spatial_features_are_maps_of_the_pixels_before(name):
    """row-lstm / diagonal-bilstm features: (B, hidden*H*W), feature m*H*W + i*W + j is map m at
    pixel (i, j), the input of the output layers; it never depends on pixel (i, j) or later ones."""
    height, width = 4, 5
    model = build(name, (1, height, width), 2)
    x = torch.randint(0, 2, (3, 1, height, width), generator=torch.Generator().manual_seed(1))
    feats = model.features(x)
    assert feats.shape == (3, 6 * height * width)
    assert not feats.requires_grad  # computed without an autograd graph (the weights do require grad)
    maps = feats.reshape(3, 6, height, width)
    with torch.no_grad():  # the documented layout: the head applied to these maps gives the logits
        logits = model.head(maps).reshape(3, 1, 2, height, width).permute(0, 1, 3, 4, 2).reshape(3, -1, 2)
        torch.testing.assert_close(logits, model.conditional_logits(x), atol=1e-5, rtol=1e-5)
    for p in (0, 7, height * width - 1):  # flip pixel p: maps at pixels 0..p (raster) stay as they were
        changed = x.clone().flatten(1)
        changed[:, p] = 1 - changed[:, p]
        after = model.features(changed.reshape(x.shape)).reshape(3, 6, -1)
        assert torch.equal(after[..., :p + 1], maps.flatten(2)[..., :p + 1])
        if p + 1 < height * width:
            assert (after[..., p + 1:] - maps.flatten(2)[..., p + 1:]).abs().max() > 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_short_training_on_digits_lowers_valid_nll(name):
    train, valid = load_split("digits", "train")[:400], load_split("digits", "valid")[:150]
    torch.manual_seed(0)
    config = {"hidden": 8, "layers": 2} if name != "pixelrnn" else {"hidden": 16}
    model = create_model(name, (1, 8, 8), 2, **config)
    before = evaluate(model, valid)["nll_nats"]
    metrics = fit(model, train, valid, epochs=2, batch_size=40, lr=1e-2, seed=0)
    after = evaluate(model, valid)["nll_nats"]
    assert metrics["epochs"] == 2 and abs(metrics["valid_nll_nats"] - after) < 1e-3
    assert after < before - 5.0, f"valid NLL {before:.2f} -> {after:.2f} nats"


class StepModule(torch.nn.Module):
    """``model.step`` as a module: (value, position, *state) -> (logits, *state)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, value, position, *state):
        logits, new_state = self.model.step(value, position, tuple(state))
        return (logits, *new_state)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_step_exports_to_onnx_and_matches(name, tmp_path):
    """The dynamo exporter takes ``step`` (0-dim int64 position); onnxruntime steps match conditional_logits."""
    np = pytest.importorskip("numpy")
    ort = pytest.importorskip("onnxruntime")
    model = build(name, (3, 3, 4), 4)
    state = model.initial_state(2)
    program = torch.onnx.export(StepModule(model), (torch.zeros(2, dtype=torch.int64), torch.tensor(5), *state),
                                dynamo=True)
    program.save(str(tmp_path / "step.onnx"))
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    x = torch.randint(0, 4, (2, 3, 3, 4), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected, seq = model.conditional_logits(x).numpy(), model.to_sequence(x).numpy()
    arrays, value = [s.numpy() for s in state], np.zeros(2, dtype=np.int64)
    for d in range(model.num_positions):
        logits, *arrays = session.run(None, dict(zip(names, [value, np.array(d, dtype=np.int64), *arrays])))
        np.testing.assert_allclose(logits, expected[:, d], atol=1e-5, rtol=0)
        value = seq[:, d]


def per_row_conv_row_lstm(layer, x):
    """The Row LSTM layer straight from its definition, (B, h, H, W) -> (B, h, H, W): the masked
    1x3 input-to-state convolution of the image, then per row a width-3 Conv1d of the row above's state."""
    gates_in = layer.input_to_state(x)
    h = c = x.new_zeros(x.shape[0], x.shape[1], x.shape[3])
    rows = []
    for i in range(x.shape[2]):
        gates = gates_in[:, :, i] + torch.nn.functional.conv1d(h, layer.state_to_state.weight, padding=1)
        gi, gf, go, gg = gates.chunk(4, 1)
        c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        h = torch.sigmoid(go) * torch.tanh(c)
        rows.append(h)
    return torch.stack(rows, 2)


@pytest.mark.parametrize("channels, k", [(1, 2), (3, 4)])
def test_row_lstm_gemm_layout_equals_the_convolutions(channels, k):
    """Rows first, channels last, the masked 1x3 kernel as one GEMM over its unmasked taps and each
    row's state step as one GEMM: the same function as the convolutions, in float64 to rounding."""
    model = create_model("row-lstm", (channels, 5, 6), k, layers=1, hidden=6).double()
    randomize(model, 0)
    layer = model.rnn[0]
    x = torch.randn(3, 6, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), per_row_conv_row_lstm(layer, x), atol=1e-12, rtol=0)


def test_committed_row_lstm_checkpoint_scores_as_before(mnist_npz, monkeypatch):
    """The parameters keep their names and shapes: the committed 5-layer checkpoint loads and gives the
    convolutions' NLL (float32 rounding only)."""
    import numpy as np

    from densreg.plugins.pixelrnn.row_lstm import ROWS_LAYOUT, RowLSTMLayer
    from densreg.registry import load_checkpoint

    model, _ = load_checkpoint(Path(__file__).resolve().parents[1] / "models" / "row-lstm-mnist.safetensors")
    x = torch.from_numpy(np.load(mnist_npz)["test"][:20].astype(np.int64))[:, None]
    with torch.no_grad():
        now = model.log_prob(x)
        monkeypatch.setattr(RowLSTMLayer, "forward_rows", lambda self, rows: per_row_conv_row_lstm(
            self, rows.permute(*ROWS_LAYOUT)).permute(*ROWS_LAYOUT))
        before = model.log_prob(x)
    torch.testing.assert_close(now, before, atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
@pytest.mark.parametrize("channels, k", [(1, 2), (3, 4)])
def test_output_layers_on_the_rows_give_the_image_layout_logits_in_generation_order(name, channels, k):
    """The 1x1 output layers run on the rows layout and the logits are read pixel-major: the same
    as the output layers on the (B, hidden, H, W) maps, gathered through ``order``, in float64."""
    model = build(name, (channels, 4, 5), k, layers=1).double()
    x = torch.randint(0, k, (3, channels, 4, 5), generator=torch.Generator().manual_seed(2))
    scaled = model.scale(x)
    with torch.no_grad():
        image_logits = model.head(model.hidden_maps(scaled))  # (B, C*K, H, W)
        expected = image_logits.reshape(3, channels, k, 4, 5).permute(0, 1, 3, 4, 2).reshape(3, -1, k)[:, model.order]
        torch.testing.assert_close(model.logits_from_scaled(scaled), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("channels, k, height, width", [(1, 2, 5, 6), (3, 4, 4, 7), (1, 2, 7, 3)])
def test_diagonal_bilstm_skewed_views_equal_the_gathered_skew(channels, k, height, width):
    """skew_rows / unskew_rows (strided views of the rows-first layout) against skew / unskew (gathers
    in the image layout): the same maps, and back."""
    from densreg.plugins.pixelrnn.diagonal_bilstm import skew, skew_rows, unskew_rows

    x = torch.randn(height, 2, width, 3, dtype=torch.float64)  # (H, B, W, h)
    skewed = skew_rows(x)  # (H+W-1, B, H, h)
    expected = skew(x.permute(1, 3, 0, 2))  # (B, h, H, H+W-1)
    torch.testing.assert_close(skewed, expected.permute(3, 0, 2, 1), atol=0, rtol=0)
    torch.testing.assert_close(unskew_rows(skewed, width), x, atol=0, rtol=0)


@pytest.mark.parametrize("height, width", [(3, 5), (5, 2)])
def test_skew_shifts_row_i_right_by_i_and_unskew_takes_it_back(height, width):
    """skew by its definition: y[..., i, i + j] = x[..., i, j], zeros elsewhere; unskew inverts it."""
    from densreg.plugins.pixelrnn.diagonal_bilstm import skew, unskew

    x = torch.randn(2, 3, height, width, dtype=torch.float64) + 5  # no zeros inside
    y = skew(x)
    expected = torch.zeros(2, 3, height, height + width - 1, dtype=torch.float64)
    for i in range(height):
        expected[..., i, i:i + width] = x[..., i, :]
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    torch.testing.assert_close(unskew(y, width), x, atol=0, rtol=0)
    torch.testing.assert_close(unskew(skew(x[0, 0]), width), x[0, 0], atol=0, rtol=0)  # (H, W) alone too


def test_diagonal_layer_on_image_maps_is_its_rows_pass_in_the_image_layout():
    """layer(x) on (B, hidden, H, W) maps = forward_rows on the (H, B, W, hidden) rows, laid back out,
    with every size different so that a wrong axis cannot pass."""
    model = create_model("diagonal-bilstm", (1, 4, 6), 2, layers=1, hidden=5).double()
    randomize(model, 0)
    layer = model.rnn[0]
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows = torch.stack([x[:, :, i, :].permute(0, 2, 1) for i in range(4)])  # (H, B, W, hidden)
    out_rows = layer.forward_rows(rows)
    expected = torch.stack([out_rows[i].permute(0, 2, 1) for i in range(4)], dim=2)  # (B, hidden, H, W)
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
@pytest.mark.parametrize("k", [2, 5])
def test_values_enter_the_network_scaled_linearly_onto_minus_one_to_one(name, k):
    """The spatial models' input scaling, which every conformance property would survive: 0..K-1 -> [-1, 1]."""
    model = build(name, (1, 3, 4), k, layers=1)
    levels = torch.arange(k).reshape(1, 1, 1, k).expand(2, 1, 3, k)
    torch.testing.assert_close(model.scale(levels)[0, 0, 0], torch.linspace(-1, 1, k), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_step_hands_the_layers_the_pixel_row_column_and_row_start(name):
    """``step`` tells ``step_layers`` where it is as documented: row = d // (W*C), col = (d // C) % W
    (0-dim int64) and new_row = (d is a row's first position), on a 2-channel image (W*C != W)."""
    model = build(name, (2, 3, 4), 3)
    seen = []
    step_layers = model.step_layers

    def spy(x, row, col, new_row, layer_state):
        seen.append((row, col, new_row))
        return step_layers(x, row, col, new_row, layer_state)

    model.step_layers = spy
    state, value = model.initial_state(2), torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        for d in range(model.num_positions):
            _, state = model.step(value, d, state)
    for d, (row, col, new_row) in enumerate(seen):
        assert row.dtype == col.dtype == torch.int64 and row.dim() == col.dim() == 0
        assert (int(row), int(col), bool(new_row)) == (d // 8, (d // 2) % 4, d % 8 == 0)


@pytest.mark.parametrize("name, widths", [("row-lstm", (2, 0, 1, 2, 0)), ("diagonal-bilstm", (0, 1, 1, 0, 0))])
def test_step_state_has_the_documented_shapes(name, widths):
    """The cached state (what an exported step takes and returns) is as ``initial_layer_state``
    documents: the image's last 4 rows padded 3 columns each side, then per-layer caches (L, B,
    hidden, W + extra), every size distinct; its caches start at zero."""
    model = build(name, (2, 3, 4), 3, layers=3, hidden=5)
    image, *caches = model.initial_state(6)
    assert image.shape == (6, 2, 4, 4 + 6)
    assert [tuple(c.shape) for c in caches] == [(3, 6, 5, 4 + extra) for extra in widths]
    assert all(not t.any() for t in (image, *caches))


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_output_layers_on_contiguous_and_strided_maps(name):
    """``head``: maps (N, hidden, X, Y) -> logits (N, C*K, X, Y) in float64, the same on contiguous maps
    (one batched GEMM per 1x1 layer, no convolution) and on a strided view (the convolutions,
    reading the view in place: no copy)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    model = build(name, (3, 4, 5), 4, hidden=6, output_hidden=9).double()
    maps = torch.randn(2, 4, 6, 5, dtype=torch.float64).permute(0, 2, 1, 3)  # (N, hidden, X, Y), strided
    contiguous = maps.contiguous()
    with torch.no_grad():
        with Ops() as on_view:
            strided = model.head(maps)
        with Ops() as on_contiguous:
            dense = model.head(contiguous)
    assert dense.shape == strided.shape == (2, 12, 4, 5)
    torch.testing.assert_close(dense, strided, atol=1e-12, rtol=0)
    assert on_contiguous.names.count("baddbmm") == 2 and "convolution" not in on_contiguous.names
    assert on_view.names.count("convolution") == 2 and "baddbmm" not in on_view.names
    assert not {"clone", "contiguous", "copy_", "_to_copy"} & set(on_view.names)


@pytest.mark.parametrize("channels, k", [(1, 2), (3, 4)])
def test_row_lstm_inference_rows_equal_the_autograd_rows(channels, k):
    """Without autograd the Row LSTM layer runs its in-place pass (one taps buffer, bias as a row of
    ones, the LSTM on the gates in place): the same function as the autograd pass and as the
    convolutions, in float64 to rounding; ``add_rows_`` adds it into its input, which it returns."""
    model = create_model("row-lstm", (channels, 5, 6), k, layers=1, hidden=6).double()
    randomize(model, 0)
    layer = model.rnn[0]
    x = torch.randn(3, 6, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows = x.permute(2, 1, 0, 3).contiguous()  # (H, h, B, W)
    expected = layer.forward_rows(rows)
    assert expected.requires_grad  # the autograd pass
    torch.testing.assert_close(per_row_conv_row_lstm(layer, x), expected.permute(2, 1, 0, 3), atol=1e-12, rtol=0)
    with torch.no_grad():
        got = layer.forward_rows(rows)
        torch.testing.assert_close(got, expected.detach(), atol=1e-12, rtol=0)
        summed = rows.clone()
        assert layer.add_rows_(summed) is summed
        torch.testing.assert_close(summed, rows + expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", SPATIAL)
@pytest.mark.parametrize("shape, k", SHAPES)
def test_inference_log_probs_equal_the_autograd_pass_and_the_softmax_of_the_logits(name, shape, k):
    """Under no_grad the spatial models evaluate in place (residual sums, ReLU, Row LSTM rows) and take
    the softmax in the output layers' layout: per-position log-probabilities equal those of the
    autograd pass and the log_softmax of ``conditional_logits`` gathered at the values, in float64;
    the caller's images are left as they were."""
    model = build(name, shape, k, layers=3).double()
    x = torch.randint(0, k, (4, *shape), generator=torch.Generator().manual_seed(3))
    before = x.clone()
    with_grad = model.conditional_log_probs(x)
    assert with_grad.requires_grad
    logits = model.conditional_logits(x)
    by_softmax = torch.log_softmax(logits, -1).gather(-1, model.to_sequence(x).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(with_grad, by_softmax, atol=1e-12, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.conditional_log_probs(x), by_softmax.detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(model.conditional_logits(x), logits.detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(model.log_prob(x), with_grad.sum(-1).detach(), atol=1e-12, rtol=0)
    assert torch.equal(x, before)


@pytest.mark.parametrize("channels, k, height, width", [(1, 2, 5, 7), (3, 4, 6, 4)])
def test_diagonal_inference_rows_equal_the_autograd_rows(channels, k, height, width):
    """Without autograd the Diagonal BiLSTM layer runs column by column on one taps buffer (no gate
    tensor of the whole skewed image): the same function as the autograd pass, in float64 to
    rounding, on images taller and wider than square; ``add_rows_`` adds it into its input."""
    model = create_model("diagonal-bilstm", (channels, height, width), k, layers=1, hidden=6).double()
    randomize(model, 0)
    layer = model.rnn[0]
    rows = torch.randn(height, 3, width, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = layer.forward_rows(rows)
    assert expected.requires_grad  # the autograd pass
    with torch.no_grad():
        torch.testing.assert_close(layer.forward_rows(rows), expected.detach(), atol=1e-12, rtol=0)
        summed = rows.clone()
        assert layer.add_rows_(summed) is summed
        torch.testing.assert_close(summed, rows + expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", SPATIAL)
def test_inference_pass_allocates_its_buffers_at_their_sizes(name):
    """The in-place passes write the gates and tanh(c) into buffers allocated at exactly their sizes:
    torch never resizes an ``out=`` tensor (deprecated; it warns). h = 3 and B = 7 > W = 5, so that
    a buffer of any other size (or a view of another shape) would hold elements and be resized."""
    model = create_model(name, (1, 4, 5), 2, layers=1, hidden=3).double()
    randomize(model, 0)
    layer = model.rnn[0]
    shape = (4, 3, 7, 5) if name == "row-lstm" else (4, 7, 5, 3)  # the layer's rows layout of (H, h, B, W)
    rows = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = layer.forward_rows(rows)
    torch.testing.assert_close(got, layer.forward_rows(rows).detach(), atol=1e-12, rtol=0)
