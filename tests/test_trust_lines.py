"""Bounded reads of --images archives and one-line errors for the cases of issue 28 items 5 and 6:
crafted .npy headers, huge completions, empty train splits, damaged resume options, infinite log
values, --perturb on --resume, a swapped step graph, and a float .npz for a model of real values."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.registry import create_model, save_checkpoint
from densreg.registry.checkpoint import read_tensors, save_tensors
from hostile_trust import crafted_npy, crafted_npz, swapped_step


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *parts):
    """Exit 1 with one ``Error:`` line (progress lines "training ..." aside, as the hostile catalogue counts)."""
    text = "\n".join(line for line in result.output.strip().splitlines() if not line.startswith("training "))
    assert result.exit_code == 1 and "\n" not in text and text.startswith("Error: "), text
    for part in parts:
        assert part in text, text


@pytest.fixture
def bern(tmp_path):
    path = tmp_path / "b.safetensors"
    save_checkpoint(path, create_model("bernoulli", (1, 8, 8)), "bernoulli")
    return path


@pytest.fixture
def crafted(tmp_path):
    crafted_npz(tmp_path / "big.npz", 64 * 10**9)
    (tmp_path / "lone.npz").write_bytes(crafted_npy(7 * 10**13))
    return tmp_path


@pytest.mark.parametrize("file, expect", [("big.npz", "declares shape (64000000000,)"),
                                          ("lone.npz", "holds a single array, not an .npz archive")])
@pytest.mark.parametrize("command", ["score", "complete", "features", "plot"])
def test_crafted_npz_headers_are_refused_before_allocating(crafted, bern, command, file, expect):
    npz, out = crafted / file, crafted / "out.png"
    args = {"score": ["score", bern, "--images", npz],
            "complete": ["complete", bern, "--images", npz, "--keep", "2", "--out", out],
            "features": ["features", bern, "--images", npz, "--out", crafted / "f.npz"],
            "plot": ["plot", npz, "-k", "2", "--out", out]}[command]
    one_line_error(run(*args), expect)


def test_a_billion_completions_are_refused_by_the_memory_estimate(bern):
    one_line_error(run("complete", bern, "--dataset", "digits", "--keep", "2", "-n", 10**9, "--out",
                       bern.with_name("c.png")), "1000000000 completions", "lower -n")


def test_features_of_a_model_of_real_values_read_a_float_npz(tmp_path):
    path = tmp_path / "r.safetensors"
    save_checkpoint(path, create_model("rnade", (1, 2, 2), num_categories=0, hidden=3, components=2), "rnade")
    np.savez(tmp_path / "x.npz", images=np.random.default_rng(0).random((5, 1, 2, 2)).astype(np.float32))
    result = run("features", path, "--images", tmp_path / "x.npz", "--out", tmp_path / "f.npz")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "f.npz")["features"].shape == (5, 3)
    one_line_error(run("features", path, "--images", tmp_path / "x.png", "--out", tmp_path / "g.npz"),
                   "a model of real values takes an .npz or .npy of real values")


def test_an_empty_train_split_is_one_line(tmp_path):
    z = np.zeros((3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "empty.npz", train=z[:0], valid=z, test=z)
    one_line_error(run("train", "nade", "--dataset", "binarized-mnist", "--data", tmp_path / "empty.npz",
                       "--out", tmp_path / "m.safetensors"), "the train split holds no images")


@pytest.fixture(scope="module")
def run_state(tmp_path_factory):
    """A one-epoch NADE run on digits: its checkpoint path."""
    out = tmp_path_factory.mktemp("run") / "n.safetensors"
    result = run("train", "nade", "--dataset", "digits", "--set", "hidden=4", "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("where", ["options", "param_groups"])
def test_a_resume_state_with_a_string_learning_rate_is_one_line(run_state, tmp_path, where):
    out = tmp_path / "n.safetensors"
    shutil.copy(run_state, out)
    tensors, meta = read_tensors(run_state.with_name("n.last.safetensors"))
    extra = json.loads(meta["extra"])
    target = extra["resume"]["options"] if where == "options" else extra["resume"]["param_groups"][0]
    target["lr"] = "0.1"
    meta["extra"] = json.dumps(extra)
    save_tensors(out.with_name("n.last.safetensors"), tensors, meta)
    one_line_error(run("train", "nade", "--dataset", "digits", "--epochs", "2", "--resume", "--out", out),
                   "resume state", "'0.1'")


def test_perturb_added_on_resume_is_refused(run_state):
    one_line_error(run("train", "nade", "--dataset", "digits", "--epochs", "2", "--resume", "--perturb", "0.2",
                       "--out", run_state), "the run started on clean data")


def test_a_log_with_an_infinite_value_is_one_line_in_plot(tmp_path):
    log = tmp_path / "r.log.jsonl"
    log.write_text('{"epoch": 1, "train_nll": 3.0, "valid_nll": 3.1}\n{"epoch": 2, "train_nll": Infinity, '
                   '"valid_nll": 3.0}\n')
    one_line_error(run("plot", log, "--out", tmp_path / "p.png"), "line 2: train_nll is inf")
    log.write_text('{"epoch": 1e999, "train_nll": 3.0, "valid_nll": 3.1}\n')
    one_line_error(run("plot", log, "--out", tmp_path / "p.png"), "line 1: not a training-log entry")


def test_a_swapped_step_graph_is_named(tmp_path, bern):
    from densreg.export import export_model

    export_model(create_model("markov", (1, 8, 8), order=1), tmp_path / "ex", parity=False)
    folder = tmp_path / "swapped"
    swapped_step(tmp_path / "ex", folder)
    result = run("sample", folder, "-n", "2", "--out", tmp_path / "s.png")
    assert result.exit_code == 1 and "step.onnx takes the inputs images, but the step graph" in result.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is here: these devices exist")
@pytest.mark.parametrize("device", ["cuda", "cuda:99"])
def test_a_device_this_machine_lacks_is_one_line_in_train_and_eval(bern, tmp_path, device):
    expected = f"device '{device}': CUDA is not available here"
    one_line_error(run("train", "nade", "--dataset", "digits", "--set", "hidden=4", "--epochs", "1", "--device", device,
                       "--out", tmp_path / "n.safetensors"), expected)
    one_line_error(run("eval", bern, "--dataset", "digits", "--device", device), expected)
    assert not (tmp_path / "n.safetensors").exists()
