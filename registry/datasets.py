"""The dataset type a plugin registers, the folder where dataset readers keep downloads, the check
of real-valued splits and the 8-bit binning of pictures. numpy only.

A dataset is registered by a plugin (``register_datasets`` hook) with its reader beside
the registration; the core loads and validates splits through ``densreg.registry.load_split``.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError, DensregError
from .limits import check_memory


def cache_dir() -> Path:
    """Where downloads go: $DENSREG_CACHE, else ~/.cache/densreg."""
    return Path(os.environ.get("DENSREG_CACHE") or Path.home() / ".cache" / "densreg")


@dataclass
class Dataset:
    """A registered dataset.

    ``load(split, data, download)`` returns integer images (N, C, H, W) with values
    0..num_categories-1; ``data`` is a user path (or None for the default location).
    A continuous dataset (``continuous=True``, ``num_categories=0``) returns finite real values
    instead, float32 (N, C, H, W); e.g. a 63-vector per item has event shape (1, 1, 63).
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
    continuous: bool = False

    @property
    def dimension(self) -> int:
        """Values per item, C*H*W."""
        return math.prod(self.event_shape)

    def load_split(self, split: str, data: str | None = None, download: bool = False) -> np.ndarray:
        """The reader's array for ``split`` as it returned it (unchecked); DataError for an unknown split.

        What the reader raises, other than densreg's own errors, is reported in one line naming the
        dataset and its plugin: a DataError for an OSError (a missing or unreadable file), else a
        PluginError (a bug in the reader), the reader's exception as its cause."""
        if split not in self.splits:
            raise DataError(f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")
        try:
            return np.asarray(self.load(split, data, download))
        except (DensregError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a plugin's reader raises
            from .errors import PluginError
            from .plugin_manager import describe_exception

            error = DataError if isinstance(exc, OSError) else PluginError
            raise error(f"dataset {self.name!r} of plugin {self.plugin or 'in-process'} "
                        f"({self.distribution or 'in-process'}) could not read split {split!r}: "
                        f"{describe_exception(exc)}") from exc

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "event_shape": list(self.event_shape),
                "dimension": self.dimension, "num_categories": self.num_categories, "continuous": self.continuous,
                "splits": list(self.splits), "plugin": self.plugin, "needs_files": self.needs_files,
                "labelled": self.labels is not None}


def split_sha256(values) -> str:
    """The sha256 that identifies a split's content (what a checkpoint records of the data it was trained and
    evaluated on): of the values (N, ...) as contiguous bytes, one byte each for integer levels 0..255 (so
    binarized MNIST's are the published checksums its reader verifies), int64 little-endian for other
    integers, float32 little-endian for real values. ``values``: a numpy array or a CPU torch tensor."""
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        small = array.size == 0 or (array.min() >= 0 and array.max() <= 255)
        array = array.astype(np.uint8 if small else np.dtype("<i8"), copy=False)
    else:
        array = array.astype(np.dtype("<f4"), copy=False)
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def numeric_batch(x, event_shape: tuple[int, int, int], values: str, items: str) -> np.ndarray:
    """``x`` as an array of a numeric (not complex) dtype and shape (N, C, H, W); DataError saying what was
    expected (``values``, ``items`` such as "images of shape (B") otherwise."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"expected {values}, got an array of dtype {x.dtype}")
    expected = tuple(int(s) for s in event_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise DataError(f"expected {items}, {', '.join(map(str, expected))}), got shape {tuple(x.shape)}")
    return x


def validate_real_images(x, event_shape: tuple[int, int, int]) -> np.ndarray:
    """Check a batch of real-valued items at the boundary -> float32 (N, C, H, W), a new array.

    DataError (one line) for a non-numeric or complex dtype, a wrong rank or shape, NaN or
    infinite values, or values float32 cannot hold.
    """
    x = numeric_batch(x, event_shape, "real values", "items of shape (N")
    with np.errstate(over="ignore"):
        values = x.astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError("values contain NaN or infinite numbers (or numbers too large for float32); "
                        "expected finite real values")
    return values


def quantize(values: np.ndarray, num_categories: int) -> np.ndarray:
    """8-bit values (any shape, 0..255) -> K equal-width bins 0..K-1, int64: floor(g * K / 256)."""
    return (values.astype(np.int64) * num_categories) // 256


def levels_to_8bit(values: np.ndarray, num_categories: int) -> np.ndarray:
    """Levels 0..K-1 (any shape) -> uint8 for pictures: round(v * 255 / (K - 1)), 0 black and K-1 full,
    moved by at most 1 where needed to stay in bin v, so ``quantize`` reads every level back exactly."""
    values = np.asarray(values, dtype=np.int64)
    linear = np.round(values * (255.0 / (num_categories - 1)))
    lowest = -((-values * 256) // num_categories)  # ceil(v * 256 / K), the bin's first value
    highest = -((-(values + 1) * 256) // num_categories) - 1
    return np.clip(linear, lowest, highest).astype(np.uint8)


def open_npz(path: str | os.PathLike, expected: str):
    """``path`` opened as an .npz archive (numpy's NpzFile, without pickle; close it, e.g. ``with``);
    DataError saying ``expected`` (e.g. "arrays train, valid and test") for anything else. A lone
    .npy file is refused before numpy reads it (numpy would allocate what its header declares)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"{path} is not a regular file; expected an .npz archive with {expected}")
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    single = magic == b"\x93NUMPY"
    if not single and not magic.startswith(b"PK"):  # numpy would try to unpickle it, and say so
        raise DataError(f"{path} is not a readable .npz archive (not a zip file); expected a zip of .npy arrays "
                        f"with {expected}")
    if not single:
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {path} as an .npz archive ({type(exc).__name__}: {exc}); expected a zip "
                            f"of .npy arrays with {expected}") from None
        if isinstance(archive, np.lib.npyio.NpzFile):
            return archive
    raise DataError(f"{path} holds a single array, not an .npz archive with {expected}")


