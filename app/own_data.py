"""Training data from the user's own files (``densreg train --images`` / ``--table``): read, split
into train and valid, and the Transform that the model records (torch-free).

The validation split takes ``round(N * fraction)`` items chosen by numpy's default_rng(seed)
(at least one item stays in train), or comes from a separate path. Images: the fingerprint covers
every picture read from ``--images`` (8-bit values, before binning), the split being reproducible from
the seed. Tables: standardized by the train split's mean and std, the fingerprint covers those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from densreg.registry.errors import ConfigError, DataError
from densreg.registry.transforms import Transform

from .inputs import images_for, training_images
from .tables import read_table


@dataclass
class OwnData:
    """Model values (int64 levels, or float32 (N, 1, 1, D) standardized rows) of train and valid (or
    None), the Transform, and a line saying what was read."""

    train: np.ndarray
    valid: np.ndarray | None
    transform: Transform
    summary: str


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices of ``n`` items, ``round(n * fraction)`` of them valid, seeded, sorted."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"--valid-fraction must lie in [0, 1), got {fraction}")
    count = min(int(round(n * fraction)), n - 1)
    chosen = np.random.default_rng(seed).permutation(n)
    return np.sort(chosen[count:]), np.sort(chosen[:count])


def own_images(path, shape=None, categories: int = 2, resize: bool = False, labels: bool = False,
               valid_fraction: float = 0.1, valid_path=None, seed: int = 0) -> OwnData:
    """``densreg train --images``: pictures or an array file (app/inputs.py), ``shape`` (C, H, W) or
    None (grey, the first picture's size)."""
    channels, size = (1, None) if shape is None else (shape[0], tuple(shape[1:]))
    images, _, label_array, transform = training_images(path, channels, size, categories, resize, labels)
    if valid_path is not None:
        valid, _ = images_for(transform, valid_path, resize)
        train = images
    else:
        train_at, valid_at = split_indices(len(images), valid_fraction, seed)
        train, valid = images[train_at], images[valid_at] if len(valid_at) else None
    c, h, w = transform.event_shape
    classes = ""
    if label_array is not None:
        counts = np.bincount(label_array, minlength=len(transform.classes))
        classes = "; classes " + ", ".join(f"{n} ({k})" for n, k in zip(transform.classes, counts))
    summary = (f"{len(images)} images from {path} as {'grey' if c == 1 else 'RGB'} {w}x{h}, "
               f"K={transform.num_categories}: {len(train)} train, {0 if valid is None else len(valid)} valid{classes}")
    return OwnData(train, valid, transform, summary)


def own_table(path, columns=None, drop_invalid: bool = False, valid_fraction: float = 0.1, seed: int = 0) -> OwnData:
    """``densreg train --table``: rows (app/tables.py), split, standardized by the train split."""
    table = read_table(path, columns, drop_invalid)
    if len(table.rows) < 2:
        raise DataError(f"{path}: {len(table.rows)} valid row; a density needs at least 2")
    train_at, valid_at = split_indices(len(table.rows), valid_fraction, seed)
    transform = Transform.fit_table(table.rows[train_at], table.columns, str(path))
    valid = transform.standardize(table.rows[valid_at]) if len(valid_at) else None
    dropped = f", {table.dropped} invalid rows dropped" if table.dropped else ""
    summary = (f"{len(table.rows)} rows of {len(table.columns)} columns from {path}{dropped}: "
               f"{len(train_at)} train, {len(valid_at)} valid, standardized by the train split")
    return OwnData(transform.standardize(table.rows[train_at]), valid, transform, summary)


def own_inputs(transform: Transform, images_path=None, table_path=None, resize: bool = False):
    """New data for a model that records ``transform``: (model values, a name per item). Pictures and
    arrays for an image transform, a table (its recorded columns picked by name from a header) for a
    table transform."""
    if transform.kind == "table":
        if table_path is None:
            raise ConfigError(f"the model was trained on a table ({', '.join(transform.columns)}); pass --table PATH")
        table = read_table(table_path)
        if table.columns != list(transform.columns) and all(c in table.columns for c in transform.columns):
            table = read_table(table_path, list(transform.columns))
        return transform.standardize(table.rows), table.names
    if images_path is None:
        raise ConfigError("the model was trained on images; pass --images PATH")
    return images_for(transform, images_path, resize)
