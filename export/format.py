"""The export folder format, shared by the exporter (torch) and the runtime (no torch).

A folder (format ``densreg-onnx/2``) holds:

- ``conditionals.onnx``: images int64 (B, C, H, W) -> ``logits`` float32 (B, D, K) in
  generation order, ``log_prob`` float32 (B,) in nats, ``pixel_log_prob`` float32
  (B, C, H, W) in image layout;
- ``step.onnx``: ``value`` int64 (B,), ``position`` int64 scalar, ``state_i`` -> ``logits``
  (B, K), ``new_state_i`` (one cached step);
- ``draw.onnx``: ``logits`` (B, K), ``noise`` float64 (B,) -> ``value`` int64 (B,) (the
  inverse-CDF draw, used where state stays on a device);
- ``sample.onnx``: ``noise`` float64 (B, D) -> ``images`` int64 (B, C, H, W) (an ONNX Loop
  over the D positions: the step and the draw in one call);
- ``features.onnx`` (only for a model that defines ``features``): images int64 (B, C, H, W) ->
  ``features`` float32 (B, F), the model's learned representation (manifest ``features``
  says what F and each value are);
- ``weights.bin``: the graphs' weights, each stored once and shared (ONNX external data);
- ``manifest.json``: what every input and output means, the model, the export id and a
  sha256 of every other file (``manifest.py``); ``README.md``: a numpy + onnxruntime
  client; ``golden.json``: images with their log_prob, and noise with its samples.

Each graph's metadata_props carry only ``format``, ``export_id`` and ``graph``.
"""

from __future__ import annotations

import base64

import numpy as np

FORMAT = "densreg-onnx/2"
CONDITIONALS, STEP, DRAW, SAMPLE = "conditionals.onnx", "step.onnx", "draw.onnx", "sample.onnx"
GRAPHS = (CONDITIONALS, STEP, DRAW, SAMPLE)  # in every export of a categorical model
CONTINUOUS_GRAPHS = (CONDITIONALS, STEP)  # in every export of a model of real values (value_kind "continuous")
FEATURES = "features.onnx"  # only in exports of models with learned features
WEIGHTS, MANIFEST, README, GOLDEN = "weights.bin", "manifest.json", "README.md", "golden.json"
FILES = (*GRAPHS, FEATURES, WEIGHTS, GOLDEN, README, MANIFEST)  # everything an export folder may hold
OPSET = 18
DTYPES = ("float32", "float16")


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


DRAW_RULE = ("value = number of entries of cumsum(softmax(float64(logits))) that are < noise, capped at K-1 "
             "(inverse CDF; for K = 2: value = 1 iff softmax(logits)[0] < noise)")
NOISE_RULE = ("noise = numpy.random.default_rng(seed).random((n, D)), float64 uniform in [0, 1); column d is "
              "used at step d (densreg sample --seed uses exactly this)")


def io(name: str, dtype: str, shape: list, meaning: str) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape, "meaning": meaning}


def graph_descriptions(event_shape, num_categories: int, state: list[dict], features: dict | None = None) -> dict:
    """Every graph's inputs and outputs: name, dtype, shape (with "B" the batch), meaning and units.

    ``features``: the manifest's description of features.onnx (``size`` F, ``meaning``), or None
    when the export has no features graph.
    """
    c, h, w = event_shape
    d, k = c * h * w, num_categories
    image = ["B", c, h, w]
    states_in = [io(s["name"], s["dtype"], s["shape"], f"state before this step (batch on axis {s['batch_axis']}); "
                    f"at step 0 the manifest's 'initial' tiled along the batch axis") for s in state]
    states_out = [io(s["output"], s["dtype"], s["shape"], f"state after this step; feed it back as {s['name']}")
                  for s in state]
    return {
        CONDITIONALS: {
            "purpose": "exact density of whole images in one call",
            "inputs": [io("images", "int64", image, f"values 0..{k - 1}, axes (batch, channel, row, column)")],
            "outputs": [
                io("logits", "float32", ["B", d, k], "unnormalized logits of p(x_order[d] | x_order[<d]); axis 1 is "
                   "the generation step d, NOT the pixel index (pixel = order[d]); log_softmax over the last axis"),
                io("log_prob", "float32", ["B"], "log p(x) in nats (natural log), the sum over all D values"),
                io("pixel_log_prob", "float32", image, "log p(x_i | values before it) in nats, in image layout "
                   "(heatmaps need no ordering); sums to log_prob")]},
        STEP: {
            "purpose": "one cached generation step: the conditional of the value generated at step `position`",
            "inputs": [io("value", "int64", ["B"], f"x at pixel order[position-1], 0..{k - 1}; zeros at position 0"),
                       io("position", "int64", [], f"the step d, 0..{d - 1} (not a pixel index)"), *states_in],
            "outputs": [io("logits", "float32", ["B", k], "unnormalized logits of the value at pixel order[position]"),
                        *states_out]},
        DRAW: {
            "purpose": "the inverse-CDF draw (use it to keep sampling on a device)",
            "inputs": [io("logits", "float32", ["B", k], "a step's logits"),
                       io("noise", "float64", ["B"], "uniform in [0, 1)")],
            "outputs": [io("value", "int64", ["B"], "the drawn value, 0..K-1 (see draw_rule)")]},
        SAMPLE: {
            "purpose": "whole ancestral sampling in one call (an ONNX Loop over the D steps)",
            "inputs": [io("noise", "float64", ["B", d], "uniform in [0, 1); column d drives step d (see noise_rule)")],
            "outputs": [io("images", "int64", image, "the samples, in image layout")]},
        **({} if features is None else {FEATURES: {
            "purpose": "the model's learned representation of whole images (for downstream use)",
            "inputs": [io("images", "int64", image, f"values 0..{k - 1}, axes (batch, channel, row, column)")],
            "outputs": [io("features", "float32", ["B", features["size"]], features["meaning"])]}}),
    }


