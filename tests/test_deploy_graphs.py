"""The deployment graphs after densreg 0.3.0: step.onnx takes a position per row and carries every state's batch
on axis 0; binary NADE exports its pass by states; real-valued exports get draw.onnx and sample.onnx; folders
written by densreg 0.3.0 (scalar position, Row LSTM states on axis 1, no sample.onnx for real values) still
open and reproduce their golden vectors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from densreg.export import export_model
from densreg.export import format as fmt
from densreg.export.runtime import ExportedModel
from densreg.registry import DataError, create_model
from densreg.registry.families import GaussianMixture
from densreg.registry.testing import single_torch_thread  # noqa: F401 (autouse: one torch thread)

OLD = os.path.join(os.path.dirname(__file__), "data", "format-0.3.0")


def perturbed(name, shape, k, **config):
    torch.manual_seed(0)
    model = create_model(name, shape, k, **config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def nade(tmp_path_factory):
    model = perturbed("nade", (1, 4, 5), 2, hidden=8)
    out = tmp_path_factory.mktemp("nade") / "export"
    export_model(model, out, name="nade")
    return model, ExportedModel(out, provider="cpu")


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("gaussian-mixture", (1, 2, 3), 0).eval()
    out = tmp_path_factory.mktemp("mixture") / "export"
    export_model(model, out, name="gaussian-mixture")
    return model, ExportedModel(out, provider="cpu")


def step_session(folder) -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / fmt.STEP), providers=["CPUExecutionProvider"])


# -- step.onnx: a position per row -----------------------------------------------------
def test_step_takes_a_position_per_row_and_refuses_mixed_rows(nade):
    model, exported = nade
    session = step_session(exported.path)
    position = [i for i in session.get_inputs() if i.name == "position"][0]
    assert position.type == "tensor(int64)" and len(position.shape) == 1
    state = exported.initial_state(3)
    value = np.array([0, 1, 1], dtype=np.int64)
    for d in (0, 5, 19):  # rows at one step: the torch step's logits
        logits, _ = session.run(None, {"value": value, "position": np.full(3, d, dtype=np.int64),
                                       "state_0": state[0]})
        with torch.no_grad():
            expected, _ = model.step(torch.from_numpy(value), d, tuple(torch.from_numpy(s) for s in state))
        assert np.abs(logits - expected.numpy()).max() <= 1e-5
    mixed, _ = session.run(None, {"value": value, "position": np.array([5, 5, 6], dtype=np.int64),
                                  "state_0": state[0]})
    assert np.isnan(mixed).all()  # never a silent answer for rows at different steps


def test_runtime_step_feeds_the_position_per_row(nade):
    model, exported = nade
    state = exported.initial_state(2)
    value = np.zeros(2, dtype=np.int64)
    for d in range(3):
        logits, state = exported.step(value, d, state)
        with torch.no_grad():
            expected = model.conditional_logits(torch.zeros(2, 1, 4, 5, dtype=torch.int64))[:, d]
        assert np.abs(logits - expected.numpy()).max() <= 1e-5


# -- binary NADE: the pass by states in ONNX --------------------------------------------
def test_nade_exports_its_pass_by_states(nade):
    model, exported = nade
    ops = {node.op_type for node in onnx.load(exported.path / fmt.CONDITIONALS).graph.node}
    assert "TopK" in ops and "CumSum" in ops  # the ones' positions and the running sums of the states
    rng = np.random.default_rng(0)
    cases = [np.zeros((3, 1, 4, 5)), np.ones((3, 1, 4, 5)), rng.random((1, 1, 4, 5)) < 0.5,
             rng.random((64, 1, 4, 5)) < 0.13, rng.random((9, 1, 4, 5)) < 0.9]
    for x in cases:  # no ones (no state beyond c), every one, batch 1, sparse and dense batches
        x = x.astype(np.int64)
        with torch.no_grad():
            log_prob = model.log_prob(torch.from_numpy(x)).numpy()
            pixel = model.pixel_log_probs(torch.from_numpy(x)).numpy()
        assert np.abs(exported.log_prob(x) - log_prob).max() <= 1e-4
        assert np.abs(exported.pixel_log_probs(x) - pixel).max() <= 1e-4
    # an image's result does not depend on the rest of its batch (the padding to the batch's most ones)
    x = (rng.random((5, 1, 4, 5)) < 0.3).astype(np.int64)
    x[0] = 1
    alone = np.concatenate([exported.log_prob(x[i:i + 1]) for i in range(5)])
    assert np.abs(exported.log_prob(x) - alone).max() <= 1e-5


# -- real values: draw.onnx and sample.onnx ---------------------------------------------
def test_mixture_draw_graph_matches_the_numpy_draw():
    family = GaussianMixture(4)
    draw = ort.InferenceSession(family.onnx_draw(18, 10).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    logits, means, log_scales = (rng.standard_normal((500, 4)).astype(np.float32) for _ in range(3))
    noise = rng.random((500, 3))
    noise[:3] = [[0.0, 0.0, 0.0], [0.999999, 0.5, 0.25], [0.5, 1 - 2**-53, 0.75]]  # the ends of [0, 1)
    ours = draw.run(["value"], {"logits": logits, "means": means, "log_scales": log_scales, "noise": noise})[0]
    expected = family.draw_numpy((logits, means, log_scales), noise)
    assert ours.dtype == np.float32 and ours.shape == (500,)
    assert np.abs(ours - expected.astype(np.float32)).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_mixture_export_samples_in_one_call(mixture):
    model, exported = mixture
    assert {fmt.DRAW, fmt.SAMPLE} <= set(exported.manifest["files"])
    described = exported.manifest["graphs"][fmt.SAMPLE]["inputs"][0]
    assert described["shape"] == ["B", model.num_positions, 3]
    noise = np.random.default_rng(2).random(exported.noise_shape(50))
    one_call = exported.sample(50, noise=noise, engine="graph")
    steps = exported.sample(50, noise=noise)
    with torch.no_grad():
        torch_samples = model.sample(50, noise=torch.from_numpy(noise)).numpy()
    assert one_call.dtype == np.float32 and one_call.shape == (50, *model.event_shape)
    assert np.abs(one_call - steps).max() <= 1e-4 and np.abs(one_call - torch_samples).max() <= 1e-3
    assert np.array_equal(exported.sample(3, seed=4, engine="graph"), exported.sample(3, seed=4, engine="graph"))


# -- folders written by densreg 0.3.0 -------------------------------------------------------
def golden_of(folder):
    return json.loads((folder / fmt.GOLDEN).read_text())


def test_a_0_3_0_row_lstm_folder_still_opens_scores_and_samples(tmp_path):
    folder = tmp_path / "row-lstm"
    shutil.copytree(os.path.join(OLD, "row-lstm-onnx"), folder)
    manifest = json.loads((folder / fmt.MANIFEST).read_text())
    assert [i["shape"] for i in manifest["graphs"][fmt.STEP]["inputs"] if i["name"] == "position"] == [[]]
    assert any(s["batch_axis"] == 1 for s in manifest["state"])  # the old layout
    model, golden = ExportedModel(folder, provider="cpu"), golden_of(folder)
    assert np.abs(model.log_prob(np.array(golden["images"])) - golden["log_prob"]).max() <= golden["log_prob_atol"]
    noise = np.array(golden["noise"])
    for engine in ("steps", "graph"):
        assert np.array_equal(model.sample(len(noise), noise=noise, engine=engine), np.array(golden["samples"]))
    bound = ExportedModel(folder, provider="cpu", io_binding=True)
    assert np.array_equal(bound.sample(len(noise), noise=noise), np.array(golden["samples"]))
    state = model.initial_state(2)
    assert state[1].shape[1] == 2  # tiled along the folder's own batch axis
    logits, state = model.step(np.zeros(2, dtype=np.int64), 0, state)
    assert logits.shape == (2, 2) and state[1].shape[1] == 2


def test_a_0_3_0_mixture_folder_samples_by_steps_and_says_why_not_in_one_call(tmp_path):
    folder = tmp_path / "mixture"
    shutil.copytree(os.path.join(OLD, "gaussian-mixture-onnx"), folder)
    model, golden = ExportedModel(folder, provider="cpu"), golden_of(folder)
    noise = np.array(golden["noise"])
    assert np.abs(model.sample(len(noise), noise=noise) - np.array(golden["samples"])).max() <= golden["samples_atol"]
    with pytest.raises(DataError, match="has no sample.onnx .*use engine='steps'"):
        model.sample(2, seed=0, engine="graph")
