"""Completion (densreg.app.completion, `densreg complete`): completions follow the exact conditional
p(x_rest | x_kept), computed by enumerating every image of a tiny space; the export draws the same."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.stats import chisquare

import densreg
from densreg.app.cli import cli
from densreg.app.completion import complete, keep_for_rows
from densreg.registry.conformance import all_images, image_index, randomize
from densreg.registry.testing import single_torch_thread  # noqa: F401


def tiny(name, shape, k, **config):
    model = densreg.create_model(name, event_shape=shape, num_categories=k, **config)
    randomize(model, seed=3)
    return model.eval()


def exact_conditional(model, image, keep):
    """p(x_rest | x_kept) over every image of the space (zero where the kept values differ), (K^D,)."""
    every = all_images(model.event_shape, model.num_categories)
    with torch.no_grad():
        p = model.log_prob(every).double().exp()
    order = model.order
    same = (every.reshape(len(every), -1)[:, order[:keep]] == image.reshape(-1)[order[:keep]]).all(-1)
    p = torch.where(same, p, torch.zeros_like(p))
    return (p / p.sum()).numpy()


@pytest.mark.parametrize("name, shape, k, config, keep", [
    ("markov", (1, 2, 2), 2, {"order": 2}, 1),
    ("markov", (1, 2, 2), 2, {"order": 2, "ordering": "snake"}, 2),
    ("nade", (1, 1, 3), 3, {"hidden": 4}, 1),
    ("row-lstm", (1, 2, 2), 2, {"hidden": 4, "layers": 1, "output_hidden": 4}, 2),
])
def test_completions_follow_the_exact_conditional(name, shape, k, config, keep):
    model = tiny(name, shape, k, **config)
    image = all_images(shape, k)[-2:-1]  # one fixed image; only its first `keep` values matter
    draws = complete(model, image.numpy(), keep, samples=3000, seed=1)[0]
    seq = draws.reshape(len(draws), -1)[:, model.order.numpy()]
    assert (seq[:, :keep] == image.reshape(-1)[model.order[:keep]].numpy()).all()  # kept values stay
    expected = exact_conditional(model, image, keep)
    counts = np.bincount(image_index(torch.from_numpy(draws), k).numpy(), minlength=len(expected))
    assert counts[expected == 0].sum() == 0
    cells = expected > 0
    assert chisquare(counts[cells], expected[cells] * len(draws)).pvalue >= 1e-3


def test_keeping_nothing_is_sampling_and_keeping_everything_copies():
    model = tiny("nade", (1, 2, 3), 2, hidden=5)
    noise = np.random.default_rng(0).random((5, 6))
    drawn = complete(model, np.zeros((1, 1, 2, 3), dtype=np.int64), 0, samples=5, noise=noise)[0]
    assert (drawn == model.sample(5, noise=torch.from_numpy(noise)).numpy()).all()
    image = all_images((1, 2, 3), 2)[37:38].numpy()
    assert (complete(model, image, 6, samples=2)[0] == image[0]).all()


def test_keep_rows_and_bad_keep():
    model = tiny("markov", (1, 3, 4), 2)
    assert keep_for_rows(2, model) == 8
    with pytest.raises(densreg.ConfigError, match="raster order"):
        keep_for_rows(1, tiny("markov", (1, 3, 4), 2, ordering="snake"))
    with pytest.raises(densreg.ConfigError, match="0..3"):
        keep_for_rows(4, model)
    with pytest.raises(densreg.ConfigError, match="0..12"):
        complete(model, np.zeros((1, 1, 3, 4), dtype=np.int64), 13)
    with pytest.raises(densreg.DataError, match="values must lie in 0..1"):
        complete(model, np.full((1, 1, 3, 4), 2), 1)


def test_export_completes_through_the_step_graph_like_torch(tmp_path):
    model = tiny("nade", (1, 2, 3), 2, hidden=5)
    densreg.export_model(model, tmp_path / "onnx")
    exported = densreg.ExportedModel(tmp_path / "onnx", provider="cpu")
    images = all_images((1, 2, 3), 2)[[5, 40]].numpy()
    assert (complete(model, images, 3, 8, seed=4) == complete(exported, images, 3, 8, seed=4)).all()


def test_complete_cli_writes_the_grid_and_values(tmp_path):
    path = tmp_path / "m.safetensors"
    densreg.save_checkpoint(path, tiny("markov", (1, 3, 4), 2), "markov")
    images = all_images((1, 3, 4), 2)[[1, 100, 4000]].numpy()
    np.savez(tmp_path / "x.npz", images=images)
    out, npz = tmp_path / "c.png", tmp_path / "c.npz"
    result = CliRunner().invoke(cli, ["complete", str(path), "--images", str(tmp_path / "x.npz"), "--keep-rows", "1",
                                      "-n", "5", "--out", str(out), "--npz", str(npz)])
    assert result.exit_code == 0, result.output
    assert "keeping 4 of 12 values" in result.output
    saved = np.load(npz)
    assert saved["completions"].shape == (3, 5, 1, 3, 4) and int(saved["keep"]) == 4
    assert (saved["completions"][:, :, :, 0] == images[:, None, :, 0]).all()  # the top row is kept
    grid = Image.open(out)
    assert grid.size[0] > grid.size[1]  # 3 rows of 7 cells (original, kept, 5 completions)
    both = CliRunner().invoke(cli, ["complete", str(path), "--images", str(tmp_path / "x.npz"), "--keep", "1",
                                    "--keep-rows", "1", "--out", str(out)])
    assert both.exit_code == 2 and "exactly one of --keep" in both.output
    wrong = CliRunner().invoke(cli, ["complete", str(path), "--dataset", "digits", "--keep", "1", "--out", str(out)])
    assert wrong.exit_code == 1 and "shape (1, 8, 8)" in wrong.output



@pytest.mark.parametrize("make, message", [
    (lambda d: np.savez(d / "in.npz", images=np.full((2, 1, 3, 4), 2)), "values must lie in 0..1 (the model's K = 2)"),
    (lambda d: np.savez(d / "in.npz", images=np.zeros((2, 1, 4, 3))), "expected images of shape (N, 1, 3, 4)"),
    (lambda d: (d / "in").mkdir(), "holds no pictures (.png, .jpg"),
    (lambda d: Image.new("L", (5, 3)).save(d / "in.png"), "is 5x3 pixels but the model takes 4x3; pass --resize"),
])
def test_complete_cli_refuses_bad_input_in_one_line(tmp_path, make, message):
    path = tmp_path / "m.safetensors"
    densreg.save_checkpoint(path, tiny("markov", (1, 3, 4), 2), "markov")
    make(tmp_path)
    source = next(p for p in (tmp_path / "in.npz", tmp_path / "in.png", tmp_path / "in") if p.exists())
    result = CliRunner().invoke(cli, ["complete", str(path), "--images", str(source), "--keep", "2",
                                      "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "c.png").exists()


def test_long_work_shows_progress(capsys):
    """complete, score_images and extract_features draw a tqdm bar on stderr when asked (the CLI
    asks when stderr is a terminal)."""
    from densreg.app.features import extract_features
    from densreg.app.scoring import score_images

    model = tiny("nade", (1, 2, 3), 2, hidden=3)
    images = all_images((1, 2, 3), 2)[:5].numpy()
    complete(model, images, 2, 2, progress=True)
    assert "completing" in capsys.readouterr().err
    score_images(model, images, "nll", batch_size=2, progress=True)
    assert "scoring" in capsys.readouterr().err
    extract_features(model, images, batch_size=2, progress=True)
    assert "features" in capsys.readouterr().err
    complete(model, images, 2, 2)
    assert capsys.readouterr().err == ""
