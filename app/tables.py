"""Tables a user brings: CSV (header optional, columns selectable), .npy, Parquet -> rows of real
values, every row checked (torch-free: numpy, and pyarrow for Parquet when installed).

A CSV's first line is its header when any of its fields is not a number. A row with a missing,
non-numeric, NaN or infinite value is refused with its line number (CSV; row number for .npy and
Parquet), or left out with ``drop_invalid`` (the count is returned).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from densreg.registry.datasets import read_npy
from densreg.registry.errors import DataError
from densreg.registry.limits import check_memory

TABLE_SUFFIXES = (".csv", ".npy", ".parquet")
SHOWN_LINES = 5  # line numbers a refusal lists


class Table:
    """Rows (N, D) float64, ``columns`` (D names), ``names`` ("line 7" per row, as read) and how many
    rows were ``dropped`` as invalid."""

    def __init__(self, rows: np.ndarray, columns: list[str], names: list[str], dropped: int = 0):
        self.rows, self.columns, self.names, self.dropped = rows, columns, names, dropped


def read_table(path, columns: list[str] | None = None, drop_invalid: bool = False) -> Table:
    """``path`` (.csv, .npy, .parquet) -> Table. ``columns``: names to keep, in this order (a CSV
    without a header names its columns 1, 2, ...; an .npy's are c1, c2, ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such table file: {path}")
    suffix = path.suffix.lower()
    check_memory(os.path.getsize(path) * 8, f"reading {path}", "use a smaller table")
    if suffix == ".npy":
        array = read_npy(path)
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise DataError(f"{path}: expected a 2-D array of numbers (rows x columns), got {array.dtype} {array.shape}")
        header, cells, where = [f"c{i + 1}" for i in range(array.shape[1])], array.astype(np.float64), "row"
        lines = list(range(1, len(array) + 1))
    elif suffix == ".parquet":
        header, cells, lines = _parquet(path)
        where = "row"
    elif suffix == ".csv":
        header, cells, lines = _csv(path)
        where = "line"
    else:
        raise DataError(f"{path}: expected a table (.csv, .npy or .parquet)")
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path} has no column {missing[0]!r}; its columns: {', '.join(header)}")
        cells = cells[:, [header.index(c) for c in columns]]
        header = list(columns)
    valid = np.isfinite(cells).all(axis=1)
    bad = [lines[i] for i in np.flatnonzero(~valid)]
    if bad and not drop_invalid:
        shown = ", ".join(map(str, bad[:SHOWN_LINES])) + (f" and {len(bad) - SHOWN_LINES} more" if len(bad) > SHOWN_LINES else "")
        raise DataError(f"{path}: {len(bad)} {where}{'s' if len(bad) > 1 else ''} with missing, non-numeric or "
                        f"non-finite values ({where} {shown}); fix them or pass --drop-invalid")
    rows = cells[valid]
    if not len(rows):
        raise DataError(f"{path} holds no valid rows")
    return Table(rows, header, [f"{where} {lines[i]}" for i in np.flatnonzero(valid)], len(bad))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _csv(path: Path) -> tuple[list[str], np.ndarray, list[int]]:
    """(header, cells float64 (N, D) with NaN where a value is not a finite number, line numbers)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as a UTF-8 CSV file: {exc}") from None
    try:
        records = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text)), start=1) if row]
    except csv.Error as exc:
        raise DataError(f"{path} is not a valid CSV file: {exc}") from None
    if not records:
        raise DataError(f"{path} is empty; expected rows of numbers")
    first = records[0][1]
    has_header = any(field.strip() and math.isnan(_number(field)) and field.strip().lower() != "nan"
                     for field in first)
    header = [f.strip() for f in first] if has_header else [str(i + 1) for i in range(len(first))]
    if has_header:
        records = records[1:]
    width = len(header)
    cells = np.full((len(records), width), np.nan)
    for i, (_, row) in enumerate(records):
        if len(row) == width:
            cells[i] = [_number(field) for field in row]
    return header, cells, [number for number, _ in records]


def _parquet(path: Path) -> tuple[list[str], np.ndarray, list[int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'densreg[parquet]')") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors are many; one line names the file
        raise DataError(f"cannot read {path} as Parquet: {type(exc).__name__}: {exc}") from None
    columns = []
    for name in table.column_names:
        try:
            columns.append(np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64))
        except (TypeError, ValueError):
            raise DataError(f"{path}: column {name!r} does not hold numbers") from None
    cells = np.stack(columns, axis=1) if columns else np.zeros((table.num_rows, 0))
    return list(table.column_names), cells, list(range(1, table.num_rows + 1))
