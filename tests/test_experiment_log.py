"""`densreg train --log-to tensorboard:DIR`: the event files hold the JSONL log's values, a resumed run
adds to them, and bad specs, a missing tensorboard package and closed-form models are refused."""

import json
import sys

import pytest
from click.testing import CliRunner

from densreg.app import experiment_log
from densreg.app.cli import cli
from densreg.app.run_files import run_paths
from densreg.registry import ConfigError


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def train_nade(out, *extra):
    return run("train", "nade", "--dataset", "digits", "--set", "hidden=8", "--threads", 1, "--out", out, *extra)


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} read back from every event file in ``folder`` with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_tensorboard_holds_the_jsonl_values_and_a_resumed_run_continues_it(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'densreg[tensorboard]'")
    out, first, second = tmp_path / "n.safetensors", tmp_path / "tb", tmp_path / "runs" / "second"
    result = train_nade(out, "--epochs", 2, "--log-to", f"tensorboard:{first}", "--log-to", f"tensorboard:{second}")
    assert result.exit_code == 0, result.output
    result = train_nade(out, "--epochs", 3, "--resume", "--log-to", f"tensorboard:{first}")
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in run_paths(out).log.read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    expected = {tag: [(entry["epoch"], float(entry[key])) for entry in log]
                for key, tag in experiment_log.TENSORBOARD_TAGS.items()}
    assert expected["nll/valid"][0][1] > expected["nll/valid"][2][1]  # it trained: real values, not constants
    assert tensorboard_scalars(first) == expected  # float64 summaries: equal, not close
    assert len(list(first.glob("events.out.tfevents.*"))) == 2  # the resumed run wrote its own file
    assert tensorboard_scalars(second) == {tag: values[:2] for tag, values in expected.items()}


@pytest.mark.parametrize("spec, message", [
    ("wandb:runs", "unknown experiment log 'wandb:runs': expected tensorboard:DIR"),
    ("tensorboard", "experiment log 'tensorboard' names no folder: expected tensorboard:DIR"),
    ("tensorboard:", "experiment log 'tensorboard:' names no folder: expected tensorboard:DIR"),
])
def test_a_bad_spec_is_a_usage_error(tmp_path, spec, message):
    result = train_nade(tmp_path / "n.safetensors", "--epochs", 1, "--log-to", spec)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: Invalid value for '--log-to': {message}"]
    assert not (tmp_path / "n.safetensors").exists()
    with pytest.raises(ConfigError, match="names no folder|unknown experiment log"):
        experiment_log.parse_log_to(spec)


def test_missing_tensorboard_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `from ... import` raises ImportError
    result = train_nade(tmp_path / "n.safetensors", "--epochs", 1, "--log-to", f"tensorboard:{tmp_path / 'tb'}")
    assert result.exit_code == 1
    assert result.output.splitlines() == ["Error: --log-to tensorboard needs the tensorboard package: install "
                                          "densreg[tensorboard] (pip install 'densreg[tensorboard]')"]
    assert not (tmp_path / "tb").exists() and not (tmp_path / "n.safetensors").exists()


def test_a_closed_form_model_refuses_log_to(tmp_path):
    result = run("train", "bernoulli", "--dataset", "digits", "--out", tmp_path / "b.safetensors",
                 "--log-to", f"tensorboard:{tmp_path / 'tb'}")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].endswith(
        "fits in closed form by counting; the training options log_to (--log-to) only apply to gradient-trained "
        "models")
    assert not (tmp_path / "tb").exists()
