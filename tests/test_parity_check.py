"""The exporter's parity check on its own, fast: onnxruntime replaced by a stand-in session that runs
the torch model and is off by known amounts, so each field of the report is checked exactly (the
export tests in test_export.py check the same report on real ONNX graphs, slowly)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from densreg.export import parity as exporter
from densreg.registry import create_model
from densreg.plugins.baselines import Markov
from densreg.registry.conformance import randomize


def markov():
    model = create_model("markov", (1, 2, 3), 3, order=2, ordering="snake")
    randomize(model, buffers=True)
    return model.eval()


def drawn_images(model, batch: int, seed: int) -> torch.Tensor:
    """The images parity_check draws for ``batch`` and ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.num_categories, (batch, *model.event_shape), generator=gen)


class Conditionals:
    """conditionals.onnx stand-in: the torch outputs plus ``off`` {"logits"|"log_prob"|"pixel": (index, amount)}."""

    def __init__(self, model, **off):
        self.model, self.off, self.seen = model, off, []

    def get_inputs(self):
        return [SimpleNamespace(name="images")]

    def run(self, outputs, feed):
        assert outputs is None and set(feed) == {"images"} and isinstance(feed["images"], np.ndarray)
        self.seen.append(feed["images"])
        with torch.no_grad():
            outs = [t.numpy().copy() for t in exporter.ConditionalsGraph(self.model)(torch.from_numpy(feed["images"]))]
        for i, name in enumerate(("logits", "log_prob", "pixel")):
            if name in self.off:
                index, amount = self.off[name]
                outs[i][index] += amount
        return outs


class Step:
    """step.onnx stand-in: the torch step on numpy state, its logits off by ``amount`` at ``position``.

    ``inputs``: the input names it declares (an unknown name fed is an error, as in onnxruntime).
    Records every value and position fed."""

    def __init__(self, model, batch, position=None, amount=0.0, inputs=None):
        self.model, self.batch, self.position, self.amount = model, batch, position, amount
        names = ["value", "position"] + [f"state_{i}" for i in range(len(model.initial_state(1)))]
        self.inputs = names if inputs is None else inputs
        self.values, self.positions = [], []

    def get_inputs(self):
        return [SimpleNamespace(name=n) for n in self.inputs]

    def run(self, outputs, feed):
        assert outputs is None and set(feed) == set(self.inputs), sorted(feed)
        assert all(isinstance(a, np.ndarray) for a in feed.values())  # its own numpy state, not torch's
        position = feed["position"]  # the export's step takes one position per row, int64 (B,)
        assert position.dtype == np.int64 and position.shape == (self.batch,) and (position == position[0]).all()
        d = int(position[0])
        value = feed["value"] if "value" in feed else np.zeros(self.batch, np.int64)
        self.values.append(value.copy())
        self.positions.append(d)
        state = tuple(torch.from_numpy(feed[name]) for name in self.inputs if name.startswith("state_"))
        with torch.no_grad():
            logits, state = self.model.step(torch.from_numpy(value), torch.tensor(d), state)
        logits = logits.numpy().copy()
        if d == self.position:
            logits[-1, 0] += self.amount
        return [logits, *(s.numpy() for s in state)]


@pytest.fixture
def check(monkeypatch):
    """parity_check with the stand-ins in place of onnxruntime sessions."""
    monkeypatch.setattr(exporter, "session", lambda graph: graph)
    return exporter.parity_check


def test_a_faithful_export_reports_zero_everywhere_and_feeds_the_step_the_images_in_order(check):
    model = markov()
    conditionals, step = Conditionals(model), Step(model, 3)
    report = check(model, conditionals, step, batch=3, seed=5)
    assert report == {"conditionals_params": 0.0, "log_prob": pytest.approx(0.0, abs=1e-5), "pixel_log_prob": 0.0,
                      "step_params": 0.0, "max_abs_diff": 0.0}  # log_prob: float32 rounding of the pixel sum
    images = drawn_images(model, 3, 5)
    assert len(conditionals.seen) == 1 and np.array_equal(conditionals.seen[0], images.numpy())
    # teacher forcing: zeros at position 0, then the value generated at d - 1, for every position
    seq = model.to_sequence(images).numpy()
    assert step.positions == list(range(model.num_positions))
    assert np.array_equal(np.stack(step.values), np.concatenate([np.zeros((1, 3), np.int64), seq[:, :-1].T]))


@pytest.mark.parametrize("field, index, amount", [("logits", (1, 4, 2), -0.7), ("logits", (0, 0, 0), 2e-4)])
def test_the_largest_logit_difference_is_reported(check, field, index, amount):
    model = markov()
    report = check(model, Conditionals(model, logits=(index, amount)), Step(model, 2), batch=2)
    assert report["conditionals_params"] == pytest.approx(abs(amount), rel=1e-3)
    assert report["max_abs_diff"] == report["conditionals_params"]
    assert report["step_params"] == report["pixel_log_prob"] == 0.0 and report["log_prob"] < 1e-5


@pytest.mark.parametrize("amount", [-0.25, 20.0])  # 20 nats: more than any image's -log_prob here
def test_a_log_prob_difference_is_reported_while_the_logits_agree(check, amount):
    model = markov()
    report = check(model, Conditionals(model, log_prob=((1,), amount)), Step(model, 2), batch=2)
    assert report["log_prob"] == pytest.approx(abs(amount), rel=1e-5)  # also its distance from the pixel sum
    assert report["conditionals_params"] == report["pixel_log_prob"] == report["max_abs_diff"] == 0.0


