"""benchmarks/grow_pixelrnn.py: a grown (deeper or wider) Row LSTM / Diagonal BiLSTM is the same density,
and its new weights learn."""

import importlib.util
from pathlib import Path

import pytest
import torch

from densreg.registry import create_model

ROOT = Path(__file__).resolve().parents[1]


def grow_module():
    spec = importlib.util.spec_from_file_location("grow_pixelrnn", ROOT / "plugins" / "pixelrnn" / "surgery.py")
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


def test_old_positions_keep_each_gates_trained_units_first_in_its_block():
    grow = grow_module()
    assert grow.old_positions(8, 12, 2, 3).tolist() == [0, 1, 3, 4, 6, 7, 9, 10]  # 4 gates of 2 -> of 3
    assert grow.old_positions(2, 3, 2, 3).tolist() == [0, 1]
    assert grow.old_positions(5, 5, 2, 3).tolist() == list(range(5))
    with pytest.raises(ValueError, match="cannot widen"):
        grow.old_positions(7, 9, 2, 3)


def test_widened_row_lstm_is_the_same_density_and_its_new_units_learn():
    grow = grow_module()
    torch.manual_seed(0)
    small = create_model("row-lstm", (1, 5, 4), 2, hidden=4, layers=2, output_hidden=6)
    for p in small.parameters():  # away from any special initial value
        p.data.normal_(0, 0.5)
    wide = grow.widened(small, 6)
    assert wide.config() == {**small.config(), "hidden": 6}
    trained = small.rnn[1].state_to_state.weight
    placed = wide.rnn[1].state_to_state.weight.detach()
    for gate in range(4):  # each gate's trained units first in its block, reading the trained channels
        torch.testing.assert_close(placed[gate * 6:gate * 6 + 4, :4], trained[gate * 4:gate * 4 + 4], rtol=0, atol=0)
        assert float(placed[gate * 6:gate * 6 + 4, 4:].abs().sum()) == 0  # and nothing from the new ones
        assert float(placed[gate * 6 + 4:gate * 6 + 6].abs().sum()) > 0  # the new units start random
    x = torch.randint(0, 2, (16, 1, 5, 4), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(wide.log_prob(x), small.log_prob(x), rtol=0, atol=1e-5)
    (-wide.log_prob(x).mean()).backward()
    # the zeroed weights from new channels into the output layer and the trained units are not dead
    assert float(wide.output_hidden_conv.weight.grad[:, 4:].abs().sum()) > 0
    assert float(wide.rnn[1].input_to_state.weight.grad[:4, 4:].abs().sum()) > 0
    torch.optim.SGD(wide.parameters(), lr=0.1).step()
    with torch.no_grad():
        assert float((wide.log_prob(x) - small.log_prob(x)).abs().max()) > 1e-4


def test_widening_needs_more_hidden_units_and_a_row_lstm():
    grow = grow_module()
    small = create_model("row-lstm", (1, 4, 4), 2, hidden=4, layers=1, output_hidden=6)
    with pytest.raises(SystemExit, match="must exceed"):
        grow.widened(small, 4)
    diagonal = create_model("diagonal-bilstm", (1, 4, 4), 2, hidden=4, layers=1, output_hidden=6)
    with pytest.raises(SystemExit, match="only row-lstm widens"):
        grow.widened(diagonal, 8)


def test_the_script_needs_layers_or_hidden(capsys):
    grow = grow_module()
    with pytest.raises(SystemExit) as stop:
        grow.main(["--from", "m.safetensors", "--out", "o.safetensors"])
    assert stop.value.code == 2 and "give --layers, --hidden or both" in capsys.readouterr().err
