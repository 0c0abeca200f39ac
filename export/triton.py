"""A Triton Inference Server model repository from an export folder (``densreg export --triton DIR``).

One model per graph, named ``<export name>-<graph>`` (e.g. ``nade-conditionals``)::

    DIR/nade-conditionals/config.pbtxt
    DIR/nade-conditionals/1/model.onnx     (and weights.bin, the external data it names)

Each config is derived from the ONNX graph's own inputs and outputs (``model_config``): a graph
whose every input and output has a symbolic axis 0 (the batch) gets ``max_batch_size`` and
``dynamic_batching``, its dims being the rest of each shape (-1 for a symbolic axis); a graph with an
input or output without the batch on axis 0 (format 2's step.onnx: a scalar position, a state
batched on axis 1) is served unbatched (``max_batch_size: 0``, full shapes, a scalar as dims [1]
reshaped to []), and the report names the tensor. Step models are stateless on the server: the
client sends the position and the state with every request and gets the new state back; a format-3 step
model keeps the batch axis (``max_batch_size``) but not the dynamic batcher, since the step graph runs all
rows of a request at one position (a batcher joining requests at different steps would get NaN back).

``SCHEMA`` is the part of Triton's ``inference.ModelConfig`` (model_config.proto, field numbers and
types as there) that these configs use; ``parse`` reads a config.pbtxt with protobuf's text_format
against it, so a misspelt field or a wrong type fails here as it would in the server. No torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from densreg.registry.atomic import atomic_write_folder, check_target
from densreg.registry.errors import ExportError

from . import format as fmt

MAX_BATCH_SIZE = 1024  # the largest batch the dynamic batcher forms (a config's max_batch_size)
QUEUE_DELAY_US = 100  # how long the batcher waits to fill a batch, microseconds
VERSION = "1"
DATA_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64",
              onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT64: "TYPE_INT64",
              onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.BOOL: "TYPE_BOOL",
              onnx.TensorProto.UINT8: "TYPE_UINT8"}
# Triton's inference.DataType, and the messages used here: {message: [(field, number, type, label, type_name)]}
ENUM_VALUES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
               "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
               "TYPE_BF16"]
_F = descriptor_pb2.FieldDescriptorProto
SCHEMA = {
    "ModelTensorReshape": [("shape", 1, _F.TYPE_INT64, _F.LABEL_REPEATED, None)],
    "ModelInput": [("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                   ("data_type", 2, _F.TYPE_ENUM, _F.LABEL_OPTIONAL, ".inference.DataType"),
                   ("dims", 4, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
                   ("reshape", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".inference.ModelTensorReshape"),
                   ("optional", 8, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None)],
    "ModelOutput": [("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("data_type", 2, _F.TYPE_ENUM, _F.LABEL_OPTIONAL, ".inference.DataType"),
                    ("dims", 3, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
                    ("reshape", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".inference.ModelTensorReshape")],
    "ModelDynamicBatching": [("preferred_batch_size", 1, _F.TYPE_INT32, _F.LABEL_REPEATED, None),
                             ("max_queue_delay_microseconds", 2, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, None),
                             ("preserve_ordering", 3, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None)],
    "ModelConfig": [("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("platform", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("max_batch_size", 4, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
                    ("input", 5, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".inference.ModelInput"),
                    ("output", 6, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".inference.ModelOutput"),
                    ("default_model_filename", 8, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("dynamic_batching", 11, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".inference.ModelDynamicBatching"),
                    ("backend", 17, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None)],
}
_CLASS = None


def config_class():
    """The message class of ``inference.ModelConfig`` as ``SCHEMA`` states it."""
    global _CLASS
    if _CLASS is None:
        file = descriptor_pb2.FileDescriptorProto(name="densreg_triton_model_config.proto", package="inference",
                                                  syntax="proto3")
        file.enum_type.add(name="DataType").value.extend(
            descriptor_pb2.EnumValueDescriptorProto(name=n, number=i) for i, n in enumerate(ENUM_VALUES))
        for message, fields in SCHEMA.items():
            proto = file.message_type.add(name=message)
            for name, number, kind, label, type_name in fields:
                proto.field.add(name=name, number=number, type=kind, label=label,
                                **({"type_name": type_name} if type_name else {}))
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        _CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))
    return _CLASS


def parse(text: str):
    """A config.pbtxt parsed against ``SCHEMA`` (google.protobuf.text_format.ParseError when it does not fit)."""
    return text_format.Parse(text, config_class()())


def _shape(value: onnx.ValueInfoProto) -> list:
    """The tensor's shape: ints, or None for a symbolic axis."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def model_config(model_name: str, proto: onnx.ModelProto, one_position: bool = False) -> tuple[str, str | None]:
    """config.pbtxt text for a graph, and why it has no dynamic batching (None when it has). ``one_position``:
    the graph serves a batch whose rows share one step (step.onnx runs every row at ``position[0]``), so it
    keeps the batch axis (``max_batch_size``: a client sends the rows of one step together) without the
    dynamic batcher, which would join requests at different steps."""
    tensors = [("input", v) for v in proto.graph.input] + [("output", v) for v in proto.graph.output]
    unbatched = next((f"{kind} {v.name!r} has no batch axis 0" for kind, v in tensors
                      if not _shape(v) or _shape(v)[0] is not None), None)
    config = config_class()(name=model_name, backend="onnxruntime", platform="onnxruntime_onnx",
                            max_batch_size=0 if unbatched else MAX_BATCH_SIZE, default_model_filename="model.onnx")
    for kind, value in tensors:
        elem = value.type.tensor_type.elem_type
        if elem not in DATA_TYPES:
            raise ExportError(f"{model_name}: {kind} {value.name!r} has ONNX type {elem}, which has no Triton type here")
        shape = _shape(value) if unbatched else _shape(value)[1:]
        dims = [-1 if d is None else d for d in shape]
        entry = getattr(config, kind).add(name=value.name, data_type=DATA_TYPES[elem], dims=dims or [1])
        if not dims:  # a scalar: Triton needs dims, the graph takes shape []
            entry.reshape.SetInParent()
    if not unbatched and one_position:
        unbatched = ("its rows run at one position (position[0]): the dynamic batcher would join requests at "
                     "different steps; send the rows of one step in one request")
    elif not unbatched:
        config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    text = text_format.MessageToString(config)
    note = f"# no dynamic batching: {unbatched}\n" if unbatched else ""
    return note + text, unbatched


