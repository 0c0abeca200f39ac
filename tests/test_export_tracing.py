"""The exporter's fast shape propagation for nn.LSTM (export/recurrent.py): right shapes and
strides without unrolling the sequence, real values untouched, torch restored afterwards."""

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
