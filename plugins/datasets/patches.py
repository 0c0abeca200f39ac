"""`image-patches`: 8x8 grey patches of scikit-image's bundled photographs, preprocessed as the natural
patch benchmark of RNADE (Uria, Murray & Larochelle 2013) and MAF (Papamakarios et al. 2017, BSDS300):
dequantize each 8-bit value g by uniform noise, x = (g + u) / 256 in [0, 1), subtract each patch's
mean and drop its last (bottom-right) pixel, which the other 63 then determine. Continuous values,
float32 (N, 1, 1, 63). Photographs never share a split; positions and noise have a fixed seed.
"""

from __future__ import annotations

import numpy as np

from densreg.registry import Dataset

from .photos import random_crops, read_photo, split_rng

PATCH_SIZE = 8
PATCH_SEED = 0
PATCH_PHOTOS = {
    "train": ("astronaut", "brick", "camera", "coffee", "grass", "ihc", "moon", "motorcycle_left", "rocket"),
    "valid": ("cell", "gravel"),
    "test": ("chelsea", "coins"),
}
PATCH_COUNTS = {"train": 40000, "valid": 4000, "test": 10000}


def load_image_patches(split: str, data: str | None = None, download: bool = False) -> np.ndarray:
    """Split ``split`` of image-patches: float32 (N, 1, 1, 63), each row a mean-subtracted patch
    (values in (-1, 1)) without its bottom-right pixel. ``data`` and ``download`` are unused."""
    rng = split_rng(PATCH_SEED, tuple(PATCH_PHOTOS), split)
    photos = [read_photo(name, "L") for name in PATCH_PHOTOS[split]]
    grey = random_crops(photos, PATCH_COUNTS[split], PATCH_SIZE, rng).reshape(-1, PATCH_SIZE * PATCH_SIZE)
    values = (grey + rng.random(grey.shape)) / 256.0  # dequantized, [0, 1)
    values -= values.mean(axis=1, keepdims=True)
    return values[:, :-1].astype(np.float32).reshape(-1, 1, 1, PATCH_SIZE * PATCH_SIZE - 1)


IMAGE_PATCHES = Dataset(
    name="image-patches",
    description="8x8 grey patches of scikit-image's photos, RNADE/MAF recipe (dequantized to [0, 1), patch "
                "mean subtracted, last pixel dropped: 63 values); 40000/4000/10000, photos by split",
    event_shape=(1, 1, PATCH_SIZE * PATCH_SIZE - 1), num_categories=0, continuous=True, load=load_image_patches)