def read_npz_member(path: str | os.PathLike, archive, name: str) -> np.ndarray:
    """Array ``name`` of the open .npz ``archive`` (``open_npz``) of ``path``, read only after the
    size its .npy header declares is checked: no more than the entry holds uncompressed, and within
    the memory available (``check_memory``, twice the array: numpy allocates it before reading)."""
    if name not in archive.files:
        raise DataError(f"{path} has no array {name!r}; it has {', '.join(archive.files) or 'none'}")
    member = name + ".npy" if name + ".npy" in archive.zip.namelist() else name
    try:
        with archive.zip.open(member) as handle:
            check_npy_header(handle, archive.zip.getinfo(member).file_size, f"{path}: array {name!r}")
        return archive[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, DensregError):  # a DataError above, or check_memory's ConfigError
            raise
        raise DataError(f"cannot read array {name!r} of {path} ({type(exc).__name__}: {exc})") from None


def check_npy_header(handle, stored: int, what: str) -> None:
    """Read an .npy header from ``handle`` and check the size it declares: no more than the ``stored``
    bytes, and within the memory available (twice the array: numpy allocates it before reading);
    refuse object arrays (pickle). DataError or ConfigError naming ``what``."""
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(handle)  # the header only
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects (pickle), which densreg never loads; save plain numbers")
    declared = math.prod(shape) * dtype.itemsize
    if declared > stored:
        raise DataError(f"{what} declares shape {shape} of {dtype} ({declared} bytes), but holds {stored} bytes; "
                        "the file is corrupt")
    check_memory(2 * declared, f"reading {what}", "use a smaller file")


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of the .npy file ``path``, read only after its header is checked (``check_npy_header``);
    never unpickled. DataError (one line naming the file) for anything else."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"{path} is not a regular file; expected an .npy array")
        with open(path, "rb") as handle:
            check_npy_header(handle, os.path.getsize(path), str(path))
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, DensregError):
            raise
        raise DataError(f"cannot read {path} as an .npy array ({type(exc).__name__}: {exc})") from None
