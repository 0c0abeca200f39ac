"""The ``bars`` dataset: 4x4 binary images, each a random set of full horizontal or vertical
bars (the classic test bed of mixture models: one component per bar pattern). Needs no files."""

from __future__ import annotations

import numpy as np

from densreg.registry import Dataset

SIZE = 4
SPLIT_SIZES = {"train": 1000, "valid": 200, "test": 200}
SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}


def load_bars(split: str, data: str | None = None, download: bool = False) -> np.ndarray:
    """``split`` of the bars dataset as uint8 (N, 1, 4, 4), values 0/1; ``data`` and ``download``
    are part of every reader's signature and unused here (the images are generated, seeded per split)."""
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    n = SPLIT_SIZES[split]
    lines = rng.random((n, SIZE)) < 0.3  # which rows (or columns) are on
    images = np.broadcast_to(lines[:, :, None], (n, SIZE, SIZE)).copy()
    vertical = rng.random(n) < 0.5
    images[vertical] = images[vertical].transpose(0, 2, 1)
    return images.astype(np.uint8)[:, None]


BARS = Dataset(name="bars", description="4x4 binary images of random horizontal or vertical bars (generated)",
               event_shape=(1, SIZE, SIZE), num_categories=2, load=load_bars, splits=tuple(SPLIT_SIZES))
