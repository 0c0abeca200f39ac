"""The cost of opening an export folder: ``ExportedModel(folder)`` with every check, against the same
open with the checks of format 3 skipped (each graph's manifest_sha256, the golden batch), in one run.

    python benchmarks/export_open.py EXPORT_DIR... [--repeat 15] [--out benchmarks/results/export_open.md]

Per folder: the median seconds of ``read_verified`` alone (the manifest and a sha256 of every file,
as format 2 did), of an open without the format-3 checks, of a full open, and what the checks add
(the difference of the medians, and as a share of the full open). Opens alternate, one thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from densreg.export import manifest as manifest_file  # noqa: E402
from densreg.export.runtime import ExportedModel  # noqa: E402


@contextmanager
def without_checks():
    """The manifest binding and the golden check skipped (what an open cost before format 3)."""
    binding, golden = manifest_file.check_binding, ExportedModel._check_golden
    manifest_file.check_binding = lambda *args: None
    ExportedModel._check_golden = lambda self: None
    try:
        yield
    finally:
        manifest_file.check_binding, ExportedModel._check_golden = binding, golden


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(folder: Path, repeat: int) -> dict:
    ExportedModel(folder, provider="cpu")  # warm the file cache and onnxruntime
    hashes, bare, full = [], [], []
    for _ in range(repeat):
        hashes.append(timed(lambda: manifest_file.read_verified(folder)))
        with without_checks():
            bare.append(timed(lambda: ExportedModel(folder, provider="cpu")))
        full.append(timed(lambda: ExportedModel(folder, provider="cpu")))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"folder": folder.name, "bytes": size, "hashes": statistics.median(hashes),
            "bare": statistics.median(bare), "full": statistics.median(full)}


def table(rows: list[dict], repeat: int) -> str:
    lines = [
        "# Opening an export folder: the cost of format 3's checks",
        "",
        f"Written by `benchmarks/export_open.py` ({platform.machine()}, {os.cpu_count()} CPUs, 1 thread, CPU "
        f"provider; median of {repeat} opens each, alternating; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "\"hashes\": the manifest read and every file's sha256 (what format 2 checked); \"without\": "
        "`ExportedModel(folder)` with the manifest binding and golden check skipped; \"full\": with them.",
        "",
        "| folder | size | hashes | open without | full open | the checks add |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        added = r["full"] - r["bare"]
        lines.append(f"| {r['folder']} | {r['bytes'] / 1e6:.2f} MB | {r['hashes'] * 1e3:.1f} ms | "
                     f"{r['bare'] * 1e3:.1f} ms | {r['full'] * 1e3:.1f} ms | {added * 1e3:.1f} ms "
                     f"({added / r['full']:.0%}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    text = table([measure(folder, args.repeat) for folder in args.folders], args.repeat)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
