"""Test helper: make a hand-edited export folder consistent again, as an exporter would have written it."""

from __future__ import annotations

import json

import onnx

from densreg.export import format as fmt
from densreg.export.manifest import BINDING_KEY, binding_digest, file_digest


def rebind(folder):
    """Stamp every graph the folder's manifest lists with the digest of that (edited) manifest, then make
    the manifest's file digests match the files: a folder that passes every check but the golden vectors."""
    manifest = json.loads((folder / fmt.MANIFEST).read_text())
    for graph in (name for name in manifest["files"] if name.endswith(".onnx")):
        proto = onnx.load(folder / graph, load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        onnx.helper.set_model_props(proto, {**props, BINDING_KEY: binding_digest(manifest)})
        (folder / graph).write_bytes(proto.SerializeToString())
    manifest["files"] = {name: file_digest((folder / name).read_bytes()) for name in manifest["files"]}
    (folder / fmt.MANIFEST).write_text(json.dumps(manifest))
