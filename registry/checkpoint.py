"""Checkpoints: one .safetensors file, tensors plus string metadata. No pickle anywhere.

Metadata keys (all strings): ``format`` (FORMAT), ``model`` (registry name),
``config`` (JSON), ``event_shape`` (JSON), ``num_categories``, ``ordering``,
``densreg_version`` (the keys every saved model has, see saved.py), ``metrics`` (JSON),
``extra`` (JSON, free-form), ``transform`` (JSON, only for a model trained on the user's own files:
registry/transforms.py) and ``content_sha256`` (``content_hash``: the model's keys and
weights, verified on load; files without it, written before it existed, still load).

Loading is bounded: the header is read and checked before anything else (``read_header``),
and only tensors whose names and shapes the rebuilt model expects are read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save as save_bytes

from .api import create_model, describe_model, model_spec
from .atomic import atomic_write_bytes
from .errors import CheckpointError, ConfigError, UnknownNameError
from .limits import check_memory
from .plugin_manager import left_out_note
from .saved import SavedModelInfo, parse_json

FORMAT = "densreg-checkpoint/1"


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write a safetensors file (tensors made contiguous and unshared)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save_bytes(plain, metadata=metadata))


HASH_KEY = "content_sha256"


def content_hash(metadata: dict[str, str], weights: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of a checkpoint's model description and weights.

    Covers the metadata strings of SavedModelInfo.KEYS (model, config, event_shape,
    num_categories, ordering) and ``plugin``, ``transform`` where there is one, and, in name order, each weight's name, dtype,
    shape and bytes.
    """
    digest = hashlib.sha256()
    for key in (*SavedModelInfo.KEYS, "plugin", *(("transform",) if "transform" in metadata else ())):
        digest.update(f"{key}={metadata.get(key, '')}\0".encode("utf-8", "surrogatepass"))
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}\0".encode("utf-8", "surrogatepass"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def verify_hash(path, metadata: dict[str, str], weights: dict[str, torch.Tensor]) -> None:
    """CheckpointError when ``metadata`` has a content hash that ``weights`` and the config do not match.

    Files written before hashes existed (no ``content_sha256``) pass.
    """
    stored = metadata.get(HASH_KEY)
    if stored is None:
        return
    actual = content_hash(metadata, weights)
    if actual != stored:
        raise CheckpointError(f"{path} was changed after densreg wrote it: its config or weights do not match the "
                              f"content hash stored with them (sha256 {actual[:12]}…, stored {stored[:12]}…); "
                              "use the original file or retrain")


def save_checkpoint(path, model, name: str, metrics: dict | None = None, extra: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None, transform: dict | None = None) -> None:
    """Write ``model`` (registered as ``name``) to ``path`` atomically. ``transform``: the preprocessing
    of the user's own data (registry.transforms.Transform.to_dict()), recorded and content-hashed."""
    info = describe_model(model, name)
    metadata = {"format": FORMAT, **info.model_metadata(), "metrics": json.dumps(metrics or {}),
                "extra": json.dumps(extra or {}), **({"transform": json.dumps(transform)} if transform else {})}
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    metadata[HASH_KEY] = content_hash(metadata, tensors)
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    save_tensors(path, tensors, metadata)


def record_metrics(path, more: dict) -> None:
    """Add ``more`` to the metrics of the checkpoint ``path`` (e.g. its test NLL, measured after training),
    rewriting it atomically; weights, the model's keys and the content hash stay as they are."""
    tensors, metadata = read_tensors(path)
    metrics = parse_json(metadata.get("metrics", "{}"), "metrics")
    metadata["metrics"] = json.dumps({**(metrics if isinstance(metrics, dict) else {}), **more})
    save_tensors(path, tensors, metadata)


# bytes per element of each safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit


class TensorEntry(NamedTuple):
    """One tensor of a safetensors header: dtype name, shape, byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def unreadable(path, exc: OSError) -> CheckpointError:
    """The error for a checkpoint the system refuses to stat, open or read: the system's reason."""
    return CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}")