def required_graphs(value_kind: str) -> tuple[str, ...]:
    """The graphs every export of this value kind holds ("categorical", the default, or "continuous")."""
    return CONTINUOUS_GRAPHS if value_kind == "continuous" else GRAPHS


# -- models of real values (value_kind "continuous"): mixture-of-Gaussians conditionals ----------------
CONTINUOUS_NOISE_RULE = ("noise = numpy.random.default_rng(seed).random((n, D, 3)), float64 uniform in [0, 1); "
                         "noise[:, d] (three uniforms) is used at step d (densreg sample --seed uses exactly this)")
CONTINUOUS_DRAW_RULE = ("component = number of entries of cumsum(softmax(float64(logits))) that are < noise[0], "
                        "capped at M-1; z = sqrt(-2 log(1 - noise[1])) cos(2 pi noise[2]) (Box-Muller); value = "
                        "means[component] + exp(log_scales[component]) z, computed in float64, fed back as float32")


def draw_mixture_numpy(logits: np.ndarray, means: np.ndarray, log_scales: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``mixture_from_uniform`` in numpy float64: params (B, M) each, noise (B, 3) -> values float64 (B,)."""
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), -1)
    component = np.minimum((cdf < noise[:, :1]).sum(-1), logits.shape[-1] - 1)[:, None]
    mean = np.take_along_axis(means.astype(np.float64), component, -1)[:, 0]
    log_scale = np.take_along_axis(log_scales.astype(np.float64), component, -1)[:, 0]
    z = np.sqrt(-2 * np.log1p(-noise[:, 1])) * np.cos(2 * np.pi * noise[:, 2])
    with np.errstate(over="ignore"):  # a value beyond float range comes out inf, as in torch
        return mean + np.exp(log_scale) * z


def continuous_graph_descriptions(event_shape, components: int, state: list[dict],
                                  features: dict | None = None) -> dict:
    """``graph_descriptions`` for a model of real values: mixtures of ``components`` Gaussians per value."""
    c, h, w = event_shape
    d, m = c * h * w, components
    image = ["B", c, h, w]
    mixture = ("(logits: unnormalized log weights, apply log_softmax; means; log_scales: log standard deviations) "
               "of the mixture of M Gaussians")
    states_in = [io(s["name"], s["dtype"], s["shape"], f"state before this step (batch on axis {s['batch_axis']}); "
                    f"at step 0 the manifest's 'initial' tiled along the batch axis") for s in state]
    states_out = [io(s["output"], s["dtype"], s["shape"], f"state after this step; feed it back as {s['name']}")
                  for s in state]
    values = io("images", "float32", image, "real values (finite), axes (batch, channel, row, column)")
    return {
        CONDITIONALS: {
            "purpose": "exact log density of whole images in one call",
            "inputs": [values],
            "outputs": [
                *(io(name, "float32", ["B", d, m], f"{name} {mixture} of x_order[d] given x_order[<d]; axis 1 is "
                     "the generation step d, NOT the pixel index (pixel = order[d])")
                  for name in ("logits", "means", "log_scales")),
                io("log_prob", "float32", ["B"], "log p(x) in nats: a log density over the D real values"),
                io("pixel_log_prob", "float32", image, "log p(x_i | values before it) in nats (log densities), in "
                   "image layout; sums to log_prob")]},
        STEP: {
            "purpose": "one cached generation step: the mixture of the value generated at step `position`",
            "inputs": [io("value", "float32", ["B"], "x at pixel order[position-1]; zeros at position 0"),
                       io("position", "int64", [], f"the step d, 0..{d - 1} (not a pixel index)"), *states_in],
            "outputs": [*(io(name, "float32", ["B", m], f"{name} {mixture} of the value at pixel order[position]")
                          for name in ("logits", "means", "log_scales")), *states_out]},
        **({} if features is None else {FEATURES: {
            "purpose": "the model's learned representation of whole images (for downstream use)",
            "inputs": [values],
            "outputs": [io("features", "float32", ["B", features["size"]], features["meaning"])]}}),
    }
