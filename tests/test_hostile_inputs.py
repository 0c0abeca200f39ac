"""Hostile inputs at the boundary: special files as output targets, non-finite configs and weights,
data that would need a silent cast. Special files are made inside pytest's temporary folder only."""

import os
import stat

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.registry import ConfigError, DataError, create_model, save_checkpoint
from densreg.registry.atomic import atomic_write_bytes, atomic_write_folder


def special_targets(tmp_path):
    """{kind: path} of targets an atomic write must refuse, all inside ``tmp_path``."""
    regular = tmp_path / "regular.bin"
    regular.write_bytes(b"keep")
    targets = {"symlink": tmp_path / "link.bin", "fifo": tmp_path / "fifo", "read-only": tmp_path / "ro.bin",
               "folder": tmp_path / "folder"}
    targets["symlink"].symlink_to(regular)
    os.mkfifo(targets["fifo"])
    targets["read-only"].write_bytes(b"keep")
    targets["read-only"].chmod(0o444)
    targets["folder"].mkdir()
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null twin, here
        targets["device"] = tmp_path / "null"
    except (PermissionError, OSError):
        pass
    return targets


def test_atomic_writes_refuse_special_and_read_only_targets(tmp_path):
    targets = special_targets(tmp_path)
    for kind, path in targets.items():
        before = os.lstat(path)
        with pytest.raises(DataError, match="refusing to write"):
            atomic_write_bytes(path, b"new")
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), kind
    assert (tmp_path / "regular.bin").read_bytes() == b"keep"
    assert (tmp_path / "ro.bin").read_bytes() == b"keep"
    with pytest.raises(DataError, match="symbolic link"):
        atomic_write_folder(targets["symlink"], {"a": b""})
    atomic_write_bytes(tmp_path / "regular.bin", b"new")  # an ordinary file is replaced as before
    assert (tmp_path / "regular.bin").read_bytes() == b"new"
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_outputs_refuse_special_targets(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, create_model("bernoulli", (1, 2, 2)), "bernoulli")
    targets = special_targets(tmp_path)
    del targets["folder"]  # click itself refuses a folder for a file option (exit 2)
    for kind, path in targets.items():
        result = CliRunner().invoke(cli, ["sample", str(ckpt), "-n", "2", "--out", str(tmp_path / "s.png"),
                                          "--npz", str(path)])
        assert result.exit_code == 1 and "refusing to write" in result.output, (kind, result.output)
        result = CliRunner().invoke(cli, ["train", "bernoulli", "--dataset", "digits", "--out", str(path)])
        assert result.exit_code == 1 and "refusing to write" in result.output, (kind, result.output)


def test_non_finite_configs_are_refused():
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ConfigError, match="not a finite number"):
            create_model("bernoulli", (1, 2, 2), alpha=value)
    result = CliRunner().invoke(cli, ["info", "bernoulli", "--set", "alpha=NaN"])
    assert result.exit_code == 1 and "not a finite number" in result.output


def test_export_parity_treats_nan_as_failure(tmp_path):
    from densreg.export import ExportError, export_model

    model = create_model("markov", (1, 2, 2), order=1)
    with torch.no_grad():
        model.log_probs.fill_(float("nan"))
    with pytest.raises(ExportError, match="parity"):
        export_model(model, tmp_path / "nan-export")
    assert not (tmp_path / "nan-export").exists()


@pytest.mark.parametrize("bad", [np.array([[[0.25, 0.75]]]), np.array([[[0, 256]]]), np.array([[[0, 257]]]),
                                 np.array([[[np.nan, 1.0]]]), np.array([[[np.inf, 0.0]]]),
                                 np.array([[[1 + 1j, 0]]]), np.array([[[-1, 0]]])])
def test_mnist_npz_values_are_checked_before_any_cast(tmp_path, bad):
    from densreg.plugins.datasets.mnist import load_binarized_mnist

    images = np.zeros((2, 28, 28), dtype=bad.dtype)
    images[0, 0, :2] = bad.reshape(-1)
    np.savez(tmp_path / "m.npz", train=images, valid=images, test=images)
    with pytest.raises(DataError, match="0 and 1"):
        load_binarized_mnist("train", str(tmp_path / "m.npz"))
    fine = np.zeros((2, 28, 28), dtype=np.float64)
    fine[0, 0, 0] = 1.0
    np.savez(tmp_path / "ok.npz", train=fine, valid=fine, test=fine)
    assert load_binarized_mnist("test", str(tmp_path / "ok.npz"))[0, 0, 0, 0] == 1


def test_negative_seed_and_rows_are_usage_errors(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, create_model("bernoulli", (1, 2, 2)), "bernoulli")
    for args in (["sample", str(ckpt), "--out", str(tmp_path / "s.png"), "--seed", "-5"],
                 ["sample", str(ckpt), "--out", str(tmp_path / "s.png"), "--nrow", "-2"],
                 ["train", "bernoulli", "--dataset", "digits", "--out", str(ckpt), "--seed", "-5"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "Invalid value for" in result.output and "unexpected" not in result.output
