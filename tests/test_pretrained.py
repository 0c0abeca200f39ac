"""The pretrained catalog (issue 32, item 6): `densreg pretrained`, densreg.load_pretrained with no
network, the card an export of a catalogued model carries, and resume states kept out of the package."""

from __future__ import annotations

import json
import shutil
import socket
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import densreg
from densreg.app.cli import cli
from densreg.registry import CheckpointError, UnknownNameError, create_model, load_checkpoint, save_checkpoint
from densreg.registry import pretrained
from densreg.registry.testing import single_torch_thread  # noqa: F401 (autouse: one torch thread)

ROOT = Path(__file__).resolve().parent.parent
STATED = ("license", "intended_use", "limitations")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_pretrained opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_catalog_figures_are_the_files_and_the_measured_table():
    rows = json.loads((ROOT / "benchmarks" / "results" / "nll.json").read_text())["rows"]
    entries = pretrained.list_pretrained()
    assert {e["name"] for e in entries} >= {"nade/binarized-mnist", "row-lstm/binarized-mnist",
                                            "diagonal-bilstm/binarized-mnist"}
    for entry in entries:
        path = ROOT / "models" / entry["file"]
        assert pretrained.file_sha256(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
        model, info = load_checkpoint(path)
        assert int(model.free_parameters()) == entry["parameters"]
        measured = [r for r in rows if r["config"] == info.config and r["model"] == info.model]
        assert entry["test_nll_nats"] in [r["nll_nats"] for r in measured] and entry["test_images"] == 10000
        assert entry["name"] == f"{info.model}/{entry['dataset']}"
        card = entry["card"]
        assert card["evaluation"]["test_nll_nats"] == entry["test_nll_nats"]
        assert all(card[key] and card[key] != "unknown" for key in STATED)
        assert set(card["dataset"]["sha256"]) == {"train", "valid", "test"}


def test_only_catalogued_files_are_package_data():
    """Training resume states (*.last.safetensors) and logs stay out of the installed package."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["densreg.models"] == "models" and "densreg.models" in config["packages"]
    data = config["package-data"]["densreg.models"]
    assert sorted(data) == sorted(["catalog.json", *(e["file"] for e in pretrained.list_pretrained())])
    assert not any(".last." in name or name.endswith(".jsonl") or "*" in name for name in data)


def test_load_pretrained_needs_no_network(no_network):
    model, info = densreg.load_pretrained("row-lstm/binarized-mnist")
    assert type(model).__name__ == "RowLSTM" and info.model == "row-lstm"
    assert info.extra["card"]["evaluation"]["test_nll_nats"] == pytest.approx(81.96, abs=0.005)
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(torch.zeros(1, 1, 28, 28, dtype=torch.int64))).all()


def test_unknown_name_and_tampered_file_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(UnknownNameError, match="no pretrained model 'row-lstm/cifar'; the catalog has "):
        densreg.load_pretrained("row-lstm/cifar")
    installed = tmp_path / "models"
    shutil.copytree(pretrained.folder(), installed, ignore=shutil.ignore_patterns("nade-*", "row-*", "diag*", "pix*"))
    data = bytearray((installed / "markov-mnist.safetensors").read_bytes())
    data[-1] ^= 1
    (installed / "markov-mnist.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "folder", lambda: installed)
    with pytest.raises(CheckpointError, match="does not match the catalog's sha256; reinstall densreg"):
        densreg.load_pretrained("markov/binarized-mnist")


def test_cli_lists_the_catalog():
    result = CliRunner().invoke(cli, ["pretrained"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["name", "dataset"]
    for entry in pretrained.list_pretrained():
        line = next(line for line in lines if line.startswith(entry["name"] + " "))
        assert f"{entry['test_nll_nats']:.2f}" in line and f"{entry['parameters']:,}" in line
        assert entry["sha256"][:16] in line
    result = CliRunner().invoke(cli, ["pretrained", "--json"])
    assert json.loads(result.output) == pretrained.list_pretrained()


@pytest.fixture
def small_catalog(monkeypatch, tmp_path):
    """A catalog of one small checkpoint (an export of the real ones takes minutes)."""
    installed = tmp_path / "installed"
    installed.mkdir()
    model = create_model("markov", (1, 3, 3), 2)
    save_checkpoint(installed / "tiny.safetensors", model, "markov")
    card = {"license": "MIT (test)", "intended_use": "tests", "limitations": "nine pixels",
            "evaluation": {"test_nll_nats": 6.2, "split": "test", "images": 5}}
    entry = {"name": "markov/tiny", "file": "tiny.safetensors", "model": "markov", "dataset": "tiny",
             "test_nll_nats": 6.2, "test_split": "test", "test_images": 5, "parameters": 17,
             "bytes": (installed / "tiny.safetensors").stat().st_size, "license": "MIT (test)",
             "sha256": pretrained.file_sha256(installed / "tiny.safetensors"), "card": card}
    (installed / "catalog.json").write_text(json.dumps({"format": "densreg-pretrained/1", "models": [entry]}))
    monkeypatch.setattr(pretrained, "folder", lambda: installed)
    return installed, card


@pytest.mark.parametrize("by", ["name", "file"])
def test_an_export_of_a_catalogued_model_carries_its_card(small_catalog, tmp_path, by):
    installed, card = small_catalog
    source = "markov/tiny" if by == "name" else str(installed / "tiny.safetensors")
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", source, "--out", str(out), "--limitations", "stated here"])
    assert result.exit_code == 0, result.output
    exported = json.loads((out / "manifest.json").read_text())["card"]
    assert exported["license"] == "MIT (test)" and exported["intended_use"] == "tests"
    assert exported["limitations"] == "stated here"  # what the user states wins
    assert exported["evaluation"] == card["evaluation"]
    assert "- test NLL: 6.2000 nats per image on the `test` split (5 images)" in (out / "README.md").read_text()
