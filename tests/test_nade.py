"""NADE: the vectorised pass against a per-position reference, each value reaching the later
conditionals, the O(H) step state (and the step's dynamo ONNX export), parameter count, features
and config errors. Normalization, chain rule, causality, step == conditional_logits, sampling and
the checkpoint round trip (sigmoid and relu, colour images, K up to 256) are the conformance kit's
checks in test_conformance.py::test_registered_models_pass."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from densreg.registry import ConfigError, DensityModel, create_model
from densreg.app.cli import cli
from densreg.registry.conformance import randomize

ORDERINGS = ["raster", "snake", "column", "random:5"]


def nade(shape, k, ordering="raster", hidden=6, activation="sigmoid", seed=0):
    model = create_model("nade", shape, k, ordering=ordering, hidden=hidden, activation=activation)
    randomize(model, seed)
    return model


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("k", [2, 3])
def test_every_value_reaches_the_later_conditionals(ordering, k):
    """Changing x_d changes some conditional after d: W_d[x_d] enters every later pre-activation
    (that nothing at or after d reaches position d is the kit's causality check)."""
    shape = (2, 2, 3)
    model = nade(shape, k, ordering)
    x = torch.randint(0, k, (4, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model.conditional_logits(x)
        for d in range(model.num_positions - 1):
            seq = model.to_sequence(x).clone()
            seq[:, d] = (seq[:, d] + 1) % k
            flipped = model.conditional_logits(model.from_sequence(seq))
            assert not torch.equal(flipped[:, d + 1:], base[:, d + 1:]), f"x at position {d} reaches nothing"


def reference_log_prob(model, x):
    """Plain float64 per-position NADE, straight from the equations."""
    W, c, V, b = (p.detach().double() for p in (model.W, model.c, model.V, model.b))
    act = torch.sigmoid if model.activation == "sigmoid" else torch.relu
    seq = model.to_sequence(x)
    out = torch.zeros(len(x), dtype=torch.float64)
    for i in range(len(x)):
        a = c.clone()
        for d in range(model.num_positions):
            h = act(a)
            if model.num_categories == 2:
                logits = torch.stack([torch.zeros((), dtype=torch.float64), V[d] @ h + b[d]])
            else:
                logits = V[d] @ h + b[d]
            value = int(seq[i, d])
            out[i] += torch.log_softmax(logits, -1)[value]
            if value > 0:
                a = a + W[d, value - 1]
    return out


@pytest.mark.parametrize("shape, k, ordering, activation", [
    ((1, 4, 5), 2, "snake", "sigmoid"), ((2, 3, 3), 4, "random:3", "relu"), ((1, 1, 7), 2, "column", "relu")])
def test_vectorised_equals_reference(shape, k, ordering, activation):
    model = nade(shape, k, ordering, hidden=9, activation=activation)
    x = torch.randint(0, k, (6, *shape), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model.log_prob(x).double().detach(), reference_log_prob(model, x),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [2, 5])
def test_step_state_is_the_running_sum_of_input_weights(k):
    """The cached step keeps one (B, H) tensor, s_d = sum_{j<d} W_j[x_j] = a_d - c, whatever the
    position: O(H) memory and work per value (step == conditional_logits is the kit's step check)."""
    model = nade((1, 4, 4), k, "snake", hidden=11)
    x = torch.randint(0, k, (5, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    seq = model.to_sequence(x)
    with torch.no_grad():
        expected = model.preactivations(seq) - model.c  # (D, B, H)
        full = model.conditional_logits(x)  # (B, D, K)
        state, value = model.initial_state(5), torch.zeros(5, dtype=torch.int64)
        for d in range(model.num_positions):
            logits, state = model.step(value, torch.tensor(d) if d % 2 else d, state)
            assert tuple(s.shape for s in state) == ((5, 11),) and logits.shape == (5, k)
            torch.testing.assert_close(state[0], expected[d], atol=1e-5, rtol=0)
            torch.testing.assert_close(logits, full[:, d], atol=1e-5, rtol=0)
            value = seq[:, d]


def test_cached_sampling_matches_naive_sampling():
    model = nade((1, 3, 3), 3, "snake", hidden=8)
    noise = torch.rand(7, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(model.sample(7, noise=noise), model.sample(7, noise=noise, naive=True))


def test_parameter_count():
    D, H = 28 * 28, 500
    model = create_model("nade")
    assert model.free_parameters() == 2 * D * H + D + H
    assert model.free_parameters() == sum(p.numel() for p in model.parameters())
    data = json.loads(CliRunner().invoke(cli, ["info", "nade", "--shape", "1,8,8", "--set", "hidden=7",
                                               "--json"]).output)
    assert data["parameters"] == 2 * 64 * 7 + 64 + 7
    assert data["config"]["hidden"] == 7 and data["config"]["activation"] == "sigmoid"
    grey = create_model("nade", (1, 2, 2), 3, hidden=5)
    # K-way softmax: D(H+1) of the D*K*(H+1) output entries are a redundant shift
    assert grey.free_parameters() == sum(p.numel() for p in grey.parameters()) - 4 * (5 + 1)


def test_features_are_the_hidden_units_after_the_whole_image():
    model = nade((1, 3, 3), 2, "snake", hidden=8)
    x = torch.randint(0, 2, (5, 1, 3, 3), generator=torch.Generator().manual_seed(5))
    features = model.features(x)
    assert features.shape == (5, 8) and features.dtype == torch.float32
    # it is h of a position D+1: extend the image by one value and read h at the last position
    seq = model.to_sequence(x).double()
    expected = torch.sigmoid(model.c.double() + seq @ model.W[:, 0].double())
    torch.testing.assert_close(features.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_features_of_grey_levels_add_the_weight_of_each_level(activation):
    """K > 2: value k > 0 at position d adds W[d, k-1]; value 0 adds nothing."""
    model = nade((1, 2, 3), 4, "column", hidden=5, activation=activation)
    x = torch.randint(0, 4, (6, 1, 2, 3), generator=torch.Generator().manual_seed(8))
    seq = model.to_sequence(x)
    pre = model.c.double().expand(6, 5).clone()
    for i in range(6):
        for d in range(model.num_positions):
            if seq[i, d] > 0:
                pre[i] += model.W[d, seq[i, d] - 1].double()
    expected = torch.sigmoid(pre) if activation == "sigmoid" else torch.relu(pre)
    torch.testing.assert_close(model.features(x).double(), expected, atol=1e-5, rtol=0)


def test_config_errors():
    with pytest.raises(ConfigError, match="activation"):
        create_model("nade", activation="tanh")
    with pytest.raises(ConfigError, match="hidden"):
        create_model("nade", hidden=0)
    with pytest.raises(ConfigError, match="hidden"):
        create_model("nade", hidden=2.5)


def test_block_sizes_cover_awkward_lengths():
    for shape in [(1, 1, 1), (1, 1, 13), (3, 2, 5)]:
        model = nade(shape, 2, "raster", hidden=4)
        x = torch.randint(0, 2, (3, *shape), generator=torch.Generator().manual_seed(6))
        assert model.num_positions % model.block == 0
        torch.testing.assert_close(model.log_prob(x).double().detach(), reference_log_prob(model, x),
                                   atol=1e-4, rtol=0)
    assert create_model("nade").block == 28 and math.isqrt(64) == create_model("nade", (1, 8, 8)).block


@pytest.mark.parametrize("k", [2, 3])
def test_step_exports_with_dynamo_onnx(tmp_path, k):
    ort = pytest.importorskip("onnxruntime")
    model = nade((1, 3, 4), k, "snake", hidden=10).eval()

    class Step(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, value, position, state):
            logits, (new,) = self.model.step(value, position, (state,))
            return logits, new

    args = (torch.zeros(2, dtype=torch.int64), torch.tensor(0), torch.zeros(2, 10))
    torch.onnx.export(Step(model), args, str(tmp_path / "step.onnx"), dynamo=True,
                      input_names=["value", "position", "state"], verbose=False)
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randint(0, k, (2, 1, 3, 4), generator=torch.Generator().manual_seed(7))
    seq = model.to_sequence(x).numpy()
    with torch.no_grad():
        expected = model.conditional_logits(x).numpy()
    state, value = np.zeros((2, 10), np.float32), np.zeros(2, np.int64)
    for d in range(model.num_positions):
        logits, state = session.run(None, {"value": value, "position": np.array(d, np.int64), "state": state})
        np.testing.assert_allclose(logits, expected[:, d], atol=1e-5, rtol=0)
        value = seq[:, d]


def traced_log_prob(model, x):
    """log p(x) through the vectorised pass that torch.compile and ONNX export trace."""
    logits = model.traced_conditional_logits(x)
    return torch.log_softmax(logits, -1).gather(-1, model.to_sequence(x).unsqueeze(-1)).squeeze(-1).sum(-1)


@pytest.mark.parametrize("k, activation", [(2, "sigmoid"), (2, "relu"), (3, "sigmoid"), (4, "relu")])
@pytest.mark.parametrize("block", [1, 3, 8])
def test_blocked_pass_and_its_recomputing_backward_equal_the_vectorised_pass(monkeypatch, k, activation, block):
    """The eager pass (blocks of T positions, hand-written backward that recomputes the activations)
    gives the vectorised pass's log_prob and gradients, in float64 to rounding, for any block size,
    and writes into its workspaces as they are (torch warns when an ``out=`` tensor must be resized)."""
    import densreg.plugins.nade as nade_module

    monkeypatch.setattr(nade_module, "eager_block", lambda batch, hidden, positions: block)
    model = nade((1, 4, 5), k, "snake", hidden=9, activation=activation).double()
    x = torch.randint(0, k, (7, 1, 4, 5), generator=torch.Generator().manual_seed(7))
    gradients = []
    for log_prob in (model.log_prob, lambda images: traced_log_prob(model, images)):
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value = log_prob(x)
            (value * torch.linspace(0.5, 1.5, len(x), dtype=torch.float64)).sum().backward()
        gradients.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager, eager_grads), (traced, traced_grads) = gradients
    torch.testing.assert_close(eager, traced, atol=1e-11, rtol=0)
    for mine, theirs in zip(eager_grads, traced_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-11, rtol=1e-10)


def test_backward_keeps_no_tensor_of_every_position():
    """What the blocked pass saves for backward is O(B H D / T): no (D, B, H) activations."""
    model = nade((1, 8, 8), 2, hidden=16)
    x = torch.randint(0, 2, (10, 1, 8, 8), generator=torch.Generator().manual_seed(8))
    logits = model.conditional_logits(x)
    nodes, blocked = [logits.grad_fn], None
    while blocked is None:
        node = nodes.pop()
        if type(node).__name__ in ("BlockedNADEBackward", "StateNADEBackward"):
            blocked = node
        nodes += [n for n, _ in node.next_functions if n is not None]
    largest = max(t.numel() for t in blocked.saved_tensors)
    assert largest < model.num_positions * 10 * 16 / 4


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_binary_fast_sampling_draws_what_the_generic_sampler_draws(activation):
    model = nade((1, 6, 6), 2, "snake", hidden=12, activation=activation)
    noise = torch.rand(50, 36, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    fast = model.sample(50, noise=noise)
    assert torch.equal(fast, DensityModel.sample(model, 50, noise=noise))
    assert 0 < fast.float().mean() < 1


def test_fast_sampling_close_calls_follow_the_generic_draw():
    """A uniform exactly at the generic sampler's p(x = 0): the fast path defers to the generic draw."""
    model = nade((1, 2, 3), 2, hidden=5)
    with torch.no_grad():
        model.W.zero_()  # every conditional independent of the past: p(x_d = 0) known in advance
        logits = model.conditional_logits(torch.zeros(1, 1, 2, 3, dtype=torch.int64))[0]  # (D, 2)
    p0 = torch.softmax(logits.double(), -1)[:, 0]
    noise = torch.stack([p0, torch.nextafter(p0, torch.ones_like(p0)), torch.nextafter(p0, torch.zeros_like(p0))])
    assert torch.equal(model.sample(3, noise=noise), DensityModel.sample(model, 3, noise=noise))


def test_an_images_log_prob_does_not_depend_on_its_batch():
    """Per-image dot products: the same image scores the same in any batch (sharded evaluation relies on it)."""
    model = nade((1, 5, 5), 2, hidden=20)
    x = torch.randint(0, 2, (60, 1, 5, 5), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        full = model.log_prob(x)
        for start, stop in ((0, 1), (3, 17), (20, 60)):
            assert torch.equal(model.log_prob(x[start:stop]), full[start:stop])


def test_a_frozen_model_scores_as_a_trainable_one():
    """With no parameter to differentiate the blocked pass keeps nothing for backward; the values stay."""
    model = nade((1, 4, 5), 3, "snake", hidden=7)
    x = torch.randint(0, 3, (5, 1, 4, 5), generator=torch.Generator().manual_seed(11))
    trainable = model.log_prob(x).detach()
    model.requires_grad_(False)
    torch.testing.assert_close(model.log_prob(x), trainable, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_binary_sampling_takes_the_fast_path_unless_naive(activation):
    """Away from close calls the fast path draws every value itself: the generic step never runs."""
    model = nade((1, 4, 4), 2, "random:2", hidden=10, activation=activation)
    noise = torch.rand(30, 16, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    expected = DensityModel.sample(model, 30, noise=noise)
    naive = []
    model.step = lambda *args: pytest.fail("the generic step ran")
    model.recompute_step = lambda *args, step=model.recompute_step: naive.append(1) or step(*args)
    assert torch.equal(model.sample(30, noise=noise), expected) and not naive
    assert torch.equal(model.sample(30, noise=noise, naive=True), expected) and len(naive) == 16


@pytest.mark.parametrize("k", [2, 4])
def test_the_step_ignores_the_value_passed_at_position_0(k):
    """The protocol: ``value`` at d = 0 is ignored (there is no previous value)."""
    model = nade((1, 2, 3), k, hidden=5)
    state = model.initial_state(3)
    zeros, (s0,) = model.step(torch.zeros(3, dtype=torch.int64), 0, state)
    others, (s1,) = model.step(torch.tensor([1, k - 1, 1]), 0, state)
    assert torch.equal(zeros, others) and torch.equal(s0, s1)


@pytest.mark.parametrize("k", [2, 3])
def test_a_lone_image_scores_as_the_reference(k):
    """A batch of one: the eager pass's per-position input (one multiply-add for binary data, a
    (1, K-1) @ (K-1, H) product otherwise) for B = 1."""
    model = nade((1, 3, 4), k, "snake", hidden=7)
    x = torch.randint(0, k, (1, 1, 3, 4), generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(model.log_prob(x).double().detach(), reference_log_prob(model, x), atol=1e-5, rtol=0)


def bytes_allocated_by_the_eager_pass(model, x, grad):
    """Bytes the blocked pass (BlockedNADE.forward) allocates, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    def inside(event):
        parent = event.cpu_parent
        while parent is not None and parent.name != "BlockedNADE":
            parent = parent.cpu_parent
        return parent is not None

    with torch.set_grad_enabled(grad), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model.conditional_logits(x)
    return sum(e.cpu_memory_usage for e in prof.events() if e.name == "aten::empty" and inside(e))


@pytest.mark.parametrize("k, block_elements, block", [(2, 2**22, 8), (3, 2**22, 8), (3, 2**12, 2)])
def test_the_eager_pass_allocates_two_workspaces_and_keeps_block_starts_only_to_train(monkeypatch, k,
                                                                                      block_elements, block):
    """Memory: the forward allocates two (T, B, H) workspaces and the (D, B, O) logits; the (D/T, B, H)
    running sums at each block's start (what backward recomputes from) only when grad mode is on and
    a parameter needs a gradient, not to score under no_grad nor for a frozen model. T follows the
    batch: at most BLOCK_ELEMENTS floats per workspace (32 images x 64 units: 8 positions, or 2 under
    a limit of 4096). (Binary data takes BlockedNADE off the CPU; here it is made to take it on the CPU too.)"""
    import densreg.plugins.nade as nade_module
    from densreg.plugins.nade import eager_block

    monkeypatch.setattr(nade_module, "state_layout", lambda *args: None)
    monkeypatch.setattr(nade_module, "BLOCK_ELEMENTS", block_elements)

    model = nade((1, 8, 8), k, hidden=64)
    x = torch.randint(0, k, (32, 1, 8, 8), generator=torch.Generator().manual_seed(14))
    B, D, H, O = 32, 64, 64, 1 if k == 2 else k
    T = eager_block(B, H, D)
    assert T == block
    scoring = 4 * (2 * T * B * H + D * B * O)  # float32
    assert bytes_allocated_by_the_eager_pass(model, x, grad=True) == scoring + 4 * (D // T) * B * H
    assert bytes_allocated_by_the_eager_pass(model, x, grad=False) == scoring
    model.requires_grad_(False)
    assert bytes_allocated_by_the_eager_pass(model, x, grad=True) == scoring


# -- the binary pass by distinct states (plugins/nade_states.py) ------------------------------
def running_sums(seq, W, c):
    """a_d for every position, (D, B, H): the running sum of BlockedNADE, float additions in position order."""
    a = c.expand(seq.shape[0], -1).clone()
    out = []
    for d in range(seq.shape[1]):
        out.append(a)
        a = torch.addcmul(a, seq[:, d, None].to(W.dtype), W[d])
    return torch.stack(out)


def test_state_layout_bookkeeping_on_a_small_batch():
    from densreg.plugins.nade_states import StateLayout

    x = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    layout = StateLayout(x)
    # ones per image 3, 0, 1, 4: images by count (most first) 3, 0, 2, 1; rank k holds the images with >= k ones
    assert layout.counts == [4, 3, 2, 2, 1] and layout.offsets == [0, 4, 7, 9, 11] and layout.states == 12
    # image 0 (second by count) at positions 0..4 uses its states 0, 0, 1, 1, 2
    assert layout.row[:, 0].tolist() == [1, 1, 5, 5, 8]
    assert layout.row[:, 1].tolist() == [3] * 5 and layout.row[:, 2].tolist() == [2, 6, 6, 6, 6]
    assert layout.row[:, 3].tolist() == [0, 0, 4, 7, 9]
    # the row of rank k >= 1 adds the weight of the image's k-th one
    assert layout.ones_at.tolist() == [1, 1, 0, 2, 3, 3, 4, 4]
    # CSR: every (image, position) once, in row order, positions ascending within a row
    pattern = torch.sparse_csr_tensor(layout.crow, layout.col, torch.arange(20.0), size=(12, 5),
                                      check_invariants=True).to_dense()
    for b in range(4):
        for d in range(5):
            assert pattern[layout.row[d, b], d] == layout.entry[d, b]
    assert sorted(layout.entry.flatten().tolist()) == list(range(20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_states_are_the_running_sums_bit_for_bit(dtype):
    """Each state is the running sum's pre-activation exactly (the same float additions in the same
    order), including images of no ones, all ones, and a last value 1 (an empty last state)."""
    from densreg.plugins.nade_states import StateLayout

    model = nade((1, 5, 7), 2, "snake", hidden=13).to(dtype)
    x = torch.randint(0, 2, (9, 1, 5, 7), generator=torch.Generator().manual_seed(13))
    x[0], x[1], x[2, 0, -1, -1] = 0, 1, 1
    seq = model.to_sequence(x)
    W, c = model.W.detach()[:, 0], model.c.detach()
    layout = StateLayout(seq.bool())
    table = layout.state_sums(W, c)
    assert table.shape[0] >= layout.states and table.numel() % 64 == 0
    assert torch.equal(table[layout.row], running_sums(seq, W, c))
    # a second, smaller batch reuses the kept memory and still gets its own sums
    small = StateLayout(seq[3:5].bool())
    assert torch.equal(small.state_sums(W, c)[small.row], running_sums(seq[3:5], W, c))


def eager_pass_of(log_prob):
    """The name of the autograd node of the eager pass under ``log_prob`` (a tensor)."""
    nodes = [log_prob.grad_fn]
    while nodes:
        node = nodes.pop()
        if type(node).__name__ in ("BlockedNADEBackward", "StateNADEBackward"):
            return type(node).__name__
        nodes += [n for n, _ in node.next_functions if n is not None]
    return None


def test_scores_chunk_for_chunk_equal_one_table(monkeypatch):
    """The forward builds the state table a range of ranks at a time: chunks of any size (a rank
    or more, the sums carried across) give the logits of one whole table, bit for bit, and an
    image's logits are its own in any batch."""
    import densreg.plugins.nade_states as states_module

    model = nade((1, 6, 7), 2, "snake", hidden=11)
    x = (torch.rand(12, 42, generator=torch.Generator().manual_seed(17)) < 0.4)
    W, c, V = model.W.detach()[:, 0], model.c.detach(), model.V.detach()
    layout = states_module.StateLayout(x)
    whole = layout.scores(W, c, V, "sigmoid")
    table = torch.sigmoid(layout.state_sums(W, c))[layout.row]  # (D, B, H)
    torch.testing.assert_close(whole, (table * V[:, None]).sum(-1), atol=1e-6, rtol=0)
    for elements in (11, 3 * 11 * 12, 10 * 11 * 12):
        monkeypatch.setattr(states_module, "CHUNK_ELEMENTS", elements)
        assert torch.equal(layout.scores(W, c, V, "sigmoid"), whole)
        part = states_module.StateLayout(x[4:9])
        assert torch.equal(part.scores(W, c, V, "sigmoid"), whole[:, 4:9])


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("density", [0.13, 0.5])
def test_state_pass_equals_the_blocked_pass(monkeypatch, activation, density):
    """Binary data on CPU takes the pass by states; its log_prob and gradients are the per-position
    pass's (float64, to rounding), on MNIST-like sparse images and on dense ones."""
    import densreg.plugins.nade as nade_module

    monkeypatch.setattr(nade_module, "MAX_TRAINING_STATES", 1.0)  # the dense batch too
    model = nade((1, 6, 6), 2, "random:4", hidden=10, activation=activation).double()
    x = (torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(14)) < density).long()
    results = []
    for layout, node in ((nade_module.state_layout, "StateNADEBackward"), (lambda *args: None, "BlockedNADEBackward")):
        monkeypatch.setattr(nade_module, "state_layout", layout)
        model.zero_grad()
        value = model.log_prob(x)
        assert eager_pass_of(value) == node
        value.sum().backward()
        results.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    (states, state_grads), (blocked, blocked_grads) = results
    torch.testing.assert_close(states, blocked, atol=1e-11, rtol=0)
    torch.testing.assert_close(states, reference_log_prob(model, x), atol=1e-10, rtol=0)
    for mine, theirs in zip(state_grads, blocked_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-11, rtol=1e-10)


def test_training_on_images_dense_in_ones_takes_the_blocked_pass():
    """Training keeps the pass by states while its tables stay under a quarter of a (D, B, H) tensor:
    a batch with more states per value takes the blocked pass (scoring always takes the states)."""
    from densreg.plugins.nade import MAX_TRAINING_STATES

    model = nade((1, 8, 8), 2, hidden=6)
    gen = torch.Generator().manual_seed(16)
    sparse = (torch.rand(10, 1, 8, 8, generator=gen) < 0.1).long()
    dense = (torch.rand(10, 1, 8, 8, generator=gen) < 0.6).long()
    for x, node in ((sparse, "StateNADEBackward"), (dense, "BlockedNADEBackward")):
        states = len(x) + int(x.sum())
        assert (states <= x.numel() * MAX_TRAINING_STATES) == (node == "StateNADEBackward")
        assert eager_pass_of(model.log_prob(x)) == node
    with torch.no_grad():  # scoring: the same values whichever pass the batch would train with
        torch.testing.assert_close(model.log_prob(dense).double(), reference_log_prob(model, dense), atol=1e-4, rtol=0)
        scored = model.log_prob(dense)
    model.requires_grad_(False)  # nothing to differentiate: grad mode scores with the states too
    assert torch.equal(model.log_prob(dense), scored)


def test_binary_log_probs_are_the_softmax_of_the_logits():
    """The binary shortcut -softplus(-+logit) gives log_softmax((0, logit))[x] (float64 reference)."""
    model = nade((1, 4, 4), 2, hidden=8)
    x = torch.randint(0, 2, (6, 1, 4, 4), generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        logits = model.conditional_logits(x).double()
        expected = torch.log_softmax(logits, -1).gather(-1, model.to_sequence(x).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(model.conditional_log_probs(x).double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("device, dtype, applies", [
    ("cpu", torch.float32, True), ("cpu", torch.float64, True), ("cpu", torch.float16, False),
    ("cpu", torch.bfloat16, False), ("meta", torch.float32, False), ("cuda", torch.float32, False),
    ("aiu", torch.float32, False)])
def test_the_pass_by_states_applies_on_cpu_in_float32_and_float64_only(device, dtype, applies):
    """Any other device (whatever its type's name: "aiu" stands for an out-of-tree backend, seen only
    through its codes' device type) or dtype keeps BlockedNADE."""
    import types

    from densreg.plugins.nade import state_layout

    seq = torch.tensor([[0, 1, 1, 0]])
    codes = seq.to(dtype) if device == "cpu" else types.SimpleNamespace(device=types.SimpleNamespace(type=device),
                                                                          dtype=dtype)
    with torch.no_grad():  # scoring: any number of states
        assert (state_layout(seq, codes) is not None) is applies


def test_training_takes_the_pass_by_states_up_to_a_quarter_state_per_value():
    """B images with m ones in all have B + m states: up to MAX_TRAINING_STATES (a quarter) per value,
    included, training takes the pass by states; one more one, the blocked pass."""
    from densreg.plugins.nade import MAX_TRAINING_STATES

    assert MAX_TRAINING_STATES == 0.25
    model = nade((1, 2, 4), 2, hidden=6)  # 2 images x 8 values: up to 4 states, i.e. 2 ones
    at_limit = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]]).reshape(2, 1, 2, 4)
    over = at_limit.clone()
    over[1, 0, 1, 3] = 1
    assert eager_pass_of(model.log_prob(at_limit)) == "StateNADEBackward"
    assert eager_pass_of(model.log_prob(over)) == "BlockedNADEBackward"


def test_binary_log_probs_keep_their_precision_for_near_certain_values():
    """-softplus(-logit) keeps log p(x = 1) = -exp(-40) for a logit of 40 (log_softmax of (0, 40) in
    float32 rounds it to 0) and gives log p(x = 0) = -40."""
    model = nade((1, 2, 3), 2, hidden=4)
    with torch.no_grad():
        model.V.zero_()
        model.b.fill_(40.0)
    x = torch.tensor([[1, 1, 1, 0, 0, 0]]).reshape(1, 1, 2, 3)
    expected = torch.tensor([[-math.exp(-40.0)] * 3 + [-40.0 - math.exp(-40.0)] * 3], dtype=torch.float64)
    torch.testing.assert_close(model.conditional_log_probs(x).double(), expected, rtol=1e-6, atol=0)


def test_table_memory_is_reused_per_slot_dtype_and_device_and_kept_up_to_keep_bytes(monkeypatch):
    """The state tables' memory: a request no larger than the slot's kept buffer (same dtype and device)
    gets that buffer's memory; a larger one, another dtype or device, or another slot, new memory; a
    buffer is kept for the next call only up to KEEP_BYTES (lowered here to 128 bytes: 32 floats)."""
    import densreg.plugins.nade_states as states_module
    from densreg.plugins.nade_states import table_memory

    monkeypatch.setattr(states_module._kept, "buffers", {}, raising=False)
    monkeypatch.setattr(states_module, "KEEP_BYTES", 128)
    f32, f64, meta = torch.zeros(1), torch.zeros(1, dtype=torch.float64), torch.zeros(1, device="meta")
    first = table_memory(4, 8, f32)
    assert first.shape == (4, 8) and first.dtype == torch.float32
    for rows in (4, 2):  # as large, smaller: the same memory
        assert table_memory(rows, 8, f32).data_ptr() == first.data_ptr()
    assert table_memory(4, 8, f32, slot=1).data_ptr() != first.data_ptr()
    other = table_memory(4, 8, f64)
    assert other.dtype == torch.float64 and other.data_ptr() != first.data_ptr()
    assert table_memory(4, 8, meta).device.type == "meta"
    assert table_memory(4, 8, f32).dtype == torch.float32  # the meta buffer replaced the float64 one
    larger = table_memory(33, 1, f32)  # 132 bytes: new memory, not kept
    assert larger.shape == (33, 1) and table_memory(33, 1, f32).data_ptr() != larger.data_ptr()
    kept = table_memory(32, 1, f32)  # 128 bytes: kept
    assert table_memory(32, 1, f32).data_ptr() == kept.data_ptr()
    small = table_memory(2, 2, f32, slot=2)  # 16 bytes: kept
    assert table_memory(2, 2, f32, slot=2).data_ptr() == small.data_ptr()


@pytest.mark.parametrize("rows, columns, aligned", [(5, 10, 32), (1, 6, 32), (3, 64, 3), (7, 16, 8), (0, 5, 0)])
def test_aligned_rows_is_the_fewest_rows_filling_whole_vectors(rows, columns, aligned):
    """The state table's rows are padded to the fewest whose (rows, columns) table has a multiple of
    TABLE_ALIGN (64) elements."""
    from densreg.plugins.nade_states import TABLE_ALIGN, aligned_rows

    assert TABLE_ALIGN == 64
    assert aligned_rows(rows, columns) == aligned


def test_an_empty_batch_has_one_empty_rank_and_no_states():
    """StateLayout of no images: counts and offsets have the one rank of M = 0 ones, holding nothing."""
    from densreg.plugins.nade_states import StateLayout

    layout = StateLayout(torch.zeros(0, 6, dtype=torch.bool))
    assert layout.counts == [0] and layout.offsets == [0] and layout.states == 0
    assert layout.row.shape == (6, 0) and layout.crow.tolist() == [0]


def test_scores_cut_the_table_into_the_largest_rank_ranges_of_at_most_chunk_elements(monkeypatch):
    """scores() builds the state table greedily a range of whole ranks at a time: each range as long
    as it stays within CHUNK_ELEMENTS // H rows (or the batch's B rows, if more), a range of exactly
    that many included; its memory is one such range plus B carried rows, not the whole table; each
    chunk is activated padded to whole vectors (aligned_rows) and no further; no warning; and the
    logits are the whole table's bit for bit. Images with 4, 4, 2, 2 and 0 ones, H = 8, a chunk of
    64 floats (8 rows): ranks of 5, 4, 4, 2, 2 states go in chunks of 5, 4 + 4 and 2 + 2 rows."""
    import densreg.plugins.nade_states as states_module

    hidden, ones = 8, [4, 4, 2, 2, 0]
    gen = torch.Generator().manual_seed(23)
    x = torch.zeros(len(ones), 10, dtype=torch.bool)
    for image, m in enumerate(ones):
        x[image, torch.randperm(10, generator=gen)[:m]] = True
    W, c, V = (torch.randn(shape, generator=gen) for shape in ((10, hidden), (hidden,), (10, hidden)))
    layout = states_module.StateLayout(x)
    assert layout.counts == [5, 4, 4, 2, 2] and layout.states == 17
    whole = layout.scores(W, c, V, "sigmoid")  # CHUNK_ELEMENTS = 2**21: one chunk
    chunk_rows, activated_rows, memory_rows = [], [], []
    sampled_addmm, table_memory, sigmoid_ = torch.sparse.sampled_addmm, states_module.table_memory, torch.sigmoid_

    def spy_addmm(pattern, *args, **kwargs):
        chunk_rows.append(pattern.shape[0])
        return sampled_addmm(pattern, *args, **kwargs)

    def spy_memory(rows, columns, *args, **kwargs):
        memory_rows.append(rows)
        return table_memory(rows, columns, *args, **kwargs)

    def spy_sigmoid_(table):
        activated_rows.append(table.shape[0])
        return sigmoid_(table)

    monkeypatch.setattr(torch.sparse, "sampled_addmm", spy_addmm)
    monkeypatch.setattr(states_module, "table_memory", spy_memory)
    monkeypatch.setitem(states_module.ACTIVATIONS_, "sigmoid", spy_sigmoid_)
    for elements, chunks in ((None, [17]), (64, [5, 8, 4]), (8 * 5, [5, 4, 4, 4]), (8 * 6, [5, 4, 6, 2]),
                             (8 * 9, [9, 8]), (8 * 16, [15, 2]), (8 * 17, [17])):
        chunk_rows.clear(), activated_rows.clear(), memory_rows.clear()
        if elements is not None:
            monkeypatch.setattr(states_module, "CHUNK_ELEMENTS", elements)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. an out= tensor resized
            assert torch.equal(layout.scores(W, c, V, "sigmoid"), whole), elements
        assert chunk_rows == chunks, elements
        assert activated_rows == [states_module.aligned_rows(rows, hidden) for rows in chunks], elements
        limit = max(5, states_module.CHUNK_ELEMENTS // hidden)
        assert memory_rows == [states_module.aligned_rows(limit, hidden) + 5], elements


def test_scoring_under_no_grad_takes_the_pass_by_states_however_dense_the_batch(monkeypatch):
    """Only a pass that will be differentiated (grad mode on and a parameter needing a gradient) falls
    back to BlockedNADE on images dense in ones; scoring under no_grad, or a frozen model, takes the
    pass by states (spied: which autograd Function's apply runs)."""
    import densreg.plugins.nade as nade_module

    model = nade((1, 8, 8), 2, hidden=6)  # before the spy: its random draw runs the model once (kit's tame)
    ran = []
    for name in ("BlockedNADE", "StateNADE"):
        function = getattr(nade_module, name)
        monkeypatch.setattr(function, "apply", staticmethod(
            lambda *args, _apply=function.apply, _name=name: ran.append(_name) or _apply(*args)))
    dense = (torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(16)) < 0.6).long()
    model.log_prob(dense)
    with torch.no_grad():
        model.log_prob(dense)
    model.requires_grad_(False)
    model.log_prob(dense)
    with torch.no_grad():
        model.log_prob(dense)
    assert ran == ["BlockedNADE", "StateNADE", "StateNADE", "StateNADE"]


def test_a_lone_images_gradients_by_states_equal_the_blocked_pass():
    """A batch of one image (B = 1: backward's (D, N) pattern has one state per position) trains with
    the pass by states and gets the blocked pass's gradients (float64, to rounding)."""
    import densreg.plugins.nade as nade_module

    model = nade((1, 3, 4), 2, "snake", hidden=7).double()
    x = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]).reshape(1, 1, 3, 4)  # 3 states: trains by states
    grads = []
    for layout, node in ((nade_module.state_layout, "StateNADEBackward"), (lambda *args: None, "BlockedNADEBackward")):
        model.zero_grad()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(nade_module, "state_layout", layout)
            value = model.log_prob(x)
            assert eager_pass_of(value) == node
            value.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=1e-10)
