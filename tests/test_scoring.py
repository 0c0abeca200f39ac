"""Anomaly scores (densreg.app.scoring, `densreg score`), against a tiny model whose every
probability is set by hand, from a checkpoint and from an export folder (without torch)."""

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import densreg
from densreg.app.cli import cli
from densreg.app.inputs import read_images
from densreg.app.ood import detection_metrics, perturb_images
from densreg.app.scoring import compressed_bits, png_bytes, region_nll, score_images, summary
from densreg.registry.testing import single_torch_thread  # noqa: F401

# p(x_0 = 1) = 0.2, p(x_1 = 1) = 0.7 on images of 1 x 1 x 2
P1 = np.array([0.2, 0.7])


def hand_model(p1=P1):
    model = densreg.create_model("bernoulli", event_shape=(1, 1, len(p1)), num_categories=2)
    probs = torch.tensor(np.stack([1 - p1, p1], axis=1))
    model.log_probs.copy_(probs.log())
    return model


def hand_nll(image):
    """-log p of a flat binary image under P1, in nats."""
    return -sum(math.log(p if v else 1 - p) for v, p in zip(image, P1))


IMAGES = np.array([[[[0, 1]]], [[[1, 0]]], [[[1, 1]]], [[[0, 0]]]])


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "hand.safetensors"
    densreg.save_checkpoint(path, hand_model(), "bernoulli")
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hand-onnx"
    densreg.export_model(hand_model(), out)
    return out


def test_nll_and_pixel_maps_are_the_hand_computed_values():
    result = score_images(hand_model(), IMAGES, "nll")
    expected = [hand_nll(x.ravel()) for x in IMAGES]
    assert np.allclose(result.scores, expected, atol=1e-6) and np.allclose(result.nll, expected, atol=1e-6)
    assert np.allclose(result.bits_per_dim, np.array(expected) / (2 * math.log(2)), atol=1e-6)
    assert np.allclose(result.pixel_nll[0, 0, 0], [-math.log(0.8), -math.log(0.7)], atol=1e-6)


def test_likelihood_ratio_subtracts_the_background_nll():
    background = hand_model(np.array([0.5, 0.9]))
    result = score_images(hand_model(), IMAGES, "likelihood-ratio", background=background)
    bg = [-math.log(0.5) - math.log(0.9 if x.ravel()[1] else 0.1) for x in IMAGES]
    assert np.allclose(result.columns["background_nll"], bg, atol=1e-6)
    assert np.allclose(result.scores, [hand_nll(x.ravel()) - b for x, b in zip(IMAGES, bg)], atol=1e-6)
    with pytest.raises(densreg.ConfigError, match="background model"):
        score_images(hand_model(), IMAGES, "likelihood-ratio")
    with pytest.raises(densreg.DataError, match="background model takes shape"):
        score_images(hand_model(), IMAGES, "likelihood-ratio", background=hand_model(np.array([0.5, 0.5, 0.5])))


def test_complexity_is_nll_minus_the_lossless_png_code_length():
    rng = np.random.default_rng(0)
    noise, blank = rng.integers(0, 2, (1, 28, 28)), np.zeros((1, 28, 28), dtype=np.int64)
    for image, k in ((noise, 2), (rng.integers(0, 5, (3, 4, 4)), 5)):
        decoded = np.asarray(Image.open(io.BytesIO(png_bytes(image, k))))
        decoded = decoded[None] if image.shape[0] == 1 else decoded.transpose(2, 0, 1)
        assert (decoded.astype(int) == image).all()  # lossless
    bits = compressed_bits(np.stack([noise, blank]), 2)
    assert bits[0] > bits[1] + 8 * 50  # noise costs far more than a blank image
    result = score_images(hand_model(), IMAGES, "complexity")
    assert np.allclose(result.scores, result.nll - compressed_bits(IMAGES, 2) * math.log(2))


def test_typicality_distance_and_p_value_by_hand():
    reference = IMAGES[[0, 3]]  # NLLs a = -ln .8 - ln .7 and b = -ln .8 - ln .3: mean (a + b) / 2
    a, b = hand_nll([0, 1]), hand_nll([0, 0])
    result = score_images(hand_model(), IMAGES, "typicality", reference=reference)
    assert np.allclose(result.scores, [abs(hand_nll(x.ravel()) - (a + b) / 2) for x in IMAGES], atol=1e-6)
    # both reference images lie (b - a) / 2 from the mean: an image as far has p = (2 + 1) / 3, a farther one 1/3
    assert result.columns["p_value"][0] == pytest.approx(1.0) and result.columns["p_value"][2] == pytest.approx(1 / 3)
    with pytest.raises(densreg.ConfigError, match="reference images"):
        score_images(hand_model(), IMAGES, "typicality")


