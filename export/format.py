"""The export folder format, shared by the exporter (torch) and the runtime (no torch).

A folder holds ``conditionals.onnx`` (images int64 (B, C, H, W) -> ``logits``
float32 (B, D, K) and ``log_prob`` float32 (B,) in nats), ``step.onnx`` (``value``
int64 (B,), ``position`` int64 scalar, ``state_i`` -> ``logits`` (B, K),
``new_state_i``) and ``draw.onnx`` (``logits`` (B, K), ``noise`` float64 (B,) ->
``value`` int64 (B,), the inverse-CDF draw, used where state stays on a device).
Every file carries the same string metadata_props (see ``metadata``).
"""

from __future__ import annotations

import base64
import json

import numpy as np

from densreg.registry.saved import SavedModelInfo

FORMAT = "densreg-onnx/1"
CONDITIONALS, STEP, DRAW = "conditionals.onnx", "step.onnx", "draw.onnx"
FILES = (CONDITIONALS, STEP, DRAW)
OPSET = 18


def major(version_string: str) -> str:
    return version_string.split(".", 1)[0]


def encode_array(array: np.ndarray) -> dict:
    """An array as JSON: dtype, shape and base64 of its little-endian bytes (exact)."""
    array = np.ascontiguousarray(array)
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": base64.b64encode(data).decode("ascii")}


def decode_array(item: dict) -> np.ndarray:
    dtype = np.dtype(item["dtype"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(item["data"]), dtype=dtype)
    return flat.astype(dtype.newbyteorder("="), copy=False).reshape(item["shape"])


def metadata(info: SavedModelInfo, *, order, state: list[dict], opset: int, torch_version: str,
             parity: dict | None) -> dict[str, str]:
    """The metadata_props of every file of an export (all values strings): the model's keys from
    ``info``, then the export's own.

    ``state``: per state tensor {name, dtype, shape (dim 0 is the batch, written
    "batch"), initial: encode_array of the initial value for one batch row}.
    """
    return {
        "format": FORMAT,
        **info.model_metadata(),
        "order": json.dumps([int(i) for i in order]),
        "state": json.dumps(state),
        "opset": str(opset),
        "torch_version": torch_version,
        "parity": json.dumps(parity),
    }


def parse_info(metadata: dict[str, str]) -> SavedModelInfo:
    """An export's metadata -> its description (KeyError / ValueError when malformed)."""
    return SavedModelInfo.from_metadata(metadata, opset=int(metadata["opset"]),
                                        parity=json.loads(metadata.get("parity", "null")))


def draw_numpy(logits: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw in float64, as ``categorical_from_uniform``: (B, K), (B,) -> int64 (B,).

    The same operations as torch's float64 softmax and cumsum, so the same values; for
    K = 2 written on the two columns (value 1 iff p0 < noise), a few times faster.
    """
    if logits.shape[-1] == 2:
        l0, l1 = logits[:, 0].astype(np.float64), logits[:, 1].astype(np.float64)
        top = np.maximum(l0, l1)
        e0, e1 = np.exp(l0 - top), np.exp(l1 - top)
        return (e0 / (e0 + e1) < noise).astype(np.int64)
    logits = logits.astype(np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), -1)
    value = (cdf < noise[:, None]).sum(-1)
    return np.minimum(value, logits.shape[-1] - 1).astype(np.int64)
