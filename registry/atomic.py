"""Atomic writes: a file or a folder appears whole at its path, or not at all (torch-free).

Both write into a temporary sibling, fsync, then rename over the target, so an
interrupted write (even SIGKILL) leaves any previous file or folder intact. What they
create gets the permissions a plain ``open``/``mkdir`` would give (0666/0777 less the
umask), not mkstemp's private 0600. They replace only what they would create: a target
that is a symlink, a FIFO, a device or another special file, or a read-only file, is
refused with a DataError and left as it is.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_synced(path: Path, data: bytes, fd: int | None = None) -> None:
    """Write ``data`` to ``path`` (or the open descriptor ``fd``) with the umask's permissions, fsynced."""
    handle = os.fdopen(fd, "wb") if fd is not None else open(path, "wb")
    with handle:
        os.fchmod(handle.fileno(), 0o666 & ~_umask())
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def is_utf8_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is valid UTF-8 (a name the OS took as bytes that are not UTF-8 decodes to
    surrogates in Python; libraries that take UTF-8 paths, like onnxruntime, cannot open it)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_target(path: str | os.PathLike, kind: str = "file") -> None:
    """Raise DataError unless ``path`` is absent or a writable regular file (``kind="folder"``: a folder)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise DataError(f"refusing to write {path}: it is a symbolic link; give the real path")
    is_kind = stat.S_ISDIR(info.st_mode) if kind == "folder" else stat.S_ISREG(info.st_mode)
    if not is_kind:
        what = ("a folder" if stat.S_ISDIR(info.st_mode) else "a file" if stat.S_ISREG(info.st_mode)
                else "not a regular file (a FIFO, device or socket)")
        raise DataError(f"refusing to write {path}: it is {what}; expected a {kind} or nothing there")
    if not info.st_mode & 0o222:
        raise DataError(f"refusing to write {path}: it is read-only")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _write_synced(Path(tmp), data, fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_folder(folder: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Make ``folder`` hold exactly ``files`` ({file name: bytes}), replacing a previous folder whole.
    A name may be a relative path inside the folder (``"tests/test_a.py"``): its subfolders are created."""
    folder = Path(folder)
    check_target(folder, "folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        for filename, data in files.items():
            (tmp / filename).parent.mkdir(parents=True, exist_ok=True)  # the umask's permissions
            _write_synced(tmp / filename, data)
        if folder.is_dir():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
