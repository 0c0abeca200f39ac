"""`densreg features` (batched features to .npz, from a checkpoint or an export folder's features.onnx)
and `densreg plot` (learning curves PNG)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from densreg.registry import ConfigError, create_model, load_split, save_checkpoint
from densreg.app.cli import cli
from densreg.app.features import extract_features
from densreg.app.plotting import nice_ticks
from export_edits import rebind


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


@pytest.fixture(scope="module")
def nade_export(tmp_path_factory):
    """A small NADE on digits' shape (random weights), as a checkpoint and as an export folder."""
    folder = tmp_path_factory.mktemp("features")
    torch.manual_seed(0)
    model = create_model("nade", (1, 8, 8), 2, hidden=10)
    save_checkpoint(folder / "n.safetensors", model, "nade")
    result = run("export", folder / "n.safetensors", "--out", folder / "n-onnx")
    assert result.exit_code == 0 and "features: 10 per image in features.onnx" in result.output, result.output
    readme = (folder / "n-onnx" / "README.md").read_text()
    assert "- features: 10 values per image from features.onnx: act(c + sum_d W_d[x_d]): the H hidden" in readme
    return model, folder


def test_features_command_on_an_export_equals_the_checkpoint(nade_export, tmp_path):
    model, folder = nade_export
    for source, out in ((folder / "n.safetensors", tmp_path / "c.npz"), (folder / "n-onnx", tmp_path / "e.npz")):
        result = run("features", source, "--dataset", "digits", "--split", "valid", "--out", out, "--batch-size", 64)
        assert result.exit_code == 0, result.output
    with np.load(tmp_path / "c.npz") as ours, np.load(tmp_path / "e.npz") as theirs:
        assert np.abs(ours["features"] - theirs["features"]).max() < 1e-5
        assert np.array_equal(ours["labels"], theirs["labels"]) and str(theirs["model"]) == "nade"
    images = load_split("digits", "valid")[:5].numpy()
    np.savez(tmp_path / "x.npz", images=images[:, 0])  # (N, H, W) for one channel
    result = run("features", folder / "n-onnx", "--images", tmp_path / "x.npz", "--out", tmp_path / "i.npz")
    assert result.exit_code == 0 and "and their labels" not in result.output, result.output
    with np.load(tmp_path / "i.npz") as archive:
        assert "labels" not in archive.files
        np.testing.assert_allclose(archive["features"], model.features(torch.from_numpy(images)).detach(), atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 7, 8), np.int64), "expected images of shape (N, 1, 8, 8)"),
    (np.full((3, 8, 8), 2), "the model's K = 2"),
    (None, "holds no pictures (.png, .jpg"),
])
def test_features_command_refuses_bad_images_in_one_line(nade_export, tmp_path, bad, message):
    _, folder = nade_export
    if bad is None:
        path = tmp_path / "empty"
        path.mkdir()
    else:
        path = tmp_path / "bad.npz"
        np.savez(path, images=bad)
    for source in (folder / "n.safetensors", folder / "n-onnx"):
        result = run("features", source, "--images", path, "--out", tmp_path / "f.npz")
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "f.npz").exists()
    result = run("features", folder / "n-onnx", "--out", tmp_path / "f.npz")
    assert result.exit_code == 2 and "exactly one of --dataset NAME, --images PATH or --table PATH" in result.output


def test_exports_without_features_say_so(tmp_path):
    """A model without features, one whose features do not trace, and a folder from before
    features export: the export still works, and asking for features is one clear line."""
    from densreg.export import export_model
    from densreg.export import format as fmt
    from densreg.export.runtime import ExportedModel
    from densreg.plugins.baselines import Markov

    class Unexportable(Markov):  # a features of data-dependent width: torch.export refuses it
        registry_name = "markov"

        def features(self, x):
            return torch.zeros(x.shape[0], int(x.sum()) + 1)

    export_model(create_model("markov", (1, 8, 8)), tmp_path / "m", name="markov")
    result = run("features", tmp_path / "m", "--dataset", "nope", "--out", tmp_path / "f.npz")  # before any data
    assert result.exit_code == 1 and not (tmp_path / "f.npz").exists()
    assert result.output.strip().splitlines()[-1] == (f"Error: the export {tmp_path / 'm'} has no features graph "
                                                      "(features.onnx): Markov has no learned features")
    report = export_model(Unexportable((1, 2, 3)), tmp_path / "u", name="markov")
    assert report["features"]["graph"] is None and "its features does not export" in report["features"]["reason"]
    with pytest.raises(ConfigError, match="its features does not export"):
        ExportedModel(tmp_path / "u").features(np.zeros((1, 1, 2, 3), np.int64))

    old = tmp_path / "old"  # an export written before features.onnx existed: the runtime opens it as before
    export_model(create_model("nade", (1, 2, 3), hidden=3), old)
    (old / fmt.FEATURES).unlink()
    manifest = json.loads((old / fmt.MANIFEST).read_text())
    del manifest["features"], manifest["graphs"][fmt.FEATURES], manifest["files"][fmt.FEATURES]
    (old / fmt.MANIFEST).write_text(json.dumps(manifest))
    rebind(old)  # as the exporter of that time wrote it: its graphs name this manifest
    exported = ExportedModel(old)
    assert exported.log_prob(np.zeros((1, 1, 2, 3), np.int64)).shape == (1,) and not exported.has_features
    with pytest.raises(ConfigError, match="written before densreg exported features; re-export"):
        exported.features(np.zeros((1, 1, 2, 3), np.int64))


def test_export_features_never_import_torch(nade_export):
    model, folder = nade_export
    images = load_split("digits", "test")[:7]
    code = f"""
import sys, numpy as np
from densreg.export.runtime import ExportedModel
from densreg.app.features import extract_features
model = ExportedModel({str(folder / "n-onnx")!r}, provider="cpu")
images = np.array({images.tolist()})
print(extract_features(model, images, batch_size=3).round(6).tolist())
assert "torch" not in sys.modules, "torch was imported"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(json.loads(result.stdout), model.features(images).detach(), atol=1e-5)


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