def test_a_log_prob_difference_is_reported_when_the_pixels_agree_with_it(check):
    """The export's log_prob and pixel log-probabilities both off, consistently (their sum matches):
    only the comparison with torch's log_prob sees it."""
    model = markov()
    off = 20.0  # nats: more than any image's -log_prob here
    conditionals = Conditionals(model, log_prob=((1,), off), pixel=((1,), off / model.num_positions))
    report = check(model, conditionals, Step(model, 2), batch=2)
    assert report["log_prob"] == pytest.approx(off, rel=1e-5)
    assert report["pixel_log_prob"] == pytest.approx(off / model.num_positions, rel=1e-5)


def test_pixel_log_probs_that_do_not_sum_to_log_prob_are_a_log_prob_difference(check):
    model = markov()
    pixel = np.s_[:]  # every pixel of every image off by 0.01: the sum is off by D * 0.01
    report = check(model, Conditionals(model, pixel=(pixel, 0.01)), Step(model, 2), batch=2)
    assert report["pixel_log_prob"] == pytest.approx(0.01, rel=1e-4)
    assert report["log_prob"] == pytest.approx(0.01 * model.num_positions, rel=1e-4)
    assert report["conditionals_params"] == report["max_abs_diff"] == report["step_params"] == 0.0


@pytest.mark.parametrize("position, positions, amount, reported", [
    (4, None, -0.3, 0.3), (5, None, -0.3, 0.3), (4, 5, -0.3, 0.3), (4, 4, -0.3, 0.0), (0, 1, -0.3, 0.3),
    (2, 0, -0.3, 0.0),  # positions=0: no step is checked, nothing is reported
    (3, None, 7.0, 7.0)])  # more than any logit of the model (the difference is a difference, not a ratio)
def test_step_differences_are_found_at_the_positions_checked(check, position, positions, amount, reported):
    model = markov()
    step = Step(model, 2, position=position, amount=amount)
    report = check(model, Conditionals(model), step, batch=2, positions=positions)
    assert report["step_params"] == pytest.approx(reported, rel=1e-5)
    assert report["max_abs_diff"] == report["step_params"] and report["conditionals_params"] == 0.0
    assert report["log_prob"] < 1e-5 and report["pixel_log_prob"] == 0.0
    assert step.positions == list(range(model.num_positions if positions is None else positions))


def test_a_step_graph_is_fed_only_the_inputs_it_declares(check):
    """A Bernoulli step reads neither the value nor a state: its graph keeps the position only."""
    model = create_model("bernoulli", (1, 2, 2), 2)
    randomize(model, buffers=True)
    step = Step(model, 2, inputs=["position"])
    report = check(model, Conditionals(model), step, batch=2)
    assert report["max_abs_diff"] == 0.0 and step.positions == [0, 1, 2, 3]


def test_by_default_two_images_drawn_with_seed_zero_are_checked_at_every_position(check):
    model = markov()
    conditionals, step = Conditionals(model), Step(model, 2)
    check(model, conditionals, step)
    assert np.array_equal(conditionals.seen[0], drawn_images(model, 2, 0).numpy())
    assert step.positions == list(range(model.num_positions))


class Features:
    """features.onnx stand-in: the torch features with ``amount`` added at ``index``."""

    def __init__(self, model, index=(0, 0), amount=0.0):
        self.model, self.index, self.amount = model, index, amount

    def run(self, outputs, feed):
        assert outputs is None and set(feed) == {"images"}
        with torch.no_grad():
            ours = exporter.FeaturesGraph(self.model)(torch.from_numpy(feed["images"])).numpy().copy()
        ours[self.index] += self.amount
        return [ours]


class ScaledFeatures(Markov):
    """A Markov chain whose features are its values times ``scale`` (B, D): a known feature scale."""

    scale = 1.0

    def features(self, x):
        return self.to_sequence(self.validate(x)).to(torch.float32) * self.scale


@pytest.mark.parametrize("scale, amount, reported", [
    (0.25, 0.2, 0.2),  # features within [-1, 1] (up to 0.5 here): the absolute difference
    (10.0, -3.0, 0.15),  # features up to 20: the difference relative to the largest |feature|
    (10.0, 30.0, 1.5)])
def test_a_features_difference_is_reported_relative_to_the_features_scale(check, scale, amount, reported):
    model = type("M", (ScaledFeatures,), {"scale": scale})((1, 2, 3), 3, order=1)
    randomize(model, buffers=True)
    images = drawn_images(model, 2, 0)
    index = tuple(int(i) for i in (model.to_sequence(images) == 2).nonzero()[0])  # a feature of value 2 * scale
    report = check(model, Conditionals(model), Step(model, 2), features=Features(model, index, amount))
    assert report["features"] == pytest.approx(reported, rel=1e-5)
    assert report["max_abs_diff"] == report["conditionals_params"] == report["step_params"] == 0.0
    assert "features" not in check(model, Conditionals(model), Step(model, 2))


@pytest.mark.parametrize("omp, expected", [(None, 1), ("2", 2)])
def test_torch_runs_the_check_on_the_threads_onnxruntime_gets_and_gets_its_own_back(monkeypatch, omp, expected):
    """One thread unless $OMP_NUM_THREADS says (a step of row-lstm took 30 ms on torch's second
    thread on the busy 2-core machine, 0.2 ms on one); the caller's count is restored, also on error."""
    from densreg.export.exporter import run_parity
    from densreg.registry.errors import ExportError

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen = []
        assert run_parity(lambda: seen.append(torch.get_num_threads()) or {"ok": 1}, "m") == {"ok": 1}
        assert seen == [expected] and torch.get_num_threads() == 3

        def broken():
            raise RuntimeError("no kernel")

        with pytest.raises(ExportError, match="onnxruntime cannot run the export"):
            run_parity(broken, "m")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
