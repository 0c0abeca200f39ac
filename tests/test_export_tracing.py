"""The exporter's fast shape propagation for nn.LSTM (export/recurrent.py): right shapes and
strides without unrolling the sequence, real values untouched, torch restored afterwards; and the
spatial PixelRNNs' recurrences (``recur``), which export as ONNX Scan nodes instead of unrolled loops."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch._decomp import decomposition_table, decompositions

from densreg.export.recurrent import LSTM, fast_lstm_shapes

pytestmark = pytest.mark.filterwarnings("ignore:The tensor attributes")


def count_cells(monkeypatch) -> list[int]:
    """Count torch's per-time-step decomposition (one_layer_lstm) calls."""
    calls = [0]
    original = decompositions.one_layer_lstm

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(decompositions, "one_layer_lstm", counted)
    return calls


class Recurrent(torch.nn.Module):
    def __init__(self, batch_first, bidirectional):
        super().__init__()
        self.lstm = torch.nn.LSTM(5, 6, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return out, h, c


@pytest.mark.parametrize("batch_first,bidirectional", [(True, False), (False, True)])
def test_traced_shapes_match_torch_without_unrolling(monkeypatch, batch_first, bidirectional):
    module = Recurrent(batch_first, bidirectional).eval()
    x = torch.randn((3, 40, 5) if batch_first else (40, 3, 5))
    real = module(x)
    calls = count_cells(monkeypatch)
    traced = {}
    for fast in (False, True):
        calls[0] = 0
        with fast_lstm_shapes() if fast else contextlib.nullcontext():
            program = torch.export.export(module, (x,), strict=False)
        traced[fast] = [node.meta["val"] for node in program.graph.find_nodes(op="output")[0].args[0]]
        if fast:
            assert calls[0] == 0
        else:
            assert calls[0] > 0  # without the block, torch.export runs the per-step decomposition
        assert any(node.target is LSTM for node in program.graph.nodes)  # the LSTM stays one node
    for ours, theirs, reference in zip(traced[True], traced[False], real):
        assert ours.shape == theirs.shape == reference.shape and ours.dtype == reference.dtype
        assert ours.stride() == theirs.stride()


def test_real_values_unchanged_and_torch_restored():
    kernels, decomposition = dict(LSTM.py_kernels), decomposition_table.get(LSTM)
    lstm = torch.nn.LSTM(4, 3, batch_first=True)
    x = torch.randn(2, 7, 4)
    expected = lstm(x)[0]
    with fast_lstm_shapes():
        assert torch.equal(lstm(x)[0], expected)
        assert LSTM.py_kernels != kernels
    assert LSTM.py_kernels == kernels and decomposition_table.get(LSTM) is decomposition


# -- the spatial PixelRNNs' rows and diagonals: one ONNX Scan each, not unrolled --------------------


def test_recur_runs_the_body_forward_and_backward_like_a_python_loop():
    from densreg.plugins.pixelrnn.base import recur

    xs = torch.randn(5, 2, 3)

    def body(carry, x):  # a running sum, and both the sum and its square as outputs
        total = carry[0] + x[0]
        return (total,), (total, total * total)

    for reverse in (False, True):
        carry, (sums, squares) = recur(body, (torch.zeros(2, 3),), (xs,), reverse=reverse)
        expected = (xs.flip(0).cumsum(0).flip(0) if reverse else xs.cumsum(0))
        torch.testing.assert_close(sums, expected)
        torch.testing.assert_close(squares, expected ** 2)
        torch.testing.assert_close(carry[0], xs.sum(0))


def test_recur_steps_along_the_dim_given_for_each_input():
    from densreg.plugins.pixelrnn.base import recur

    torch.manual_seed(0)
    stepped = torch.randn(2, 5, 3, requires_grad=True)  # steps along dim 1
    plain = torch.randn(5, 4, requires_grad=True)  # steps along dim 0

    def body(carry, x):  # a running product-sum mixing both inputs
        total = carry[0] * 0.5 + x[0] * x[1][:3].sum()
        return (total,), total

    carry, ys = recur(body, (torch.zeros(2, 3),), (stepped, plain), dims=(1, 0))
    expected_carry, expected_ys = recur(body, (torch.zeros(2, 3),), (stepped.transpose(0, 1), plain))
    torch.testing.assert_close(ys, expected_ys, rtol=0, atol=0)
    torch.testing.assert_close(carry[0], expected_carry[0], rtol=0, atol=0)
    grads = torch.autograd.grad(ys.square().sum(), (stepped, plain))
    expected = torch.autograd.grad(expected_ys.square().sum(), (stepped, plain))
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(grad, want, rtol=0, atol=0)
    assert grads[0].is_contiguous()  # stacked along dim 1 in place, not a transposed copy


def _conditionals(name: str, height: int):
    from densreg.export.tracing import ConditionalsGraph, to_onnx as _to_onnx
    from densreg.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, (1, height, 6), 2, hidden=4, layers=2).eval()
    images = torch.randint(0, 2, (3, 1, height, 6))
    proto = _to_onnx(ConditionalsGraph(model), (images,), ["images"], ["logits", "log_prob", "pixel_log_prob"],
                     ({0: torch.export.Dim("batch", min=1)},), "conditional_logits", name, 18)
    return model, proto


