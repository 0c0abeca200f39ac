"""Every writer honours the output lock and replaces nothing of another kind (registry/outputs.py,
issue 28 item 4): sample, complete, features, plot, score, export and train through the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.registry import create_model, save_checkpoint
from densreg.registry.outputs import existing_kind, sniff, writing
from densreg.registry.errors import ConfigError, DataError

HOLD = ("import sys, time\nfrom densreg.registry.locking import output_lock\nwith output_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    """A bernoulli checkpoint, a PNG, an .npz, a training log, a CSV and a JSON document."""
    ckpt = tmp_path / "b.safetensors"
    save_checkpoint(ckpt, create_model("bernoulli", (1, 8, 8)), "bernoulli")
    assert run("sample", ckpt, "-n", "2", "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz").exit_code == 0
    (tmp_path / "r.log.jsonl").write_text('{"epoch": 1, "train_nll": 3.0, "valid_nll": 3.5}\n')
    (tmp_path / "t.csv").write_text("index,name,score\n0,a,1.0\n")
    (tmp_path / "t.json").write_text('{\n "method": "nll"}\n')
    return tmp_path


def test_the_kind_of_a_file_comes_from_its_first_bytes(files):
    kinds = {name: existing_kind(files / name) for name in ("b.safetensors", "s.png", "s.npz", "r.log.jsonl",
                                                            "t.csv", "t.json", "nothing")}
    assert kinds == {"b.safetensors": "checkpoint", "s.png": "png", "s.npz": "npz", "r.log.jsonl": "log",
                     "t.csv": "csv", "t.json": "json", "nothing": None}
    assert sniff(b"") is None and sniff(b"\x00\x01junk") == "other" and sniff(b"plain words") == "other"


@pytest.mark.parametrize("args, victim", [
    (["sample", "b.safetensors", "-n", "2", "--out", "r.log.jsonl"], "r.log.jsonl"),
    (["sample", "b.safetensors", "-n", "2", "--out", "x.png", "--npz", "b.safetensors"], "b.safetensors"),
    (["features", "b.safetensors", "--dataset", "digits", "--out", "s.png"], "s.png"),
    (["plot", "r.log.jsonl", "--out", "b.safetensors"], "b.safetensors"),
    (["score", "b.safetensors", "--dataset", "digits", "--out", "s.png"], "s.png"),
    (["score", "b.safetensors", "--dataset", "digits", "--heatmaps", "t.csv"], "t.csv"),
    (["complete", "b.safetensors", "--dataset", "digits", "--keep", "3", "--out", "s.npz"], "s.npz"),
    (["train", "bernoulli", "--dataset", "digits", "--out", "s.png"], "s.png"),
])
def test_a_file_of_another_kind_is_refused_in_one_line_and_kept(files, args, victim):
    before = (files / victim).read_bytes()
    result = run(*[files / a if (files / a).exists() or a.endswith((".png", ".npz")) else a for a in args])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [result.output.strip()]
    assert f"refusing to replace {files / victim}" in result.output and "--force" in result.output
    assert (files / victim).read_bytes() == before


def test_force_replaces_and_the_same_kind_needs_no_force(files):
    assert run("sample", files / "b.safetensors", "-n", "2", "--out", files / "s.png").exit_code == 0
    assert run("plot", files / "r.log.jsonl", "--out", files / "t.csv", "--force").exit_code == 0
    assert existing_kind(files / "t.csv") == "png"


def test_two_outputs_naming_one_file_are_refused(files):
    result = run("sample", files / "b.safetensors", "--out", files / "new.png", "--npz", files / "new.png")
    assert result.exit_code == 1 and "two outputs name the same file" in result.output
    assert not (files / "new.png").exists()


def test_export_refuses_a_folder_of_other_files(files):
    folder = files / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    result = run("export", files / "b.safetensors", "--out", folder, "--no-parity")
    assert result.exit_code == 1 and "a folder of other files" in result.output
    assert (folder / "notes.txt").read_text() == "keep"


def test_writing_checks_once_per_lock_and_refuses_duplicates(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n....")
    with writing([(png, "png")]):
        with writing([(png, "npz")]):  # the lock is already held here: the outer check stands
            pass
    with pytest.raises(DataError, match="a PNG picture, with an .npz archive"):
        with writing([(png, "npz")]):
            pass
    with pytest.raises(ConfigError, match="same file"):
        with writing([(png, "png"), (tmp_path / "." / "a.png", "npz")]):
            pass


def test_every_writer_waits_for_nobody_while_a_training_holds_its_files(files):
    log = files / "r.log.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = log.read_bytes()
        for args in (["sample", files / "b.safetensors", "-n", "2", "--out", log, "--force"],
                     ["score", files / "b.safetensors", "--dataset", "digits", "--out", log, "--force"],
                     ["plot", files / "s.npz", "-k", "2", "--out", log, "--force"]):
            result = run(*args)
            assert result.exit_code == 1 and "another densreg process" in result.output, result.output
        assert log.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()


def test_features_of_npz_under_lock_leave_no_file(files):
    out = files / "f.npz"
    assert run("features", files / "b.safetensors", "--dataset", "digits", "--out", out).exit_code == 1  # no features
    assert not out.exists() and not (files / ".f.npz.lock").exists()
    np.testing.assert_equal(existing_kind(files / "s.npz"), "npz")
