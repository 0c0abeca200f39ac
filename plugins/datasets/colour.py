"""`color-patches` (K = 8) and `color-patches-256` (K = 256): 16x16 RGB crops of scikit-image's bundled
colour photographs, each photo first resized (Lanczos) so its shorter side is 256 pixels. Each 8-bit
value g becomes the level floor(g * K / 256), the binning `densreg score --images` applies to a PNG.
uint8 (N, 3, 16, 16); photographs never share a split; crop positions have a fixed seed.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from densreg.registry import Dataset
from densreg.registry.datasets import quantize

from .photos import random_crops, read_photo, split_rng

CROP_SIZE = 16
PHOTO_SHORT_SIDE = 256
COLOUR_SEED = 0
COLOUR_PHOTOS = {
    "train": ("astronaut", "hubble_deep_field", "ihc", "retina", "rocket"),
    "valid": ("coffee",),
    "test": ("chelsea", "motorcycle_left"),
}
COLOUR_COUNTS = {"train": 10000, "valid": 1000, "test": 2000}


def load_colour_patches(levels: int, split: str, data: str | None = None, download: bool = False) -> np.ndarray:
    """Split ``split`` as uint8 (N, 3, 16, 16) with values 0..levels-1 (levels divides 256).
    ``data`` and ``download`` are unused: the photos ship with scikit-image."""
    rng = split_rng(COLOUR_SEED, tuple(COLOUR_PHOTOS), split)
    photos = [read_photo(name, "RGB", PHOTO_SHORT_SIDE) for name in COLOUR_PHOTOS[split]]
    crops = random_crops(photos, COLOUR_COUNTS[split], CROP_SIZE, rng)  # (N, 16, 16, 3), 0..255
    return quantize(crops, levels).transpose(0, 3, 1, 2).astype(np.uint8)


def _description(levels: int) -> str:
    counts = "/".join(str(COLOUR_COUNTS[s]) for s in ("train", "valid", "test"))
    return (f"16x16 RGB crops of scikit-image's colour photos (shorter side resized to 256), {levels} levels "
            f"per channel; {counts}, photos by split")


COLOR_PATCHES = Dataset(name="color-patches", description=_description(8), event_shape=(3, CROP_SIZE, CROP_SIZE),
                        num_categories=8, load=partial(load_colour_patches, 8))
COLOR_PATCHES_256 = Dataset(name="color-patches-256", description=_description(256),
                            event_shape=(3, CROP_SIZE, CROP_SIZE), num_categories=256,
                            load=partial(load_colour_patches, 256))