def ops(graph) -> list[str]:
    """Op types of ``graph``'s nodes and, recursively, of the nodes in their subgraphs (Scan bodies)."""
    found = []
    for node in graph.node:
        found.append(node.op_type)
        for attribute in node.attribute:
            if attribute.HasField("g"):
                found += ops(attribute.g)
    return found


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_spatial_pixelrnn_layers_export_as_nested_scans_whatever_the_height(name):
    """The layers are one Scan over their stacked weights, whose body is one layer: a Scan over rows
    (row-lstm) or skewed columns (diagonal-bilstm). So the graph does not grow with the image or
    the layers (28 rows x 3 layers were unrolled at 28x28), and it computes what torch computes,
    for another batch size than the traced one."""
    import numpy as np
    import onnxruntime as ort

    sizes = {}
    for height in (4, 9):
        model, proto = _conditionals(name, height)
        top = [n.op_type for n in proto.graph.node]
        assert top.count("Scan") == 1 and ops(proto.graph).count("Scan") == 2
        sizes[height] = len(ops(proto.graph))
        images = torch.randint(0, 2, (5, 1, height, 6), generator=torch.Generator().manual_seed(1))
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        with torch.no_grad():
            expected = model.conditional_logits(images).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert sizes[4] == sizes[9]


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_stacked_layers_compute_the_residual_layer_loop(name):
    """What export traces (each layer's own weights, taken from the stack) equals the eager loop."""
    from densreg.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, (3, 5, 4), 3, hidden=6, layers=3).eval()
    scaled = model.scale(torch.randint(0, 3, (2, 3, 5, 4)))
    h = model.input_conv(scaled).permute(*model.rows_layout).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model.stacked_layers(h), model.hidden_rows(scaled))


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_features_of_several_layers_export_and_match_torch(name):
    """features.onnx of a multi-layer spatial PixelRNN (its nested Scans traced inside ``features``)."""
    import numpy as np
    import onnxruntime as ort

    from densreg.export.exporter import features_graph as _features
    from densreg.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, (1, 5, 6), 2, hidden=4, layers=3).eval()
    proto, entry = _features(model, torch.zeros(3, 1, 5, 6, dtype=torch.int64), name, 18,
                             torch.export.Dim("batch", min=1))
    assert proto is not None, entry.get("reason")
    assert ops(proto.graph).count("Scan") == 2
    images = torch.randint(0, 2, (4, 1, 5, 6), generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": images.numpy()})[0], model.features(images).numpy(),
                               atol=1e-5)


def scan_nesting(graph_module) -> list:
    """The ``scan`` calls of a torch.export graph, each as the list of the scans in its body (recursively)."""
    return [scan_nesting(getattr(graph_module, node.args[0].target)) for node in graph_module.graph.nodes
            if node.op == "call_function" and node.target is torch.ops.higher_order.scan]


@pytest.mark.parametrize("layers", [1, 2])
def test_export_stacks_several_layers_into_one_scan_and_leaves_one_layer_alone(layers):
    """torch.export of a Row LSTM's logits: 2 layers are one Scan over the stacked weights around the
    layer's own Scan over rows; 1 layer is just its Scan over rows (no one-trip wrapper). The
    exported program computes what torch computes."""
    from densreg.export.exporter import ConditionalsGraph
    from densreg.registry import create_model

    torch.manual_seed(0)
    model = create_model("row-lstm", (1, 3, 4), 2, hidden=4, layers=layers, output_hidden=4).eval()
    images = torch.randint(0, 2, (3, 1, 3, 4))
    with torch.no_grad():
        program = torch.export.export(ConditionalsGraph(model), (images,), strict=False,
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        assert scan_nesting(program.graph_module) == ([[]] if layers == 1 else [[[]]])
        other = torch.randint(0, 2, (5, 1, 3, 4), generator=torch.Generator().manual_seed(1))
        for got, expected in zip(program.module()(other), ConditionalsGraph(model)(other)):
            torch.testing.assert_close(got, expected)


class Branch(torch.nn.Module):
    """``branch(pred, x + 1, x * 2)`` on a 0-dim bool ``pred`` and x (N,)."""

    def forward(self, pred, x):
        from densreg.plugins.pixelrnn.base import branch

        return branch(pred, lambda t: t + 1, lambda t: t * 2, (x,))


def test_branch_exports_both_ways_and_runs_one_in_eager():
    """``branch`` (the Diagonal BiLSTM step's row-start pass): traced, a ``cond`` that keeps both branches,
    so the program exported with pred True still takes the other one on False; in eager, a plain choice."""
    x = torch.arange(3.0)
    assert torch.equal(Branch()(torch.tensor(True), x), x + 1)
    assert torch.equal(Branch()(torch.tensor(False), x), x * 2)
    with torch.no_grad():
        program = torch.export.export(Branch(), (torch.tensor(True), x), strict=False)
    assert any(node.target is torch.ops.higher_order.cond for node in program.graph.nodes)
    run = program.module()
    assert torch.equal(run(torch.tensor(True), x), x + 1)
    assert torch.equal(run(torch.tensor(False), x), x * 2)


def test_rows_product_is_the_bias_plus_the_weight_times_each_map():
    """rows_product(bias, weight, maps): bias + weight @ maps[n] for every n, (out,), (out, in), (N, in, M)
    -> (N, out, M), every size distinct."""
    from densreg.plugins.pixelrnn.base import rows_product

    generator = torch.Generator().manual_seed(0)
    bias, weight = torch.randn(4, generator=generator), torch.randn(4, 3, generator=generator)
    maps = torch.randn(2, 3, 5, generator=generator)
    expected = torch.stack([bias[:, None] + weight @ maps[n] for n in range(2)])
    torch.testing.assert_close(rows_product(bias, weight, maps), expected)
