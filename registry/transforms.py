"""The preprocessing a model was trained with, recorded with it so new data meets the same rule (numpy only).

A model trained on the user's own files (``densreg train --images`` or ``--table``) records a
``Transform`` in its checkpoint (metadata key ``transform``) and its export's manifest (key
``transform``); ``eval``, ``score``, ``features``, ``complete``, ``sample`` and the torch-free runtime
apply it to raw files, and its inverse to the files they write. It serializes to JSON (``to_dict``).

Kinds and their rules:

- ``images``: a picture is converted to grey (Pillow mode "L") or RGB, giving 8-bit values g per
  channel; a picture of another size than (H, W) is refused, or, with ``resize`` "lanczos", scaled
  to W x H by Pillow's Lanczos filter on the 8-bit values (before binning); then g becomes the level
  ``floor(g * K / 256)``, K equal-width bins of 0..255 (K = 2: the threshold g >= 128 gives 1).
  Arrays (.npz, .npy) hold levels 0..K-1 already and are only checked. Inverse: level v becomes the
  8-bit value ``round(v * 255 / (K - 1))`` (kept inside bin v).
- ``table``: rows of D real values (named ``columns``) become ``(x - mean) / std`` per column, the
  statistics of the training split (a column that is constant there gets std 1), as float32 items
  of event shape (1, 1, D). Inverse: ``z * std + mean``. A model's log density is of the
  standardized values; that of the raw row is it minus ``sum(log std)`` (``log_jacobian``).

``fingerprint``: sha256 (hex) of the training data as the model saw it before binning or
standardization (``data_fingerprint``), so a checkpoint names the exact data it came from.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .datasets import levels_to_8bit, quantize
from .errors import DataError
from .limits import check_event_shape

KINDS = ("images", "table")
RESIZE_RULES = ("refuse", "lanczos")
TABLE_RULE = "value x -> (x - mean) / std per column, statistics of the training split"


def data_fingerprint(array: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and bytes (C order): equal data, equal fingerprint."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}:{list(array.shape)}\0".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Transform:
    """Raw data -> model values. ``event_shape`` (C, H, W) and ``num_categories`` K (0 for a table)
    are the model's; ``channels`` 1 (grey) or 3 (RGB) is C for images; ``resize`` one of RESIZE_RULES;
    ``columns``, ``mean``, ``std`` (one per value, tables); ``classes``: subfolder names when labels
    came from folders; ``items``: training items; ``source``: what was read (for messages)."""

    kind: str
    event_shape: tuple[int, int, int]
    num_categories: int
    fingerprint: str
    resize: str = "refuse"
    columns: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()
    items: int = 0
    source: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"transform kind {str(self.kind)[:40]!r} is not one of {', '.join(KINDS)}")
        shape, k = check_event_shape(list(self.event_shape), self.num_categories, "transform",
                                     continuous=self.kind == "table")
        object.__setattr__(self, "event_shape", shape)
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"transform resize {str(self.resize)[:40]!r} is not one of {', '.join(RESIZE_RULES)}")
        if self.kind == "images" and shape[0] not in (1, 3):
            raise ValueError(f"an image transform has 1 (grey) or 3 (RGB) channels, not {shape[0]}")
        if self.kind == "table":
            width = math.prod(shape)
            if not (len(self.columns) == len(self.mean) == len(self.std) == width):
                raise ValueError(f"a table transform needs {width} column names, means and stds")
            if not all(math.isfinite(s) and s > 0 for s in self.std) or not all(map(math.isfinite, self.mean)):
                raise ValueError("a table transform's means must be finite and its stds finite and positive")

    @property
    def channels(self) -> int:
        return self.event_shape[0]

    @property
    def rule(self) -> str:
        """The rule in words, for messages and the export's README."""
        if self.kind == "table":
            return f"{TABLE_RULE}; columns {', '.join(self.columns)}"
        c, h, w = self.event_shape
        resize = "pictures of another size scaled (Lanczos)" if self.resize == "lanczos" else \
            "pictures of another size refused"
        k = self.num_categories
        return (f"{'grey' if c == 1 else 'RGB'} {w}x{h} pixels, {resize}; 8-bit value g -> level floor(g*{k}/256)"
                + (" (a threshold: g >= 128 is 1)" if k == 2 else ""))

    # -- images -------------------------------------------------------------------------------
    def levels(self, pictures: np.ndarray) -> np.ndarray:
        """8-bit pictures uint8 (N, C, H, W), already converted and sized -> int64 levels 0..K-1."""
        self._expect("images")
        return quantize(np.asarray(pictures), self.num_categories)

    def pictures(self, levels: np.ndarray) -> np.ndarray:
        """Inverse: levels 0..K-1 (any shape) -> uint8 8-bit values that ``levels`` maps back exactly."""
        self._expect("images")
        return levels_to_8bit(levels, self.num_categories)

    # -- tables -------------------------------------------------------------------------------
    @classmethod
    def fit_table(cls, rows: np.ndarray, columns, source: str = "") -> "Transform":
        """The table transform of training rows (N, D) float64: per-column mean and std (population)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or not len(rows):
            raise DataError(f"{source or 'the table'}: no rows to standardize by")
        std = rows.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(kind="table", event_shape=(1, 1, rows.shape[1]), num_categories=0,
                   fingerprint=data_fingerprint(rows), columns=tuple(str(c) for c in columns),
                   mean=tuple(float(m) for m in rows.mean(axis=0)), std=tuple(float(s) for s in std),
                   items=len(rows), source=source)

    def standardize(self, rows: np.ndarray) -> np.ndarray:
        """Rows (N, D) of raw values -> float32 items (N, 1, 1, D); DataError for another width."""
        self._expect("table")
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self.columns):
            raise DataError(f"expected rows of {len(self.columns)} values ({', '.join(self.columns)}), "
                            f"got shape {rows.shape}")
        return ((rows - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)[:, None, None, :]

    def unstandardize(self, values: np.ndarray) -> np.ndarray:
        """Inverse: items (N, 1, 1, D) (or rows (N, D)) -> float64 rows (N, D) of raw values."""
        self._expect("table")
        values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        return values * np.asarray(self.std) + np.asarray(self.mean)

    @property
    def log_jacobian(self) -> float:
        """log |d standardized / d raw| = -sum(log std): add it to a standardized log density to get the
        raw rows' log density (nats); 0 for images."""
        return -float(np.sum(np.log(self.std))) if self.kind == "table" else 0.0

    def _expect(self, kind: str) -> None:
        if self.kind != kind:
            raise DataError(f"the model was trained on {'a table' if self.kind == 'table' else 'images'}, "
                            f"not {'a table' if kind == 'table' else 'images'}")

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able: every field, plus the ``rule`` in words."""
        out = {"kind": self.kind, "event_shape": list(self.event_shape), "num_categories": self.num_categories,
               "fingerprint": {"sha256": self.fingerprint}, "items": self.items, "source": self.source,
               "rule": self.rule}
        if self.kind == "images":
            out.update(channels="grey" if self.channels == 1 else "RGB", resize=self.resize,
                       classes=list(self.classes))
        else:
            out.update(columns=list(self.columns), mean=list(self.mean), std=list(self.std))
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "Transform":
        """Parse ``to_dict``'s output; ValueError (saying what is wrong) for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"transform is {type(data).__name__}, expected a JSON object")
        try:
            fingerprint = data["fingerprint"]["sha256"]
            return cls(kind=data["kind"], event_shape=tuple(data["event_shape"]),
                       num_categories=data["num_categories"], fingerprint=str(fingerprint),
                       resize=data.get("resize", "refuse"), columns=tuple(map(str, data.get("columns", ()))),
                       mean=tuple(map(float, data.get("mean", ()))), std=tuple(map(float, data.get("std", ()))),
                       classes=tuple(map(str, data.get("classes", ()))), items=int(data.get("items", 0)),
                       source=str(data.get("source", "")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"transform lacks or mistypes {exc}") from None


def transform_of(info) -> Transform | None:
    """The Transform a SavedModelInfo (checkpoint or export) records, or None (trained on a dataset)."""
    data = getattr(info, "transform", None)
    return None if data is None else Transform.from_dict(data)
