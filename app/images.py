"""Image grids of samples, written with Pillow."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, num_categories: int, nrow: int | None = None, pad: int = 1,
               min_cell: int = 28) -> Image.Image:
    """Tile integer images (N, C, H, W) with values 0..K-1 into one 8-bit image.

    C=1 gives a grey grid, C=3 an RGB grid; small images are enlarged (nearest
    neighbour) to at least ``min_cell`` pixels a side.
    """
    images = np.asarray(images)
    n, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ValueError(f"can only draw 1- or 3-channel images, got {channels} channels")
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol_rows = math.ceil(n / nrow)
    scaled = (images.astype(np.float64) * (255.0 / (num_categories - 1))).round().astype(np.uint8)
    grid = np.full((channels, ncol_rows * (height + pad) + pad, nrow * (width + pad) + pad), 128, np.uint8)
    for i, img in enumerate(scaled):
        r, c = divmod(i, nrow)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top:top + height, left:left + width] = img
    picture = Image.fromarray(grid[0] if channels == 1 else grid.transpose(1, 2, 0))
    factor = max(1, math.ceil(min_cell / max(height, width)))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    return picture
