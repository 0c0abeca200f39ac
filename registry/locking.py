"""One writer per output: an exclusive, non-blocking lock beside the file a run writes (torch-free).

``output_lock(path)`` holds ``fcntl.flock`` on the sibling ``.NAME.lock`` for as long as the
``with`` block runs; a second process asking for the same output gets a DataError at once
(one line, naming the holder's pid). The kernel drops the lock when its holder dies, even
by SIGKILL, so a killed run never leaves a stale lock behind. Readers take no lock: every
file is replaced by an atomic rename (atomic.py), so they see the old file or the new one.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .atomic import check_target
from .errors import DataError


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _acquire(lock: Path, path: Path) -> int:
    """Open and flock ``lock``; retry when another holder unlinked it between our open and our flock."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise DataError(f"another densreg process{_holder(lock)} is writing {path}; wait for it to finish "
                                "or choose another output") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


_HELD: set[Path] = set()  # locks this process holds (re-entering one is a no-op)


def holds(path: str | os.PathLike) -> bool:
    """Whether this process already holds the output lock of ``path``."""
    return lock_path(path).resolve() in _HELD


@contextmanager
def output_lock(path: str | os.PathLike, kind: str = "file") -> Iterator[Path]:
    """Hold the exclusive lock of output ``path`` (a DataError if another process holds it).

    Yields ``path``. Re-entrant within a process. The output itself must be absent or a
    writable regular file (``kind="folder"``: a folder; atomic.check_target). The lock file
    holds the holder's pid and is removed on release.
    """
    path = Path(path)
    lock = lock_path(path)
    key = lock.resolve()
    if key in _HELD:
        yield path
        return
    check_target(path, kind)
    check_target(lock)  # a symlink or FIFO planted as the lock file is refused, not followed
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(lock, path)
    except OSError as exc:
        raise DataError(f"cannot lock {path} for writing ({lock}): {exc.strerror or exc}") from exc
    _HELD.add(key)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        _HELD.discard(key)
        lock.unlink(missing_ok=True)  # before unlocking, so a waiter that opened it retries (see _acquire)
        os.close(fd)


def remove_orphans(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted atomic write of ``path`` left (``.NAME.*.tmp``).

    Call it only while holding ``output_lock(path)``: then no live writer owns them.
    Returns the removed paths.
    """
    path = Path(path)
    removed = []
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if orphan.is_file() and not orphan.is_symlink():
            orphan.unlink(missing_ok=True)
            removed.append(orphan)
    return removed

