"""The issue-15 datasets: image-patches and digits-continuous (real values), color-patches (RGB, K = 8
and 256), built offline from scikit-image's bundled photos and scikit-learn's digits; and how
load_split and `densreg datasets` treat continuous data."""

import json
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from numpy.lib.stride_tricks import sliding_window_view

from densreg.app.cli import cli
from densreg.registry import DataError, Dataset, get_dataset, hookimpl, load_split, register_plugin, unregister_plugin
from densreg.plugins.datasets.colour import COLOUR_PHOTOS, PHOTO_SHORT_SIDE
from densreg.plugins.datasets.digits import load_digit_labels, load_digits
from densreg.plugins.datasets.patches import PATCH_PHOTOS
from densreg.plugins.datasets.photos import read_photo

SPLITS = ("train", "valid", "test")


def window_matches(photo: np.ndarray, window: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """(top, left) of every window of ``photo`` (H, W[, C]) within ``tolerance`` of ``window`` (h, w[, C])
    once both are shifted to start at 0 (so a subtracted mean does not matter); one row of tops at a time."""
    height, width = window.shape[:2]
    target = (window - window[:1, :1]).reshape(1, -1)
    found = []
    for top in range(photo.shape[0] - height + 1):
        band = photo[top:top + height].astype(np.float64)  # (h, W[, C])
        views = sliding_window_view(band, width, axis=1)  # (h, W', [C,] w)
        views = np.moveaxis(views, -1, 2).transpose(1, 0, 2, *range(3, views.ndim))  # (W', h, w[, C])
        shifted = (views - views[:, :1, :1]).reshape(len(views), -1)
        found += [(top, int(left)) for left in np.flatnonzero(np.abs(shifted - target).max(axis=1) <= tolerance)]
    return found


def test_photo_splits_never_share_a_photograph():
    for photos in (PATCH_PHOTOS, COLOUR_PHOTOS):
        assert tuple(photos) == SPLITS
        names = [name for split in SPLITS for name in photos[split]]
        assert len(names) == len(set(names))


def test_image_patches_follow_the_rnade_recipe():
    test = load_split("image-patches", "test").numpy()
    assert test.shape == (10000, 1, 1, 63) and test.dtype == np.float32
    assert np.array_equal(test, load_split("image-patches", "test").numpy())  # fixed seed
    full = np.concatenate([test[:, 0, 0], -test[:, 0, 0].sum(axis=1, keepdims=True)], axis=1)  # the dropped pixel
    assert np.abs(full.mean(axis=1)).max() < 1e-5  # each patch's mean was subtracted
    spread = full.max(axis=1) - full.min(axis=1)
    assert spread.max() <= 1.0 and spread.max() > 0.5 and np.median(spread) > 8 / 256  # [0, 1) scale, real texture
    # The first patch is a window of the first test photo: 256 * (x - x[0]) = g - g[0] + (u - u[0]), |u - u[0]| < 1
    chelsea = read_photo(PATCH_PHOTOS["test"][0], "L")
    assert len(window_matches(chelsea, 256 * full[0].reshape(8, 8), 1.0)) >= 1
    # dequantized: the noise makes every value distinct (8-bit values would repeat within a patch)
    assert len(np.unique(full[0])) == 64
    sizes = {split: len(load_split("image-patches", split)) for split in ("train", "valid")}
    assert sizes == {"train": 40000, "valid": 4000}


def test_digits_continuous_dequantizes_the_grey_digits():
    for split in SPLITS:
        values = load_split("digits-continuous", split).numpy()
        grey = load_digits(split, levels=17)
        assert values.dtype == np.float32 and values.shape == grey.shape
        assert np.array_equal(np.floor(values * 17).astype(np.uint8), grey)  # the level is recoverable exactly
    noise = values * 17 - grey
    assert 0.45 < noise.mean() < 0.55 and noise.std() > 0.25  # uniform noise, not a constant offset
    assert np.array_equal(get_dataset("digits-continuous").labels("test", None), load_digit_labels("test"))
    assert not np.array_equal(load_split("digits-continuous", "valid")[:10], load_split("digits-continuous", "test")[:10])


def test_color_patches_are_rgb_crops_binned_to_k_levels():
    eight = load_split("color-patches", "test").numpy()
    full = load_split("color-patches-256", "test").numpy()
    assert eight.shape == full.shape == (2000, 3, 16, 16)
    assert np.array_equal(eight, full // 32)  # floor(g * 8 / 256), from the same crops
    assert set(np.unique(eight)) == set(range(8)) and full.max() > 200
    assert (full[:, 0] != full[:, 2]).mean() > 0.3  # colour: the channels differ
    photo = read_photo(COLOUR_PHOTOS["test"][0], "RGB", PHOTO_SHORT_SIDE)
    assert min(photo.shape[:2]) == PHOTO_SHORT_SIDE
    top, left = window_matches(photo, full[0].transpose(1, 2, 0).astype(np.float64), 0)[0]
    assert np.array_equal(photo[top:top + 16, left:left + 16].transpose(2, 0, 1), full[0])
    assert [len(load_split("color-patches", s)) for s in ("train", "valid")] == [10000, 1000]


def continuous_plugin(array):
    plugin = types.SimpleNamespace()

    @hookimpl
    def register_datasets(register):
        register(Dataset(name="real-test", description="test data", event_shape=(1, 2, 3), num_categories=0,
                         continuous=True, load=lambda split, data, download: array))

    plugin.register_datasets = register_datasets
    return plugin


@pytest.mark.parametrize(("array", "message"), [
    (np.full((4, 1, 2, 3), np.nan), "NaN or infinite"),
    (np.full((4, 1, 2, 3), 1e39), "too large for float32"),
    (np.zeros((4, 1, 3, 2)), r"shape \(N, 1, 2, 3\), got shape \(4, 1, 3, 2\)"),
    (np.zeros((4, 6)), "got shape"),
    (np.zeros((4, 1, 2, 3), dtype=complex), "dtype complex128"),
    (np.array([["a"] * 6] * 4).reshape(4, 1, 2, 3), "dtype <U1"),
])
def test_load_split_refuses_bad_real_values_in_one_line(array, message):
    register_plugin(continuous_plugin(array), "real-test-plugin")
    try:
        with pytest.raises(DataError, match=message) as caught:
            load_split("real-test", "train")
        assert "\n" not in str(caught.value) and "'real-test', split 'train'" in str(caught.value)
    finally:
        unregister_plugin("real-test-plugin")


def test_load_split_returns_float32_for_continuous_data():
    register_plugin(continuous_plugin(np.arange(12, dtype=np.int16).reshape(2, 1, 2, 3)), "real-test-plugin")
    try:
        values = load_split("real-test", "valid")
        assert values.dtype == torch.float32 and values[1, 0, 1, 2].item() == 11.0
    finally:
        unregister_plugin("real-test-plugin")


def test_cli_lists_dimension_and_continuous():
    result = CliRunner().invoke(cli, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    listed = {d["name"]: d for d in json.loads(result.output)}
    assert listed["image-patches"]["continuous"] and listed["image-patches"]["dimension"] == 63
    assert listed["image-patches"]["event_shape"] == [1, 1, 63] and listed["image-patches"]["num_categories"] == 0
    assert listed["digits-continuous"]["continuous"] and listed["digits-continuous"]["dimension"] == 64
    assert not listed["color-patches"]["continuous"] and listed["color-patches"]["event_shape"] == [3, 16, 16]
    assert listed["color-patches-256"]["num_categories"] == 256 and listed["digits"]["continuous"] is False
    rows = {line.split()[0]: line.split() for line in CliRunner().invoke(cli, ["datasets"]).output.splitlines()[1:]}
    assert rows["image-patches"][1:4] == ["1,1,63", "63", "continuous"]
    assert rows["color-patches"][1:4] == ["3,16,16", "768", "8"]


def test_info_of_a_categorical_model_on_continuous_data_says_so():
    result = CliRunner().invoke(cli, ["info", "nade", "--dataset", "image-patches"])
    assert result.exit_code == 1 and "real-valued (continuous)" in result.output and "--categories" not in result.output
    result = CliRunner().invoke(cli, ["info", "nade", "--categories", "1"])
    assert result.exit_code == 1 and "--categories (-k) must be from 2" in result.output
