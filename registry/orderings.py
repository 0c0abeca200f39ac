"""Orderings of the D = C*H*W values of an image for the chain rule.

An ordering is a permutation of range(D): ``order[d]`` is the flat (C, H, W)
index of the value generated d-th. Within a pixel, channels go R, G, B
(channel 0 first), as in the PixelRNN paper.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError

BUILTIN_ORDERINGS = ("raster", "snake", "column", "random:SEED")


def _pixel_major(pixels: list[tuple[int, int]], event_shape) -> list[int]:
    c_count, height, width = event_shape
    return [c * height * width + h * width + w for h, w in pixels for c in range(c_count)]


def make_ordering(name: str, event_shape: tuple[int, int, int]) -> torch.Tensor:
    """Return the permutation (D,) int64 named ``name`` for images of ``event_shape``.

    raster: rows top to bottom, left to right; snake: rows alternate direction
    (boustrophedon); column: columns left to right, top to bottom;
    random:SEED: a permutation drawn with numpy's PCG64 seeded by SEED.
    """
    c_count, height, width = event_shape
    if name == "raster":
        pixels = [(h, w) for h in range(height) for w in range(width)]
    elif name == "snake":
        pixels = [(h, w if h % 2 == 0 else width - 1 - w) for h in range(height) for w in range(width)]
    elif name == "column":
        pixels = [(h, w) for w in range(width) for h in range(height)]
    elif name.startswith("random:"):
        seed = name.split(":", 1)[1]
        if not seed.isdigit():
            raise ConfigError(f"ordering {name!r}: expected random:SEED with a non-negative integer SEED")
        perm = np.random.default_rng(int(seed)).permutation(c_count * height * width)
        return torch.as_tensor(perm, dtype=torch.int64)
    else:
        raise ConfigError(f"unknown ordering {name!r}; expected one of {', '.join(BUILTIN_ORDERINGS)}")
    return torch.tensor(_pixel_major(pixels, event_shape), dtype=torch.int64)
