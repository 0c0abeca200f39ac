"""`densreg features` (batched NADE features to .npz) and `densreg plot` (learning curves PNG)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from densreg.registry import ConfigError, create_model, load_split, save_checkpoint
from densreg.app.cli import cli
from densreg.app.features import extract_features
from densreg.app.plotting import nice_ticks


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_extract_features_batches_like_one_pass():
    torch.manual_seed(0)
    model = create_model("nade", (1, 8, 8), 2, hidden=12)
    images = load_split("digits", "valid")[:23]
    batched = extract_features(model, images, batch_size=5)
    assert batched.shape == (23, 12) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, model.features(images).detach().numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="no learned features"):
        extract_features(create_model("markov", (1, 8, 8)), images)


def test_features_command(tmp_path):
    torch.manual_seed(0)
    model = create_model("nade", (1, 8, 8), 2, hidden=10)
    save_checkpoint(tmp_path / "n.safetensors", model, "nade")
    result = run("features", tmp_path / "n.safetensors", "--dataset", "digits", "--split", "valid",
                 "--out", tmp_path / "f.npz", "--batch-size", 64)
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "f.npz") as archive:
        features, labels = archive["features"], archive["labels"]
        assert str(archive["model"]) == "nade"
    images = load_split("digits", "valid")
    assert "and their labels" in result.output and labels.shape == (len(images),)
    from sklearn.datasets import load_digits

    every = load_digits()
    binary = (every.images >= 8).reshape(len(every.images), -1)
    for image, label in zip(images.reshape(len(images), -1).numpy()[:50], labels[:50]):
        assert label in every.target[(binary == image).all(-1)]  # an image of that digit looks exactly so
    assert features.shape == (len(images), 10)
    np.testing.assert_allclose(features, model.features(images).detach().numpy(), atol=1e-6)

    markov = create_model("markov", (1, 8, 8))
    save_checkpoint(tmp_path / "m.safetensors", markov, "markov")
    result = run("features", tmp_path / "m.safetensors", "--dataset", "digits", "--out", tmp_path / "g.npz")
    assert result.exit_code == 1 and "no learned features" in result.output
    assert not (tmp_path / "g.npz").exists()
    result = run("features", tmp_path / "n.safetensors", "--dataset", "digits-grey", "--out", tmp_path / "g.npz")
    assert result.exit_code == 1 and "K=2" in result.output


def write_log(path, values):
    path.write_text("".join(json.dumps({"epoch": i + 1, "train_nll": t, "valid_nll": v, "seconds": 1.0}) + "\n"
                            for i, (t, v) in enumerate(values)))


def test_plot_command(tmp_path):
    write_log(tmp_path / "a.log.jsonl", [(30.0, 29.0), (25.0, 24.5), (22.0, 23.0)])
    write_log(tmp_path / "b.log.jsonl", [(28.0, 27.0), (21.0, 22.0)])
    result = run("plot", tmp_path / "a.log.jsonl", tmp_path / "b.log.jsonl", "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert picture.shape == (500, 800, 3)
    colours = {tuple(p) for p in picture.reshape(-1, 3)[::7]}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # one colour per run

    (tmp_path / "bad.log.jsonl").write_text('{"epoch": 1}\n')
    result = run("plot", tmp_path / "bad.log.jsonl", "--out", tmp_path / "d.png")
    assert result.exit_code == 1 and "line 1" in result.output
    result = run("plot", tmp_path / "missing.log.jsonl", "--out", tmp_path / "d.png")
    assert result.exit_code == 1 and "no such training log" in result.output
    assert not (tmp_path / "d.png").exists()


def test_nice_ticks_cover_the_range():
    ticks = nice_ticks(87.3, 112.9)
    assert ticks[0] >= 87.3 and ticks[-1] <= 112.9 and 3 <= len(ticks) <= 8
    assert len(set(np.diff(ticks).round(9))) == 1


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_nade_features_use_the_configured_activation(activation):
    torch.manual_seed(0)
    model = create_model("nade", (1, 3, 3), hidden=6, activation=activation)
    with torch.no_grad():
        model.c.normal_()  # so that some pre-activations are negative: relu and sigmoid differ there
    x = torch.randint(0, 2, (4, 1, 3, 3))
    seq = x.reshape(4, -1).index_select(1, model.order).double()
    w = model.W.double()  # (D, K-1, H): value 1 at position d adds W[d, 0]; value 0 adds nothing
    pre = model.c.double() + seq @ w[:, 0]
    expected = torch.relu(pre) if activation == "relu" else torch.sigmoid(pre)
    assert (pre < 0).any()
    torch.testing.assert_close(model.features(x).double(), expected, atol=1e-5, rtol=1e-5)