def read_header(path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensor table {name: TensorEntry} and string metadata of a safetensors file.

    Reads only the header (at most 8 bytes + 100 MiB, whatever the file's size) and checks
    every entry (known dtype, non-negative shape, byte range inside the file and of the
    size its shape needs), so nothing is allocated from an unchecked size.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"no such checkpoint file: {path}") from None
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise CheckpointError(f"{path} is {what}; expected a .safetensors checkpoint file")

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {why}")

    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise corrupt(f"it has {len(head)} bytes, fewer than the 8 of a header length")
            length = int.from_bytes(head, "little")
            if length > min(MAX_HEADER_BYTES, info.st_size - 8):
                raise corrupt(f"its header claims {length} bytes, but the file has {info.st_size - 8} after the "
                              f"length (and headers are at most {MAX_HEADER_BYTES})")
            raw = handle.read(length)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    try:
        header = parse_json(raw.decode("utf-8"), "its header")
    except ValueError as exc:  # UnicodeDecodeError included
        raise corrupt(str(exc)) from None
    if not isinstance(header, dict):
        raise corrupt("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("its __metadata__ is not an object of strings")
    data_bytes = info.st_size - 8 - length
    table = {}
    for name, entry in header.items():
        table[name] = _check_entry(name, entry, data_bytes, 8 + length, corrupt)
    return table, metadata


def _check_entry(name: str, entry, data_bytes: int, data_start: int, corrupt) -> TensorEntry:
    """One header entry -> TensorEntry, or the ``corrupt`` error saying what is wrong with it."""
    if not isinstance(entry, dict):
        raise corrupt(f"tensor {name!r} has no dtype/shape/data_offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise corrupt(f"tensor {name!r} has dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in shape):
        raise corrupt(f"tensor {name!r} has shape {shape!r}; expected a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
        raise corrupt(f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end] within the "
                      f"{data_bytes} data bytes")
    need = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != need:
        raise corrupt(f"tensor {name!r} of shape {shape} {dtype} needs {need} bytes, its data_offsets give "
                      f"{offsets[1] - offsets[0]}")
    return TensorEntry(dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def read_tensors(path, names=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the tensors ``names`` (default all) and the metadata of a safetensors file, with clear errors.

    The header is checked first (``read_header``); then only the named tensors are read,
    each from its own byte range, after checking that they fit in the memory available
    (limits.check_memory). Plain Python file reads: any file name the OS accepts works.
    """
    table, metadata = read_header(path)
    names = list(table) if names is None else list(names)
    missing = [n for n in names if n not in table]
    if missing:
        raise CheckpointError(f"{path} lacks the tensors {', '.join(missing)}")
    need = sum(table[n].nbytes for n in names)
    check_memory(2 * need, f"loading the {len(names)} tensors of {path}", "use a machine with more memory")
    tensors = {}
    try:
        with open(path, "rb") as handle:
            for name in names:
                entry = table[name]
                handle.seek(entry.begin)
                data = bytearray(handle.read(entry.nbytes))
                if len(data) != entry.nbytes:
                    raise CheckpointError(f"{path} is truncated: tensor {name!r} ends past the end of the file")
                tensors[name] = _tensor(data, entry)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    return tensors, metadata


TORCH_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
                "F8_E4M3": torch.float8_e4m3fn, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
                "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
                "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64}


def _tensor(data: bytearray, entry: TensorEntry) -> torch.Tensor:
    """Little-endian bytes (safetensors' byte order) -> a tensor of the entry's dtype and shape."""
    dtype = TORCH_DTYPES[entry.dtype]
    if not data:
        return torch.empty(entry.shape, dtype=dtype)
    flat = torch.frombuffer(data, dtype=dtype)
    if sys.byteorder == "big" and flat.element_size() > 1:  # reverse each element's bytes (numpy has no bf16, f8)
        flat = flat.view(torch.uint8).reshape(-1, flat.element_size()).flip(1).reshape(-1).view(dtype)
    return flat.reshape(entry.shape)


def check_weights(path, table: dict[str, TensorEntry], model, name: str) -> list[str]:
    """The names of ``model``'s weights in ``table`` (``model.``-prefixed), after checking that
    they are exactly the model's, with its shapes (a CheckpointError naming the differences)."""
    expected = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    stored = {k: entry.shape for k, entry in table.items() if k.startswith("model.")}
    problems = [f"missing {k}" for k in expected if k not in stored]
    problems += [f"unexpected {k}" for k in stored if k not in expected]
    problems += [f"{k} has shape {list(stored[k])}, expected {list(shape)}" for k, shape in expected.items()
                 if k in stored and stored[k] != shape]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{path}: weights do not match model {name!r}: {shown}")
    return list(expected)


def parse_info(path, metadata: dict[str, str]) -> SavedModelInfo:
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a densreg checkpoint "
                              f"(metadata format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        more = {key: parse_json(metadata.get(key, "{}"), key) for key in ("metrics", "extra")}
        for key, value in more.items():
            if not isinstance(value, dict):
                raise ValueError(f"{key} is {type(value).__name__}, expected a JSON object")
        return SavedModelInfo.from_metadata(metadata, **more)
    except KeyError as exc:
        raise CheckpointError(f"{path}: densreg checkpoint metadata lacks the key {exc.args[0]!r}; expected "
                              f"{', '.join(SavedModelInfo.KEYS)}") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: densreg checkpoint metadata is invalid: {exc}") from exc


def saved_model_name(path, info: SavedModelInfo) -> str:
    """The registry name that rebuilds the model saved at ``path``: its qualified name when the file
    records its plugin, else the bare name (built-ins win a clash). CheckpointError, naming the
    distribution to install, when that plugin is not installed."""

    try:
        model_spec(info.qualified_name)
        return info.qualified_name
    except UnknownNameError as exc:
        if not info.plugin:
            raise CheckpointError(f"{path}: cannot rebuild model {info.model!r}: {exc}") from exc
    try:  # the plugin was renamed, but its distribution still registers the model
        spec = model_spec(info.model)
        if info.distribution and spec.distribution == info.distribution:
            return spec.qualified_name
    except UnknownNameError:
        pass
    dist = info.distribution
    filtered = left_out_note(info.plugin, dist if dist != "in-process" else "")
    if filtered:  # installed, but DENSREG_LOAD_PLUGINS leaves it out
        raise CheckpointError(f"{path} holds model {info.model!r} of {info.provenance}, which is not loaded"
                              + filtered)
    hint = f"pip install {dist}" if dist and dist != "in-process" else "register that plugin first"
    raise CheckpointError(f"{path} holds model {info.model!r} of {info.provenance}, which is not installed "
                          f"here: {hint}")


def load_checkpoint(path, device: str | torch.device = "cpu"):
    """Rebuild the model saved at ``path`` through the registry; returns (model, SavedModelInfo).

    Bounded: the header is read and checked first, the model is built from its checked
    description, and only weights whose names and shapes match that model are read.
    """

    table, metadata = read_header(path)
    info = parse_info(path, metadata)
    config = {k: v for k, v in info.config.items() if k not in ("event_shape", "num_categories")}
    name = saved_model_name(path, info)
    try:
        model = create_model(name, event_shape=info.event_shape, num_categories=info.num_categories, **config)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the saved config does not fit model {info.model!r} as installed: {exc}") from exc
    names = check_weights(path, table, model, info.model)
    tensors, _ = read_tensors(path, names)
    verify_hash(path, metadata, tensors)
    broken = [k for k, v in tensors.items() if v.is_floating_point() and bool(torch.isnan(v).any())]
    if broken:
        raise CheckpointError(f"{path} holds NaN weights ({', '.join(broken[:3])}); expected finite values "
                              "(a diverged or damaged model)")
    state = {k[len("model."):]: v for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match model {info.model!r}: {exc}") from exc
    model.eval()
    return model.to(device), info
