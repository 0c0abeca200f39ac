"""The runtime's sampling loop on its own, fast: ``step_loop`` and ``tile_initial`` driven by a
stand-in for the step.onnx session that runs a torch model's step, so the loop must draw exactly
what ``DensityModel.sample`` draws from the same noise (test_runtime.py and test_export.py check
the same on real exports, slowly)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from densreg.export.runtime import step_loop, tile_initial
from densreg.registry import create_model
from densreg.registry.conformance import randomize


class StepSession:
    """step.onnx stand-in: inputs value, position, state_i (those in ``inputs``); outputs logits, new_state_i.

    Refuses a feed whose names are not exactly its inputs (onnxruntime refuses unknown names too)."""

    def __init__(self, model, batch, inputs=None):
        self.model, self.batch = model, batch
        one, two = model.initial_state(1), model.initial_state(2)
        self.initial = [t.numpy() for t in one]
        self.axes = [next((i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q), None)
                     for a, b in zip(one, two)]
        self.names = [f"state_{i}" for i in range(len(self.initial))]
        self.inputs = ["value", "position", *self.names] if inputs is None else inputs
        self.positions = []

    def specs(self):
        return [{"name": name, "batch_axis": axis} for name, axis in zip(self.names, self.axes)]

    def get_inputs(self):
        return [SimpleNamespace(name=n) for n in self.inputs]

    def output_names(self):
        return [*self.model.family.param_names, *(f"new_{n}" for n in self.names)]

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in self.output_names()]

    def run(self, outputs, feed):
        assert outputs == self.output_names()
        assert set(feed) == set(self.inputs), sorted(feed)
        assert "value" not in feed or feed["value"].dtype == self.model.family.numpy_dtype
        d = int(feed["position"]) if "position" in feed else len(self.positions)
        self.positions.append(d)
        value = torch.from_numpy(feed["value"]) if "value" in feed else torch.zeros(self.batch, dtype=torch.int64)
        state = tuple(torch.from_numpy(feed[n]) for n in self.names)
        family = self.model.family
        with torch.no_grad():
            out, state = self.model.step(value.to(self.model.value_dtype), torch.tensor(d), state)
        return [*(p.numpy() for p in family.unpack(family.params(out))), *(s.numpy() for s in state)]


def model(name="markov", ordering="random:3", **config):
    built = create_model(name, (1, 2, 3), 3, ordering=ordering, **config)
    randomize(built, buffers=True)
    return built.eval()


def noise(n, d, seed=0):
    return np.random.default_rng(seed).random((n, d))


@pytest.mark.parametrize("name, config", [("markov", {"order": 2}), ("nade", {"hidden": 5}),
                                          ("pixelrnn", {"hidden": 4, "layers": 2})])
def test_the_loop_draws_what_torch_draws_from_the_same_noise(name, config):
    m = model(name, **config)
    session, u = StepSession(m, 7), noise(7, m.num_positions)
    values = step_loop(session, m.family, session.specs(), session.initial, u)
    assert values.dtype == np.int64 and values.shape == (7, m.num_positions)
    expected = m.to_sequence(m.sample(7, noise=torch.from_numpy(u))).numpy()
    assert np.array_equal(values, expected)
    assert session.positions == list(range(m.num_positions))


def test_a_step_without_value_or_position_inputs_is_fed_only_its_state():
    """Inputs a graph does not take are left out of the feed (a Markov step of order 1 on K=3
    reads the value; a graph that dropped it must still get its state, one step after another)."""
    m = model(order=1)
    session, u = StepSession(m, 4), noise(4, m.num_positions, 1)
    session.inputs = ["value", *session.names]  # no position input: the stand-in counts the calls
    values = step_loop(session, m.family, session.specs(), session.initial, u)
    assert np.array_equal(values, m.to_sequence(m.sample(4, noise=torch.from_numpy(u))).numpy())


def test_a_stateless_step_draws_each_position_from_its_own_table():
    m = model("bernoulli")
    session, u = StepSession(m, 5, inputs=["position"]), noise(5, m.num_positions, 2)
    values = step_loop(session, m.family, [], [], u)
    logits = m.log_probs.numpy()
    cdf = np.cumsum(np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(-1, keepdims=True), -1)
    assert np.array_equal(values, (cdf[None] < u[..., None]).sum(-1).clip(max=2))


def test_tile_initial_repeats_one_row_along_each_states_batch_axis():
    a, b, c = np.arange(6.0).reshape(1, 2, 3), np.arange(4.0).reshape(2, 1, 2), np.arange(3.0)
    specs = [{"name": "a"}, {"name": "b", "batch_axis": 1}, {"name": "c", "batch_axis": None}]
    tiled = tile_initial(specs, [a, b, c], 4)
    assert [t.shape for t in tiled] == [(4, 2, 3), (2, 4, 2), (3,)]
    assert all(np.array_equal(tiled[0][i], a[0]) for i in range(4))
    assert all(np.array_equal(tiled[1][:, i], b[:, 0]) for i in range(4))
    assert np.array_equal(tiled[2], c)
    assert all(t.flags.c_contiguous for t in tiled)  # onnxruntime takes contiguous arrays


def test_the_loop_draws_real_values_as_torch_does_feeding_them_back_as_float32():
    """A Gaussian-mixture model: three uniforms per value, the numpy draw, values fed back as float32."""
    m = create_model("rnade", (1, 2, 3), 0, hidden=6, components=3, ordering="snake")
    randomize(m)
    m.eval()
    session = StepSession(m, 5)
    u = np.random.default_rng(4).random((5, m.num_positions, 3))
    values = step_loop(session, m.family, session.specs(), session.initial, u)
    assert values.dtype == np.float64 and values.shape == (5, m.num_positions)
    expected = m.to_sequence(m.sample(5, noise=torch.from_numpy(u))).double().numpy()
    assert np.allclose(values, expected, atol=1e-5, rtol=0) and len(np.unique(values.round(3))) > 20
