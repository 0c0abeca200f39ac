"""benchmarks/grow_pixelrnn.py: a grown Row LSTM / Diagonal BiLSTM is the same density, and its new layers learn."""

import importlib.util
from pathlib import Path

import pytest
import torch

from densreg.registry import create_model

ROOT = Path(__file__).resolve().parents[1]


def grow_module():
    spec = importlib.util.spec_from_file_location("grow_pixelrnn", ROOT / "benchmarks" / "grow_pixelrnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_grown_model_is_the_same_density_and_its_new_layers_learn(name):
    grow = grow_module()
    torch.manual_seed(0)
    small = create_model(name, (1, 5, 4), 2, hidden=4, layers=1, output_hidden=6)
    for p in small.parameters():  # away from any special initial value
        p.data.normal_(0, 0.5)
    big = grow.grown(small, 3)
    assert len(big.rnn) == 3
    x = torch.randint(0, 2, (16, 1, 5, 4), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(big.log_prob(x), small.log_prob(x), rtol=0, atol=1e-5)
    # the new layers are not dead: a gradient step moves the density
    (-big.log_prob(x).mean()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0
               for layer in big.rnn[1:] for n, p in layer.named_parameters() if "input_to_state.weight" in n)
    torch.optim.SGD(big.parameters(), lr=0.1).step()
    with torch.no_grad():
        assert float((big.log_prob(x) - small.log_prob(x)).abs().max()) > 1e-4


def test_growing_needs_more_layers():
    grow = grow_module()
    small = create_model("row-lstm", (1, 4, 4), 2, hidden=4, layers=2, output_hidden=6)
    with pytest.raises(SystemExit, match="must exceed"):
        grow.grown(small, 2)


def test_zero_cell_gates_zeroes_the_last_quarter_of_each_direction():
    grow = grow_module()
    t = torch.ones(2, 16, 3)  # two directions of 4 gates x hidden 4 along dim 1
    grow.zero_cell_gates(t, 4)
    assert t[:, 12:].abs().sum() == 0 and bool((t[:, :12] == 1).all())
    u = torch.ones(32, 5)  # two blocks along dim 0
    grow.zero_cell_gates(u, 4)
    assert u[12:16].abs().sum() == 0 and u[28:32].abs().sum() == 0 and float(u.sum()) == 24 * 5
