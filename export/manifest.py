"""manifest.json: what an export folder holds and means, and the check that it is intact (torch-free).

The exporter writes it last (``build``); the runtime reads it first (``read_verified``): the
format, then a sha256 of every file it lists, so a folder that mixes files of two exports,
or whose files were edited, truncated, replaced by symlinks or special files, is refused
with one line before onnxruntime opens anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from densreg.registry.errors import RuntimeLoadError

from . import format as fmt
from . import legacy

MAX_MANIFEST_BYTES = 64 << 20
CHUNK = 1 << 20


def file_digest(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def build(description: dict, files: dict[str, bytes]) -> bytes:
    """The manifest: ``description`` (everything but the files) plus a digest of each of ``files``."""
    manifest = {"format": fmt.FORMAT, **description,
                "files": {name: file_digest(data) for name, data in sorted(files.items())}}
    return (json.dumps(manifest, indent=1) + "\n").encode()


def _regular_file(path: Path, folder: Path) -> os.stat_result:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise RuntimeLoadError(f"{folder} is not a complete densreg export: {path.name} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise RuntimeLoadError(f"{path} is not a regular file (a symlink, folder or special file); refusing to load "
                               "the export")
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(folder: Path) -> dict:
    """The parsed manifest of ``folder`` after checking every listed file's size and sha256 (for a
    folder of format 1, which has no manifest, the one ``legacy`` builds from its metadata)."""
    path = folder / fmt.MANIFEST
    if not os.path.lexists(path):
        older = legacy.manifest_of(folder)  # a format-1 folder: loads, unverified (it has no digests)
        if older is not None:
            return older
    if _regular_file(path, folder).st_size > MAX_MANIFEST_BYTES:
        raise RuntimeLoadError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB; not a densreg manifest")
    try:
        manifest = json.loads(path.read_bytes())
        files = manifest["files"]
        kind = manifest["format"]
        if not isinstance(files, dict) or not all(isinstance(d, dict) for d in files.values()):
            raise ValueError("'files' is not an object of {name: {sha256, bytes}}")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise RuntimeLoadError(f"{path} is not a valid densreg manifest: {type(exc).__name__}: {exc}") from exc
    if kind != fmt.FORMAT:
        raise RuntimeLoadError(f"{folder} is not a densreg export of this version (manifest format {kind!r}, "
                               f"expected {fmt.FORMAT!r}); re-export it")
    for name in fmt.required_graphs(fmt.family_of(manifest), manifest):
        if name not in files:
            raise RuntimeLoadError(f"{path} does not list {name}; not a complete densreg export")
    for name, digest in files.items():
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", "..", fmt.MANIFEST):
            raise RuntimeLoadError(f"{path} lists {name!r}, which is not a file of the folder itself")
        file = folder / name
        size = _regular_file(file, folder).st_size
        if size != digest.get("bytes") or _sha256(file) != digest.get("sha256"):
            raise RuntimeLoadError(f"{file} does not match the manifest (size or sha256 differs): the folder mixes "
                                   f"files of different exports or was modified; re-export it")
    return manifest
