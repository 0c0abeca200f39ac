"""The photographs scikit-image ships in its wheel (``skimage/data``), read offline with Pillow and
cut into square crops at seeded positions. numpy and Pillow only: no network, no torch.

The folder is found without importing scikit-image; a photo that is missing (an unusual
scikit-image build) is a DataError naming it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from densreg.registry.errors import DataError


def photo_folder() -> Path:
    """scikit-image's bundled data folder (``site-packages/skimage/data``)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed; it ships the photographs of this dataset "
                        "(pip install scikit-image)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_photo(name: str, mode: str, short_side: int | None = None) -> np.ndarray:
    """Photo ``name`` of skimage/data as uint8, (H, W) for mode "L" (Pillow's ITU-R 601 luma) or
    (H, W, 3) for "RGB"; with ``short_side`` resized (Lanczos) so its shorter side has that many pixels."""
    from PIL import Image  # imported when a photo is read, not to list the datasets

    matches = sorted(photo_folder().glob(f"{name}.*"))
    if not matches:
        raise DataError(f"scikit-image's photo {name!r} is missing from {photo_folder()}; "
                        "reinstall scikit-image (pip install --force-reinstall scikit-image)")
    with Image.open(matches[0]) as picture:
        picture = picture.convert(mode)
        if short_side is not None:
            scale = short_side / min(picture.size)
            picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.LANCZOS)
        return np.asarray(picture)


def random_crops(photos: list[np.ndarray], count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` crops of ``size`` x ``size`` at uniform positions, shared out evenly over ``photos``
    (the first ones take the remainder) -> uint8 (count, size, size[, 3]), photo by photo."""
    crops = []
    for index, photo in enumerate(photos):
        share = count // len(photos) + (index < count % len(photos))
        tops = rng.integers(0, photo.shape[0] - size + 1, share)
        lefts = rng.integers(0, photo.shape[1] - size + 1, share)
        rows = tops[:, None] + np.arange(size)  # (share, size)
        cols = lefts[:, None] + np.arange(size)
        crops.append(photo[rows[:, :, None], cols[:, None, :]])
    return np.concatenate(crops)


def split_rng(seed: int, splits: tuple[str, ...], split: str) -> np.random.Generator:
    """The generator of one split: seeded by (seed, position of the split), so splits draw independently."""
    return np.random.default_rng([seed, splits.index(split)])
