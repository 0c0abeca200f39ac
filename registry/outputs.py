"""Every file a command writes goes through ``writing``: the output lock of each file (locking.py,
the lock `densreg train` holds on its checkpoint, log and resume state) and a check that an
existing file is of the kind about to replace it (torch-free).

A PNG over a checkpoint, an .npz over a training log or a resume state, a CSV table over a
picture: each is refused with a DataError of one line, the file left as it is, unless
``force`` (the commands' ``--force``). An absent or empty file, or a file of the same kind, is
replaced as before. The kind of an existing file is read from its first bytes, not its name.
"""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ConfigError, DataError
from .locking import holds, output_lock

KINDS = {
    "png": "a PNG picture",
    "npz": "an .npz archive",
    "checkpoint": "a safetensors file (a checkpoint or a resume state)",
    "log": "a training log",
    "json": "a JSON document",
    "csv": "a CSV table",
    "export": "an export folder",
    "site": "a web site of `densreg web`",
    "triton": "a Triton model repository of `densreg export --triton`",
    "folder": "a folder of other files",
    "other": "a file densreg does not recognise",
}
FOLDER_KINDS = ("export", "site", "triton")  # what is written as a whole folder (atomic_write_folder)


def existing_kind(path: str | os.PathLike) -> str | None:
    """The kind (a KINDS key) of what ``path`` holds now; None when nothing is there, the file is
    empty or the folder is empty, or it is a special file (atomic.check_target refuses those)."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        if (path / "manifest.json").is_file():
            return "export"
        if (path / "site.json").is_file() and (path / "index.html").is_file():
            return "site"
        entries = list(path.iterdir())
        if entries and all((entry / "config.pbtxt").is_file() for entry in entries):
            return "triton"
        return "folder" if entries else None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return "other"
    return sniff(head)


def sniff(head: bytes) -> str | None:
    """The kind of a file that starts with ``head`` (None: empty)."""
    if not head:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32:
        return "checkpoint"  # safetensors: an 8-byte header length, then the JSON header
    if b"\0" in head:
        return "other"
    first = head.decode("utf-8", errors="replace").lstrip().split("\n", 1)[0]
    if first.startswith('{"epoch"'):
        return "log"
    if first.startswith(("{", "[")):
        return "json"
    return "csv" if "," in first else "other"


def check_replace(path: str | os.PathLike, kind: str, force: bool = False) -> None:
    """DataError when ``path`` holds something of another kind than ``kind`` (unless ``force``)."""
    found = existing_kind(path)
    if force or found is None or found == kind:
        return
    raise DataError(f"refusing to replace {path}, {KINDS[found]}, with {KINDS[kind]}; give another path "
                    "(or --force to replace it)")


@contextmanager
def writing(outputs: Iterable[tuple[str | os.PathLike | None, str]], force: bool = False) -> Iterator[None]:
    """Hold the output lock of every ``(path, kind)`` of ``outputs`` (a None path is skipped) and check
    that each replaces nothing of another kind (``check_replace``) for the ``with`` block.

    A DataError at once when another process holds one of the locks (as `densreg train` does on
    its files); a ConfigError when two outputs are the same file. A path whose lock this process
    already holds (a command that took it before calling ``fit``) is not checked again. Under torchrun
    only rank 0 (which writes) takes them.
    """
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker but rank 0: rank 0 writes, and holds the locks
        yield
        return
    outputs = [(Path(path), kind) for path, kind in outputs if path is not None]
    seen: dict[str, Path] = {}
    for path, _ in outputs:
        key = os.path.abspath(path)
        if key in seen:
            raise ConfigError(f"two outputs name the same file {path}; give each its own path")
        seen[key] = path
    with ExitStack() as stack:
        for path, kind in outputs:
            first = not holds(path)
            stack.enter_context(output_lock(path, "folder" if kind in FOLDER_KINDS else "file"))
            if first:
                check_replace(path, kind, force)
        yield
