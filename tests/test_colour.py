"""Colour end to end: the R -> G -> B order within a pixel on a real colour crop (color-patches), and
`densreg sample` / `densreg plot` drawing K levels per channel as RGB 0..255."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from densreg.app.cli import cli
from densreg.app.images import grid_layout, image_grid
from densreg.registry import create_model, load_split, save_checkpoint
from densreg.registry.datasets import levels_to_8bit, quantize

SHAPE, K = (3, 16, 16), 8
SMALL = {"pixelrnn": {"hidden": 16}, "row-lstm": {"hidden": 12, "layers": 2, "output_hidden": 24},
         "diagonal-bilstm": {"hidden": 12, "layers": 2, "output_hidden": 24}, "nade": {"hidden": 16}}


def randomized(name: str, seed: int = 0):
    """Model ``name`` with every parameter drawn from N(0, 0.3^2): larger than the default init, so
    that a dependence shows well above float noise (and few ReLUs sit dead on one image)."""
    torch.manual_seed(seed)
    model = create_model(name, SHAPE, K, **SMALL[name]).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def colour_crop():
    """One real crop of the test split whose centre pixel is far from grey, int64 (1, 3, 16, 16)."""
    test = load_split("color-patches", "test")
    spread = test[:, :, 8, 7].max(dim=1).values - test[:, :, 8, 7].min(dim=1).values
    return test[int(spread.argmax())][None]


@pytest.mark.parametrize("name", list(SMALL))
def test_green_logits_move_with_the_pixels_red_and_not_its_blue(name, colour_crop):
    model = randomized(name)
    row, col = 8, 7
    red, green, blue = (c * 16 * 16 + row * 16 + col for c in range(3))
    position = {int(flat): d for d, flat in enumerate(model.order)}
    assert position[red] + 1 == position[green] == position[blue] - 1  # R, G, B within the pixel

    def logits_when(channel_flat):  # the crop with that value set to each level 0..K-1 -> (K, D, K)
        batch = colour_crop.repeat(K, 1, 1, 1).reshape(K, -1)
        batch[:, channel_flat] = torch.arange(K)
        with torch.no_grad():
            return model.conditional_logits(batch.reshape(K, *SHAPE))

    by_red, by_blue = logits_when(red), logits_when(blue)
    green_by_red, green_by_blue = by_red[:, position[green]], by_blue[:, position[green]]
    assert (green_by_red - green_by_red[:1]).abs().amax() > 1e-2  # G sees the pixel's R
    assert torch.allclose(green_by_blue, green_by_blue[:1].expand_as(green_by_blue), atol=1e-6, rtol=0)  # not B
    assert torch.allclose(by_red[:, position[red]], by_red[:1, position[red]].expand(K, -1), atol=1e-6, rtol=0)
    assert (by_blue[:, position[blue] + 1] - by_blue[:1, position[blue] + 1]).abs().amax() > 1e-2  # next pixel sees B


def test_levels_map_to_8_bit_values_and_back():
    for levels in range(2, 257):
        values = np.arange(levels).reshape(1, 1, 1, levels)
        drawn = np.asarray(image_grid(values, levels, pad=0, min_cell=1))[0].astype(np.int64)
        assert drawn[0] == 0 and drawn[-1] == 255
        assert np.abs(drawn - np.arange(levels) * 255 / (levels - 1)).max() <= 1.0  # the linear map, to 1
        assert np.array_equal(quantize(drawn, levels), np.arange(levels)), levels  # PNG input reads them back
    drawn = np.asarray(image_grid(np.arange(8).reshape(1, 1, 1, 8), 8, pad=0, min_cell=1))[0]
    assert drawn.tolist() == [0, 36, 73, 109, 146, 182, 219, 255]
    assert levels_to_8bit(np.array([2]), 100).item() == 6  # round(2 * 255 / 99) = 5 would read back as 1


def cell(picture: np.ndarray, index: int, n: int, shape) -> np.ndarray:
    """The pixels of grid cell ``index`` at native size (H, W, 3), from an enlarged RGB grid."""
    layout = grid_layout(n, shape)
    factor, (_, height, width) = layout["factor"], shape
    r, c = divmod(index, layout["nrow"])
    top, left = (1 + r * (height + 1)) * factor, (1 + c * (width + 1)) * factor
    return picture[top:top + height * factor:factor, left:left + width * factor:factor]


def test_sample_writes_rgb_levels_scaled_to_255(tmp_path):
    model = create_model("bernoulli", SHAPE, K)
    model.fit_closed_form(load_split("color-patches", "train")[:300])
    ckpt, png, npz = tmp_path / "c.safetensors", tmp_path / "s.png", tmp_path / "s.npz"
    save_checkpoint(ckpt, model, "bernoulli")
    result = run("sample", ckpt, "-n", 4, "--out", png, "--npz", npz)
    assert result.exit_code == 0, result.output
    samples = np.load(npz)["samples"].astype(np.int64)
    with Image.open(png) as picture:
        assert picture.mode == "RGB"
        pixels = np.asarray(picture)
    for i in range(4):
        expected = np.round(samples[i].transpose(1, 2, 0) * 255 / (K - 1)).astype(np.uint8)
        assert np.array_equal(cell(pixels, i, 4, SHAPE), expected)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # colours, not grey


def test_plot_draws_a_colour_dataset_and_an_npz(tmp_path):
    out = tmp_path / "d.png"
    result = run("plot", "--dataset", "color-patches", "--split", "valid", "-n", 9, "--out", out)
    assert result.exit_code == 0, result.output
    assert "9 images of shape 3,16,16, K=8" in result.output
    valid = load_split("color-patches", "valid")[:9].numpy()
    with Image.open(out) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    expected = np.round(valid[5].transpose(1, 2, 0) * 255 / 7).astype(np.uint8)
    assert np.array_equal(cell(pixels, 5, 9, SHAPE), expected)

    known = np.zeros((1, 3, 2, 2), dtype=np.uint8)
    known[0, 0, 0, 0], known[0, 1, 0, 1], known[0, 2, 1, 0], known[0, :, 1, 1] = 7, 7, 7, (1, 4, 6)
    np.savez(tmp_path / "known.npz", images=known)
    result = run("plot", tmp_path / "known.npz", "--categories", 8, "--out", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as picture:
        rgb = np.asarray(picture)
    assert [tuple(cell(rgb, 0, 1, (3, 2, 2))[i, j]) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))] == [
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (36, 146, 219)]


@pytest.mark.parametrize(("args", "message"), [
    (["--dataset", "image-patches"], "is continuous"),
    (["known.npz"], "needs --categories K"),
    (["known.npz", "--categories", 4], "values must lie in 0..3"),
    (["known.npz", "run.log.jsonl", "--categories", 8], "do not mix"),
    (["known.npz", "--dataset", "digits"], "not both"),
])
def test_plot_refuses_bad_image_input(tmp_path, args, message):
    np.savez(tmp_path / "known.npz", images=np.full((2, 3, 2, 2), 7))
    args = [tmp_path / a if str(a).endswith((".npz", ".jsonl")) else a for a in args]
    result = run("plot", *args, "--out", tmp_path / "x.png")
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "x.png").exists()