def model_prefix(manifest: dict) -> str:
    """The repository's model name prefix: the export's model name, in Triton-safe characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(manifest["model"]["name"])).strip("-.") or "model"


def write_repository(folder, target, manifest: dict) -> dict:
    """Write the Triton repository of the verified export ``folder`` (its ``manifest``) to ``target``, whole or
    not at all; ``target`` must be new, empty or a repository written before. Returns {model name:
    {"graph", "batched", "reason"}}."""
    folder, target = Path(folder), Path(target)
    check_target(target, "folder")
    if target.is_dir() and any(not (target / name / "config.pbtxt").is_file() for name in os.listdir(target)):
        raise ExportError(f"cannot write a Triton repository to {target}: the folder holds other files; choose an "
                          "empty or new folder")
    prefix, files, report = model_prefix(manifest), {}, {}
    for graph in (g for g in (*fmt.GRAPHS, fmt.FEATURES) if g in manifest["files"]):
        data = (folder / graph).read_bytes()
        proto = onnx.load_from_string(data)  # external data stays referenced, not read
        name = f"{prefix}-{graph.removesuffix('.onnx')}"
        text, reason = model_config(name, proto, one_position=graph == fmt.STEP)
        parse(text)  # what the server would read
        files[f"{name}/config.pbtxt"] = text.encode()
        files[f"{name}/{VERSION}/model.onnx"] = data
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            files[f"{name}/{VERSION}/{fmt.WEIGHTS}"] = (folder / fmt.WEIGHTS).read_bytes()
        report[name] = {"graph": graph, "batched": reason is None, "reason": reason}
    atomic_write_folder(target, files)
    return report
