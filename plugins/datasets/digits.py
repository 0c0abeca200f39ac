"""scikit-learn's bundled 8x8 digits, binarized, as 17 grey levels or dequantized to real values: the
reader and its registrations. Needs no files; the reader returns uint8 images (N, 1, 8, 8), or float32
for ``digits-continuous``."""

from __future__ import annotations

from functools import partial

import numpy as np

from densreg.registry import Dataset

DIGITS_SPLIT_SEED = 0
DEQUANTIZE_SEED = 1  # the uniform noise of digits-continuous, one stream per split
DIGITS_SIZES = {"valid": 300, "test": 300}  # the remaining 1197 images are train


def load_digits(split: str, levels: int = 2) -> np.ndarray:
    """scikit-learn's bundled 8x8 digits (values 0..16) as uint8 (N, 1, 8, 8).

    ``levels=2``: binarized (value >= 8); ``levels=17``: the grey values as they are.
    The split is a fixed permutation (seed 0): valid 300, test 300, train the rest.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    images = sklearn_digits().images.astype(np.uint8)  # (1797, 8, 8), 0..16
    chosen = images[split_index(split, len(images))]
    if levels == 2:
        chosen = (chosen >= 8).astype(np.uint8)
    return chosen[:, None]


def split_index(split: str, count: int) -> np.ndarray:
    """Indices (sorted) of a split's images among scikit-learn's ``count`` digits."""
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(count)
    n_valid, n_test = DIGITS_SIZES["valid"], DIGITS_SIZES["test"]
    index = {"valid": order[:n_valid], "test": order[n_valid:n_valid + n_test],
             "train": order[n_valid + n_test:]}[split]
    return np.sort(index)


def load_digit_labels(split: str, data: str | None = None) -> np.ndarray:
    """The digit (0..9) of each image of ``split``, int64 (N,), in ``load_digits``' order."""
    from sklearn.datasets import load_digits as sklearn_digits

    target = sklearn_digits().target.astype(np.int64)
    return target[split_index(split, len(target))]


def load_continuous_digits(split: str, data: str | None = None, download: bool = False) -> np.ndarray:
    """The digits of ``split`` dequantized and scaled: (v + u) / 17 with v in 0..16 and u uniform in
    [0, 1) (fixed seed per split) -> float32 (N, 1, 8, 8) in [0, 1]; same images and order as ``digits``."""
    grey = load_digits(split, levels=17)
    rng = np.random.default_rng([DEQUANTIZE_SEED, ("train", "valid", "test").index(split)])
    return ((grey + rng.random(grey.shape)) / 17.0).astype(np.float32)


def _load(levels: int, split: str, data: str | None = None, download: bool = False) -> np.ndarray:
    return load_digits(split, levels=levels)


DIGITS = Dataset(
    name="digits",
    description="scikit-learn's bundled 8x8 digits, binarized (value >= 8); 1197/300/300, no files needed",
    event_shape=(1, 8, 8), num_categories=2, load=partial(_load, 2), labels=load_digit_labels)
DIGITS_GREY = Dataset(
    name="digits-grey",
    description="scikit-learn's bundled 8x8 digits as 17 grey levels (0..16); 1197/300/300",
    event_shape=(1, 8, 8), num_categories=17, load=partial(_load, 17), labels=load_digit_labels)
DIGITS_CONTINUOUS = Dataset(
    name="digits-continuous",
    description="scikit-learn's bundled 8x8 digits dequantized by uniform noise and scaled to [0, 1) "
                "(64 real values); 1197/300/300",
    event_shape=(1, 8, 8), num_categories=0, continuous=True, load=load_continuous_digits,
    labels=load_digit_labels)