def test_region_nll_sums_a_grid_of_regions_by_hand():
    pixels = np.arange(2 * 5 * 4, dtype=np.float64).reshape(1, 2, 5, 4)  # 2 channels, 5 rows, 4 columns
    per_pixel = pixels[0, 0] + pixels[0, 1]  # channels are summed
    rows, columns = ([0, 1], [2, 3], [4]), ([0, 1], [2], [3])  # 3 near-equal bands each way
    expected = [per_pixel[np.ix_(r, c)].sum() for r in rows for c in columns]
    assert region_nll(pixels, 3).tolist() == [expected]
    assert region_nll(pixels[:, :, :1, :2], 3).tolist() == [[per_pixel[0, 0], per_pixel[0, 1]]]  # one band per pixel


def test_dose_is_a_gaussian_density_of_region_nll_and_code_length_by_hand():
    from scipy.stats import multivariate_normal

    def statistics(images):  # 1 x 2 images: the grid is the two pixels, then the PNG length in nats
        pixel = [[-math.log(p if v else 1 - p) for v, p in zip(x.ravel(), P1)] for x in images]
        return np.column_stack([pixel, compressed_bits(images, 2) * math.log(2)])

    reference = IMAGES[[0, 1, 2, 3, 0, 3, 3]]
    ref = statistics(reference)
    covariance = np.cov(ref, rowvar=False)
    covariance += (1e-3 * np.trace(covariance) / 3 + 1e-9) * np.eye(3)
    gaussian = multivariate_normal(ref.mean(0), covariance)
    result = score_images(hand_model(), IMAGES, "dose", reference=reference)
    assert np.allclose(result.scores, -gaussian.logpdf(statistics(IMAGES)), rtol=1e-6)
    centred = statistics(IMAGES) - ref.mean(0)
    assert np.allclose(result.columns["mahalanobis"], [c @ np.linalg.solve(covariance, c) for c in centred])
    assert np.allclose(result.nll, [hand_nll(x.ravel()) for x in IMAGES])
    with pytest.raises(densreg.ConfigError, match="reference images"):
        score_images(hand_model(), IMAGES, "dose")
    with pytest.raises(densreg.ConfigError, match="at least 2 reference images"):
        score_images(hand_model(), IMAGES, "dose", reference=IMAGES[:1])


