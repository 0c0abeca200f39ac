"""manifest.json: what an export folder holds and means, and the check that it is intact (torch-free).

The exporter writes it last (``build``); the runtime reads it first (``read_verified``): the
format, then a sha256 of every file it lists, so a folder that mixes files of two exports,
or whose files were edited, truncated, replaced by symlinks or special files, is refused
with one line before onnxruntime opens anything.

The manifest is bound to its graphs the other way too: each graph of a format-3 folder carries
``manifest_sha256`` (``binding_digest``: the manifest less the graphs' own digests), so a manifest
edited and re-hashed (another ``order``, initial state, weights.bin digest) no longer matches its
graphs; the runtime compares them when it opens a graph (``check_binding``). Last, the folder's
conditionals.onnx must reproduce golden.json's log_prob (``check_golden``), so weights edited with a
forged manifest and re-stamped graphs are refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np

from densreg.registry.errors import RuntimeLoadError

from . import format as fmt
from . import legacy

MAX_MANIFEST_BYTES = 64 << 20
CHUNK = 1 << 20


def file_digest(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


BINDING_KEY = "manifest_sha256"  # the graphs' metadata_props key


def assemble(description: dict, files: dict[str, bytes]) -> dict:
    """The manifest: ``description`` (everything but the files) plus a digest of each of ``files``."""
    return {"format": fmt.FORMAT, **description,
            "files": {name: file_digest(data) for name, data in sorted(files.items())}}


def encode(manifest: dict) -> bytes:
    """manifest.json's bytes; ValueError for a NaN or infinity (not JSON)."""
    return (json.dumps(manifest, indent=1, allow_nan=False) + "\n").encode()


def binding_digest(manifest: dict) -> str:
    """The sha256 each graph carries as ``manifest_sha256``: of the manifest's canonical JSON (keys sorted, no
    spaces, ASCII) with the ``.onnx`` entries of ``files`` left out (those hold the graphs' own digests)."""
    files = manifest.get("files") or {}
    bound = {**manifest, "files": {n: d for n, d in files.items() if not str(n).endswith(".onnx")}}
    text = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_binding(folder: Path, manifest: dict, graph: str, metadata: dict[str, str]) -> None:
    """RuntimeLoadError unless the graph ``graph``'s metadata names this manifest (formats in ``fmt.BOUND``;
    older formats carry no binding)."""
    if manifest.get("format") not in fmt.BOUND:
        return
    carried, expected = metadata.get(BINDING_KEY), binding_digest(manifest)
    if carried != expected:
        raise RuntimeLoadError(f"{folder / fmt.MANIFEST} is not the manifest {graph} was exported with (its digest "
                               f"{expected[:12]}... differs from the graph's {str(carried)[:12]}...): manifest.json "
                               "was edited (order, state, file digests, ...); re-export the model")


def transform_entry(source) -> dict | None:
    """The manifest's ``transform`` key: the preprocessing the source checkpoint records for a model
    trained on the user's own files (registry/transforms.py, with the training data's sha256), else None.
    The runtime applies it to raw files as the checkpoint does."""
    return getattr(source, "transform", None)


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


def inside(name) -> bool:
    """Whether a manifest's file name is a file of the folder itself, or of its test-data subfolder."""
    if not isinstance(name, str) or name == fmt.MANIFEST:
        return False
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == fmt.TEST_DATA:
        parts = parts[1:]
    return len(parts) == 1 and os.path.basename(parts[0]) == parts[0] and parts[0] not in ("", ".", "..")


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
    if kind not in fmt.READABLE:
        raise RuntimeLoadError(fmt.unreadable(folder, kind))
    for name in fmt.required_graphs(fmt.family_of(manifest), manifest):
        if name not in files:
            raise RuntimeLoadError(f"{path} does not list {name}; not a complete densreg export")
    for name, digest in files.items():
        if not inside(name):
            raise RuntimeLoadError(f"{path} lists {name!r}, which is not a file of the folder itself")
        file = folder / name
        sub = folder / fmt.TEST_DATA
        if "/" in name and (sub.is_symlink() or not sub.is_dir()):
            raise RuntimeLoadError(f"{sub} is missing or not a plain folder (a symlink or special file); refusing "
                                   "to load the export")
        size = _regular_file(file, folder).st_size
        if size != digest.get("bytes") or _sha256(file) != digest.get("sha256"):
            raise RuntimeLoadError(f"{file} does not match the manifest (size or sha256 differs): the folder mixes "
                                   f"files of different exports or was modified; re-export it")
    return manifest


def check_golden(folder: Path, manifest: dict, conditionals, dtype, name: str) -> None:
    """RuntimeLoadError unless the ``conditionals`` session (onnxruntime) gives golden.json's log_prob for its
    finite images (``dtype``: the family's numpy dtype) within ``log_prob_atol`` (100 times it for float16
    weights): the weights are the ones the export was checked with. A folder without golden.json passes."""
    if fmt.GOLDEN not in (manifest.get("files") or {}):
        return
    try:
        golden = json.loads((folder / fmt.GOLDEN).read_bytes())
        images = np.asarray(golden["images"], dtype=dtype)
        expected = np.asarray(golden["log_prob"], dtype=np.float64)
        tolerance = float(golden["log_prob_atol"]) * (1 if manifest.get("dtype") != "float16" else 100)
        finite = np.isfinite(images.reshape(len(images), -1)).all(-1) & np.isfinite(expected)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise RuntimeLoadError(f"{folder / fmt.GOLDEN} is not valid golden vectors: {type(exc).__name__}: "
                               f"{str(exc)[:80]}") from exc
    if not finite.any():
        return
    try:
        log_prob = conditionals.run(["log_prob"], {"images": images[finite]})[0].astype(np.float64)
        diff = float(np.abs(log_prob - expected[finite]).max())
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for inputs it refuses
        raise RuntimeLoadError(f"{folder / fmt.GOLDEN}: conditionals.onnx cannot score its images "
                               f"({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:120]})") from exc
    if not diff <= tolerance:
        raise RuntimeLoadError(f"{folder}: conditionals.onnx of the export {name!r} does not reproduce golden.json "
                               f"(log_prob differs by {diff:.3g} nats, tolerance {tolerance:g}): the weights or golden "
                               "vectors were modified; re-export the model")
