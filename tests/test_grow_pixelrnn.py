"""`densreg grow` (plugins/pixelrnn/commands.py) and its surgery (plugins/pixelrnn/surgery.py): a grown
(deeper or wider) Row LSTM / Diagonal BiLSTM is the same density, and its new weights learn."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from densreg.plugins.pixelrnn import surgery as grow
from densreg.registry import ConfigError, DensregError, create_model, load_checkpoint, save_checkpoint

PIXELRNN = Path(grow.__file__).parent


@pytest.mark.parametrize("name", ["row-lstm", "diagonal-bilstm"])
def test_grown_model_is_the_same_density_and_its_new_layers_learn(name):
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
    small = create_model("row-lstm", (1, 4, 4), 2, hidden=4, layers=2, output_hidden=6)
    with pytest.raises(ConfigError, match="must exceed the checkpoint's 2 layers"):
        grow.grown(small, 2)


def test_zero_cell_gates_zeroes_the_last_quarter_of_each_direction():
    t = torch.ones(2, 16, 3)  # two directions of 4 gates x hidden 4 along dim 1
    grow.zero_cell_gates(t, 4)
    assert t[:, 12:].abs().sum() == 0 and bool((t[:, :12] == 1).all())
    u = torch.ones(32, 5)  # two blocks along dim 0
    grow.zero_cell_gates(u, 4)
    assert u[12:16].abs().sum() == 0 and u[28:32].abs().sum() == 0 and float(u.sum()) == 24 * 5


def test_old_positions_keep_each_gates_trained_units_first_in_its_block():
    assert grow.old_positions(8, 12, 2, 3).tolist() == [0, 1, 3, 4, 6, 7, 9, 10]  # 4 gates of 2 -> of 3
    assert grow.old_positions(2, 3, 2, 3).tolist() == [0, 1]
    assert grow.old_positions(5, 5, 2, 3).tolist() == list(range(5))
    with pytest.raises(ValueError, match="cannot widen"):
        grow.old_positions(7, 9, 2, 3)


def test_widened_row_lstm_is_the_same_density_and_its_new_units_learn():
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
    small = create_model("row-lstm", (1, 4, 4), 2, hidden=4, layers=1, output_hidden=6)
    with pytest.raises(ConfigError, match="must exceed the checkpoint's 4"):
        grow.widened(small, 4)
    diagonal = create_model("diagonal-bilstm", (1, 4, 4), 2, hidden=4, layers=1, output_hidden=6)
    with pytest.raises(ConfigError, match="only row-lstm widens"):
        grow.widened(diagonal, 8)


def test_grow_widens_then_deepens_and_refuses_other_models():
    torch.manual_seed(0)
    small = create_model("row-lstm", (1, 4, 4), 2, hidden=4, layers=1, output_hidden=6)
    big = grow.grow(small, layers=3, hidden=6)
    assert big.config() == {**small.config(), "layers": 3, "hidden": 6}
    assert grow.grow(small, layers=2).config()["hidden"] == 4
    with pytest.raises(ConfigError, match="holds 'nade'; only row-lstm, diagonal-bilstm grow"):
        grow.grow(create_model("nade", (1, 4, 4), hidden=3), layers=2)


def test_same_density_measures_the_gap_and_refuses_a_wrong_growth():
    torch.manual_seed(0)
    small = create_model("row-lstm", (1, 4, 4), 2, hidden=4, layers=1, output_hidden=6)
    x = torch.randint(0, 2, (8, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    big = grow.grown(small, 2)
    assert grow.same_density(big, small, x) <= 1e-5
    with torch.no_grad():
        big.rnn[1].input_to_state.weight.add_(1.0)  # a growth that changes the density
    with pytest.raises(DensregError, match="differs from the checkpoint's by"):
        grow.same_density(big, small, x)


# -- the command ----------------------------------------------------------------------------------

@pytest.fixture
def cli():
    """The densreg group with the PixelRNN plugin's commands, added by its hook as `densreg` does."""
    from densreg.app.cli import cli
    from densreg.plugins.pixelrnn import register_commands

    register_commands(cli)
    yield cli
    cli.commands.pop("grow", None)


@pytest.fixture
def row_lstm(tmp_path):
    torch.manual_seed(0)
    model = create_model("row-lstm", (1, 8, 8), 2, hidden=4, layers=1, output_hidden=6)
    path = tmp_path / "row.safetensors"
    save_checkpoint(path, model, "row-lstm")
    return path


def test_grow_command_writes_the_grown_run(cli, row_lstm, tmp_path):
    out = tmp_path / "grown.safetensors"
    result = CliRunner().invoke(cli, ["grow", str(row_lstm), "--layers", "2", "--hidden", "6", "--dataset", "digits",
                                      "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "from 1 layers of 4 to 2 of 6 (log_prob unchanged" in result.output
    model, info = load_checkpoint(out)
    assert (model.config()["layers"], model.config()["hidden"]) == (2, 6)
    assert info.metrics["grown_from"] == f"{row_lstm} (1 layers, hidden 4)" and info.metrics["dataset"] == "digits"
    assert out.with_suffix(".log.jsonl").exists() and (tmp_path / "grown.last.safetensors").exists()


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "give --layers, --hidden or both"),
    (["--layers", "1"], 1, "Error: --layers 1 must exceed the checkpoint's 1 layers"),
    (["--hidden", "0"], 2, "Invalid value for '--hidden'"),
    (["--layers", "2", "--dataset", "digits-grey"], 1, "Error: the model was trained on shape (1, 8, 8) with K=2"),
    (["--layers", "2", "--epochs", "0"], 2, "Invalid value for '--epochs'"),
])
def test_grow_command_errors_are_one_line(cli, row_lstm, tmp_path, args, code, message):
    out = tmp_path / "o.safetensors"
    base = ["grow", str(row_lstm), "--out", str(out), "--dataset", "digits"]
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == code and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1


def test_grow_command_refuses_models_that_do_not_grow(cli, tmp_path):
    for name, config, option, message in (("bernoulli", {}, "--layers", "holds 'bernoulli'; only row-lstm"),
                                          ("diagonal-bilstm", {"hidden": 4, "layers": 1}, "--hidden",
                                           "only row-lstm widens")):
        path = tmp_path / f"{name}.safetensors"
        save_checkpoint(path, create_model(name, (1, 8, 8), 2, **config), name)
        result = CliRunner().invoke(cli, ["grow", str(path), option, "8", "--dataset", "digits",
                                          "--out", str(tmp_path / "o.safetensors")])
        assert result.exit_code == 1 and message in result.output, result.output


def test_grow_is_a_densreg_command_from_the_plugin_entry_point():
    result = subprocess.run([sys.executable, "-m", "densreg", "grow", "x.safetensors", "--out", "o.safetensors"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "give --layers, --hidden or both" in result.stderr, result.stderr


def test_the_command_module_imports_no_torch():
    """What registers `densreg grow` stays torch-free: torch is imported in the command's body only.
    (The stub stands in for the package __init__, which imports the models.)"""
    code = ("import sys, types\n"
            "import densreg.plugins\n"
            "package = types.ModuleType('densreg.plugins.pixelrnn')\n"
            f"package.__path__ = [{str(PIXELRNN)!r}]\n"
            "sys.modules['densreg.plugins.pixelrnn'] = package\n"
            "from densreg.plugins.pixelrnn.commands import grow, register_commands\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
