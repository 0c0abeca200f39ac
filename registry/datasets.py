"""The dataset type a plugin registers, and the folder where dataset readers keep downloads.

A dataset is registered by a plugin (``register_datasets`` hook) with its reader beside
the registration; the core loads and validates splits through ``densreg.registry.load_split``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir() -> Path:
    """Where downloads go: $DENSREG_CACHE, else ~/.cache/densreg."""
    return Path(os.environ.get("DENSREG_CACHE") or Path.home() / ".cache" / "densreg")


@dataclass
class Dataset:
    """A registered dataset.

    ``load(split, data, download)`` returns integer images (N, C, H, W) with values
    0..num_categories-1; ``data`` is a user path (or None for the default location).
    ``labels(split, data)``, where the dataset has them, returns one integer class label per
    image of the split, in the same order (e.g. the digit); None when it has none.
    """

    name: str
    description: str
    event_shape: tuple[int, int, int]
    num_categories: int
    load: Callable[[str, str | None, bool], np.ndarray]
    splits: tuple[str, ...] = ("train", "valid", "test")
    plugin: str = ""
    distribution: str = ""
    needs_files: bool = False
    labels: Callable[[str, str | None], np.ndarray] | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "event_shape": list(self.event_shape),
                "num_categories": self.num_categories, "splits": list(self.splits), "plugin": self.plugin,
                "needs_files": self.needs_files, "labelled": self.labels is not None}