def test_score_cli_dose_uses_the_training_dataset(tmp_path):
    path = tmp_path / "m.safetensors"
    assert run("train", "markov", "--dataset", "digits", "--out", path).exit_code == 0
    result = run("score", path, "--dataset", "digits", "--method", "dose", "--reference-size", "300", "--json",
                 "--out", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "dose" and report["images"] == 300 and math.isfinite(report["score"]["max"])
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header == "index,name,score,nll_nats,bits_per_dim,mahalanobis"


def test_summary_and_detection_metrics_by_hand():
    assert summary(np.arange(5.0)) == {"mean": 2.0, "std": math.sqrt(2), "min": 0.0, "q05": 0.2, "q25": 1.0,
                                       "median": 2.0, "q75": 3.0, "q95": 3.8, "max": 4.0}
    metrics = detection_metrics(np.array([0.0, 1.0, 2.0]), np.array([1.5, 3.0]))
    assert metrics["auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (in, out) pairs ranked right
    assert metrics["aupr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics["fpr_at_95_tpr"] == pytest.approx(1 / 3)  # the threshold 1.5 lets the in-image 2.0 through


def test_perturbation_replaces_values_at_the_rate():
    images = np.zeros((200, 1, 10, 10), dtype=np.uint8)
    assert (perturb_images(images, 0.0, 2) == images).all()
    changed = perturb_images(images, 0.5, 4, seed=1)
    assert changed.dtype == np.uint8 and set(np.unique(changed)) == {0, 1, 2, 3}
    assert (changed != 0).mean() == pytest.approx(0.5 * 3 / 4, abs=0.01)  # a quarter of the draws keep 0
    with pytest.raises(densreg.ConfigError):
        perturb_images(images, 1.5, 2)


def test_png_inputs_follow_the_stated_binning_rule(tmp_path):
    Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8)).save(tmp_path / "a.png")
    assert read_images(tmp_path / "a.png", (1, 1, 4), 2)[0].tolist() == [[[[0, 0, 1, 1]]]]
    assert read_images(tmp_path / "a.png", (1, 1, 4), 3)[0].tolist() == [[[[0, 1, 1, 2]]]]  # floor(g * 3 / 256)
    with pytest.raises(densreg.DataError, match="4x1 pixels but the model takes 2x1; pass --resize"):
        read_images(tmp_path, (1, 1, 2), 2)
    assert read_images(tmp_path, (1, 1, 2), 2, resize=True)[0].shape == (1, 1, 1, 2)


def test_score_cli_writes_the_table_summary_and_heatmaps(checkpoint, tmp_path):
    np.savez(tmp_path / "x.npz", images=IMAGES[:, 0])  # (N, H, W) accepted for one channel
    out, heat = tmp_path / "s.csv", tmp_path / "h.png"
    result = run("score", checkpoint, "--images", tmp_path / "x.npz", "--out", out, "--top", 2, "--heatmaps", heat,
                 "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [row["index"] for row in report["most_anomalous"]] == [1, 2]  # x = (1, 0): 0.2 * 0.3, the least likely
    assert report["score"]["max"] == pytest.approx(hand_nll([1, 0]))
    rows = out.read_text().splitlines()
    assert rows[0] == "index,name,score,nll_nats,bits_per_dim" and rows[2].startswith("1,x.npz[1],")
    assert float(rows[2].split(",")[2]) == pytest.approx(hand_nll([1, 0]))
    assert Image.open(heat).size[0] > 200
    result = run("score", checkpoint, "--images", tmp_path / "x.npz", "--out", tmp_path / "s.json")
    assert result.exit_code == 0 and "most anomalous 4:" in result.stdout
    assert json.loads((tmp_path / "s.json").read_text())["images"][1]["nll_nats"] == pytest.approx(hand_nll([1, 0]))


@pytest.mark.parametrize("make, message", [
    (lambda d: np.savez(d / "in.npz", images=np.full((2, 1, 1, 2), 2)), "values must lie in 0..1 (the model's K = 2)"),
    (lambda d: np.savez(d / "in.npz", images=np.zeros((2, 1, 2, 2))), "expected images of shape (N, 1, 1, 2)"),
    (lambda d: np.savez(d / "in.npz", images=np.zeros((0, 1, 1, 2))), "holds no images"),
    (lambda d: (d / "in").mkdir(), "holds no pictures (.png, .jpg"),
    (lambda d: (d / "in.npz").write_bytes(b"not a zip"), "is not a readable .npz archive"),
])
def test_score_cli_refuses_bad_input_in_one_line(checkpoint, tmp_path, make, message):
    make(tmp_path)
    path = tmp_path / "in.npz" if (tmp_path / "in.npz").exists() else tmp_path / "in"
    result = run("score", checkpoint, "--images", path)
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_score_cli_usage_errors(checkpoint, tmp_path):
    assert run("score", checkpoint).exit_code == 2  # neither --dataset nor --images
    result = run("score", checkpoint, "--images", tmp_path, "--method", "likelihood-ratio")
    assert result.exit_code == 1 and "needs --background" in result.output
    result = run("score", checkpoint, "--dataset", "digits")
    assert result.exit_code == 1 and "shape (1, 8, 8)" in result.output


def test_export_scores_equal_the_checkpoint_scores(export_dir, checkpoint):
    exported = densreg.ExportedModel(export_dir, provider="cpu")
    for method in ("nll", "complexity"):
        ours, theirs = score_images(hand_model(), IMAGES, method), score_images(exported, IMAGES, method)
        assert np.allclose(ours.scores, theirs.scores, atol=1e-5)
        assert np.allclose(ours.pixel_nll, theirs.pixel_nll, atol=1e-5)
    result = run("score", export_dir, "--images", _npz(export_dir.parent), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["score"]["max"] == pytest.approx(hand_nll([1, 0]), abs=1e-5)


def _npz(folder):
    path = folder / "images.npz"
    np.savez(path, images=IMAGES)
    return path


def test_scoring_and_completing_an_export_never_import_torch(export_dir):
    code = f"""
import sys, numpy as np
from densreg.export.runtime import ExportedModel
from densreg.app.scoring import score_images
from densreg.app.completion import complete
model = ExportedModel({str(export_dir)!r}, provider="cpu")
images = np.array({IMAGES.tolist()})
print(score_images(model, images, "complexity").nll.round(6).tolist())
print(complete(model, images, 1, 3, seed=0).shape)
assert "torch" not in sys.modules, "torch was imported"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert np.allclose(first, [hand_nll(x.ravel()) for x in IMAGES], atol=1e-5)
    assert result.stdout.splitlines()[1] == "(4, 3, 1, 1, 2)"


def test_train_perturb_records_the_rate(tmp_path):
    out = tmp_path / "bg.safetensors"
    result = run("train", "bernoulli", "--dataset", "digits", "--perturb", "0.5", "--out", out)
    assert result.exit_code == 0, result.output
    model, info = densreg.load_checkpoint(out)
    assert info.metrics["perturb"] == 0.5
    p = model.log_probs.exp()[:, 1]
    clean = densreg.load_split("digits", "train").float().mean(0).flatten()
    assert torch.allclose(p, 0.5 * clean + 0.25, atol=0.06)  # half the values kept, half uniform
    assert run("train", "bernoulli", "--dataset", "digits", "--perturb", "2", "--out", out).exit_code == 2
