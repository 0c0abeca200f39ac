"""Lean ONNX files: no debug metadata, no stale shape annotations, each weight stored once.

``strip`` drops what the torch exporter adds for debugging (per-node stack traces and
source paths in metadata_props and doc strings) and the ``value_info`` shape annotations
(recomputed by onnxruntime; stale ones break ``quantize_dynamic``). ``share_weights`` moves
every large initializer of several graphs into one ``weights.bin`` (ONNX external data),
writing identical tensors once.
"""

from __future__ import annotations

import hashlib

import onnx
from onnx import numpy_helper

ALIGN = 64  # byte alignment of each tensor in weights.bin
MIN_EXTERNAL_BYTES = 1024  # smaller tensors stay inside their graph


def _strip_graph(graph: onnx.GraphProto) -> None:
    graph.doc_string = ""
    del graph.value_info[:]
    del graph.metadata_props[:]
    for info in [*graph.input, *graph.output]:
        info.doc_string = ""
    for node in graph.node:
        _strip_node(node)


def _strip_node(node: onnx.NodeProto) -> None:
    node.doc_string = ""
    del node.metadata_props[:]
    for attribute in node.attribute:
        attribute.doc_string = ""
        if attribute.HasField("g"):
            _strip_graph(attribute.g)
        for graph in attribute.graphs:
            _strip_graph(graph)


def strip(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove debug metadata, doc strings and value_info everywhere (in place); returns ``proto``."""
    proto.doc_string = ""
    del proto.metadata_props[:]
    _strip_graph(proto.graph)
    for function in proto.functions:
        function.doc_string = ""
        del function.metadata_props[:]
        del function.value_info[:]
        for node in function.node:
            _strip_node(node)
    return proto


def share_weights(protos: list[onnx.ModelProto], location: str) -> bytes:
    """Point every initializer of at least MIN_EXTERNAL_BYTES in ``protos`` at one shared file
    (in place); returns that file's bytes. Identical tensors (same dtype and bytes) share one copy."""
    blob = bytearray()
    offsets: dict[tuple[int, str], tuple[int, int]] = {}
    for proto in protos:
        for tensor in proto.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.nbytes < MIN_EXTERNAL_BYTES:
                continue
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            key = (tensor.data_type, hashlib.sha256(data).hexdigest())
            if key not in offsets:
                blob.extend(b"\0" * (-len(blob) % ALIGN))
                offsets[key] = (len(blob), len(data))
                blob.extend(data)
            offset, length = offsets[key]
            replacement = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                           data_location=onnx.TensorProto.EXTERNAL)
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
                replacement.external_data.add(key=k, value=v)
            tensor.CopyFrom(replacement)
    return bytes(blob)
