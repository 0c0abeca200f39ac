"""Find the external-data locations an ONNX file names, without the onnx package (torch-free).

A tensor stored outside the .onnx file names a path in ``external_data``; onnxruntime
opens that path when it creates a session. A hostile folder can point it at
``../../etc/passwd``, an absolute path, or a symlink, so the runtime reads every location
here first and accepts only plain files inside the export folder (``check_external_data``).

This walks the protobuf wire format directly: ModelProto -> graph / functions -> nodes ->
attributes -> tensors and subgraphs, at any depth.
"""

from __future__ import annotations

from pathlib import Path

from densreg.registry.errors import RuntimeLoadError

# field numbers from onnx.proto
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
FUNCTION_NODE = 7
NODE_ATTRIBUTE = 5
ATTR_TENSOR, ATTR_GRAPH, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: memoryview):
    """Yield (field number, wire type, value) of one message; value is bytes for wire type 2."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
        yield number, wire, value


def _tensor_locations(data, out: list[str]) -> None:
    for number, wire, value in fields(data):
        if number == TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in fields(value) if w == 2}
            if entry.get(ENTRY_KEY) == "location":
                out.append(entry.get(ENTRY_VALUE, ""))


def _sparse_locations(data, out):
    for number, wire, value in fields(data):
        if number in (SPARSE_VALUES, SPARSE_INDICES) and wire == 2:
            _tensor_locations(value, out)


def _node_locations(data, out):
    for number, wire, value in fields(data):
        if number != NODE_ATTRIBUTE or wire != 2:
            continue
        for n, w, v in fields(value):
            if w != 2:
                continue
            if n in (ATTR_TENSOR, ATTR_TENSORS):
                _tensor_locations(v, out)
            elif n in (ATTR_GRAPH, ATTR_GRAPHS):
                _graph_locations(v, out)
            elif n in (ATTR_SPARSE, ATTR_SPARSES):
                _sparse_locations(v, out)


def _graph_locations(data, out, node_field=GRAPH_NODE):
    for number, wire, value in fields(data):
        if wire != 2:
            continue
        if number == node_field:
            _node_locations(value, out)
        elif number == GRAPH_INITIALIZER and node_field == GRAPH_NODE:
            _tensor_locations(value, out)
        elif number == GRAPH_SPARSE_INITIALIZER and node_field == GRAPH_NODE:
            _sparse_locations(value, out)


def external_locations(model_bytes: bytes) -> list[str]:
    """Every external-data ``location`` in a serialized ModelProto (ValueError if not parseable)."""
    out: list[str] = []
    for number, wire, value in fields(memoryview(model_bytes)):
        if wire == 2 and number == MODEL_GRAPH:
            _graph_locations(value, out)
        elif wire == 2 and number == MODEL_FUNCTIONS:
            _graph_locations(value, out, node_field=FUNCTION_NODE)
    return out


def check_external_data(path: Path, allowed: set[str]) -> None:
    """Refuse ``path`` (an .onnx file) if it names external data other than plain files in its
    own folder listed in ``allowed`` (no absolute path, no '..', no subfolder, no symlink)."""
    try:
        locations = external_locations(path.read_bytes())
    except ValueError as exc:
        raise RuntimeLoadError(f"{path} is not a loadable ONNX model (truncated or corrupt?): {exc}") from exc
    folder = path.parent
    for location in sorted(set(locations)):
        target = folder / location
        inside = location and "/" not in location and "\\" not in location and location not in (".", "..")
        if not inside or location not in allowed:
            raise RuntimeLoadError(f"{path} refers to external data {location!r} outside the export's own files; "
                                   "refusing to load it")
        if target.is_symlink() or not target.is_file():
            raise RuntimeLoadError(f"{path} refers to external data {location!r}, which is not a regular file "
                                   "in the folder (a symlink?); refusing to load it")
