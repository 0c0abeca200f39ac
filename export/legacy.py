"""Export folders of format densreg-onnx/1 (before manifest.json): read-only support (torch-free).

Such a folder holds conditionals.onnx, step.onnx and draw.onnx, each carrying the model's
description in its metadata_props. ``manifest_of`` turns that description into the manifest
the runtime reads; the files are not hashed (format 1 had no digests), sample.onnx and the
pixel_log_prob output do not exist, and the runtime says so where it matters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from densreg.registry.errors import RuntimeLoadError

from . import format as fmt
from .protoscan import fields

FORMAT = "densreg-onnx/1"
FILES = (fmt.CONDITIONALS, fmt.STEP, fmt.DRAW)
MODEL_METADATA = 14  # ModelProto.metadata_props


def metadata_props(model_bytes: bytes) -> dict[str, str]:
    """The metadata_props of a serialized ModelProto."""
    props = {}
    for number, wire, value in fields(memoryview(model_bytes)):
        if number == MODEL_METADATA and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in fields(value) if w == 2}
            props[entry.get(1, "")] = entry.get(2, "")
    return props


def manifest_of(folder: Path) -> dict | None:
    """The manifest of a format-1 folder, or None if ``folder`` is not one."""
    path = folder / fmt.CONDITIONALS
    if not path.is_file() or path.is_symlink():
        return None
    try:
        metas = {name: metadata_props((folder / name).read_bytes()) for name in FILES if (folder / name).is_file()}
    except ValueError:
        return None
    first = metas.get(fmt.CONDITIONALS, {})
    if first.get("format") != FORMAT:
        return None
    for name in FILES:
        if name not in metas:
            raise RuntimeLoadError(f"{folder} is not a complete densreg export: {name} is missing")
    keys = ("model", "config", "event_shape", "num_categories", "order", "state")
    for name, meta in metas.items():
        if any(meta.get(k) != first.get(k) for k in keys):
            raise RuntimeLoadError(f"{folder}: {name} and {fmt.CONDITIONALS} come from different exports")
    try:
        plugin, _, bare = first["model"].rpartition(":")
        state = json.loads(first["state"])
        for spec in state:
            spec.setdefault("output", "new_" + spec["name"])
        return {
            "format": FORMAT, "export_id": None,
            "model": {"name": bare, "qualified_name": first["model"], "plugin": first.get("plugin") or plugin,
                      "distribution": first.get("distribution", ""), "version": first.get("distribution_version", ""),
                      "config": json.loads(first["config"]), "densreg_version": first.get("densreg_version", "")},
            "event_shape": json.loads(first["event_shape"]), "num_categories": int(first["num_categories"]),
            "ordering": first["ordering"], "order": json.loads(first["order"]), "state": state,
            "versions": {"opset": int(first["opset"])}, "parity": json.loads(first.get("parity", "null")),
            "files": {name: None for name in FILES},
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise RuntimeLoadError(f"{path}: export metadata is incomplete or invalid: {exc}") from exc


def pixel_log_probs(logits: np.ndarray, x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per-value log-probabilities in nats from a format-1 folder's logits (it has no pixel_log_prob output):
    logits (B, D, K) in generation order, images int64 (B, C, H, W), order (D,) -> float32 (B, C, H, W)."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_norm = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    seq = x.reshape(len(x), -1)[:, order]
    chosen = np.take_along_axis(logits, seq[..., None], -1)[..., 0] - log_norm
    flat = np.empty_like(chosen)
    flat[:, order] = chosen
    return flat.reshape(x.shape).astype(np.float32)
