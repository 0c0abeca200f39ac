"""Image grids of samples, written with Pillow. A level v of K is drawn as the 8-bit value
round(v * 255 / (K - 1)) (0 black, K-1 full intensity; ``levels_to_8bit``), per channel: grey for
C = 1, RGB for C = 3; binning such a picture again (``quantize``, as PNG input does) gives back v."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from densreg.registry.datasets import levels_to_8bit
from densreg.registry.errors import DataError


def grid_layout(n: int, event_shape, nrow: int | None = None, pad: int = 1, min_cell: int = 28) -> dict:
    """Where ``n`` images of ``event_shape`` (C, H, W) go in a grid: images per row ``nrow`` (at most
    n; default square), ``rows``, the enlargement ``factor`` and the final ``size`` (width, height)
    in pixels."""
    channels, height, width = event_shape
    nrow = min(nrow or max(1, math.ceil(math.sqrt(n))), max(n, 1))
    rows = math.ceil(n / nrow)
    factor = max(1, math.ceil(min_cell / max(height, width)))
    size = ((nrow * (width + pad) + pad) * factor, (rows * (height + pad) + pad) * factor)
    return {"nrow": nrow, "rows": rows, "factor": factor, "size": size}


def grid_bytes(n: int, event_shape, nrow: int | None = None) -> int:
    """Bytes ``image_grid`` needs at its peak for ``n`` images: the tiled picture, its enlarged copy
    and the PNG buffer, 8-bit per channel."""
    width, height = grid_layout(n, event_shape, nrow)["size"]
    return 2 * width * height * (3 if event_shape[0] == 3 else 1)


def image_grid(images: np.ndarray, num_categories: int, nrow: int | None = None, pad: int = 1,
               min_cell: int = 28) -> Image.Image:
    """Tile integer images (N, C, H, W) with values 0..K-1 into one 8-bit image.

    C=1 gives a grey grid, C=3 an RGB grid; small images are enlarged (nearest
    neighbour) to at least ``min_cell`` pixels a side. ``nrow`` above N is taken as N.
    """
    images = np.asarray(images)
    n, channels, height, width = images.shape
    if channels not in (1, 3):
        raise DataError(f"an image grid shows 1- or 3-channel images, but these have {channels} channels; "
                        "write the raw samples with --npz instead")
    layout = grid_layout(n, (channels, height, width), nrow, pad, min_cell)
    nrow = layout["nrow"]
    scaled = levels_to_8bit(images, num_categories)
    grid = np.full((channels, layout["rows"] * (height + pad) + pad, nrow * (width + pad) + pad), 128, np.uint8)
    for i, img in enumerate(scaled):
        r, c = divmod(i, nrow)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top:top + height, left:left + width] = img
    picture = Image.fromarray(grid[0] if channels == 1 else grid.transpose(1, 2, 0))
    if layout["factor"] > 1:
        picture = picture.resize(layout["size"], Image.NEAREST)
    return picture


def real_to_levels(values: np.ndarray) -> np.ndarray:
    """Real values (N, C, H, W) -> uint8 levels 0..255 for a grid: the 1st to 99th percentile of the
    whole batch stretched linearly over 0..255 (clipped outside), so samples share one grey scale."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)


def grid_png(images: np.ndarray, num_categories: int, nrow: int | None = None, min_cell: int = 28) -> bytes:
    """``image_grid`` of integer images (N, C, H, W) as PNG file bytes."""
    buffer = io.BytesIO()
    image_grid(images, num_categories, nrow=nrow, min_cell=min_cell).save(buffer, format="PNG")
    return buffer.getvalue()
