"""The export folder format, shared by the exporter (torch) and the runtime (no torch).

A folder (format ``densreg-onnx/3``; ``HISTORY`` says what each format changed) holds:

- ``conditionals.onnx``: images (B, C, H, W) (int64 levels, or float32 real values) -> the
  family's parameters float32 (B, D, P) in generation order (manifest ``family``; ``logits``
  for ``Categorical``; ``logits``, ``means``, ``log_scales`` for ``GaussianMixture``),
  ``log_prob`` float32 (B,) in nats, ``pixel_log_prob`` float32 (B, C, H, W) in image layout;
- ``step.onnx``: ``value`` (B,), ``position`` int64 (B,) (each row's step; densreg 0.3.0 wrote an int64
  scalar), ``state_i`` (batch on axis 0) -> the parameters (B, P), ``new_state_i`` (one cached step);
- ``draw.onnx`` and ``sample.onnx`` (families with an ONNX draw: ``Categorical``; ``GaussianMixture`` in
  exports written after densreg 0.3.0): the parameters (B, P) each, ``noise`` float64 (B,) (or (B, 3) for a
  Gaussian mixture) -> ``value`` (B,) int64 (or float32) (the draw, used where state stays on a
  device); ``noise`` float64 (B, D) (or (B, D, 3)) -> ``images`` (B, C, H, W) (an ONNX Loop over
  the D positions: the step and the draw in one call);
- ``features.onnx`` (only for a model that defines ``features``): images int64 (B, C, H, W) ->
  ``features`` float32 (B, F), the model's learned representation (manifest ``features``
  says what F and each value are);
- ``weights.bin``: the graphs' weights, each stored once and shared (ONNX external data);
- ``manifest.json``: what every input and output means, the model, its card (``card``: data,
  evaluation, training, license, intended use, limitations), the export id and a sha256 of every
  other file (``manifest.py``); ``README.md``: the card and a numpy + onnxruntime client;
  ``golden.json``: images with their log_prob, and noise with its samples (finite numbers only);
  ``test_data_set_0/``: conditionals.onnx's golden input and outputs as ONNX TensorProto files
  (``input_0.pb``, ``output_N.pb`` in the graph's output order, as the ONNX model zoo lays them out).

Each graph's metadata_props carry ``format``, ``export_id``, ``graph`` and ``manifest_sha256``, the
digest of the manifest it belongs to (``manifest.binding_digest``).
"""

from __future__ import annotations

import base64

import numpy as np

from densreg.registry.errors import ConfigError, RuntimeLoadError
from densreg.registry.families import Categorical, Family, GaussianMixture, family_from_spec

FORMAT = "densreg-onnx/3"
# What each format changed; the runtime reads every format listed here (docs/deployment/format.md).
HISTORY = {
    "densreg-onnx/3": "after densreg 0.3.0: graphs carry manifest_sha256 (the manifest they belong to) and opening checks it "
                      "and the first golden batch; manifest 'card' (data sha256, test NLL, training, license, "
                      "intended use, limitations); test_data_set_0/ (ONNX model zoo layout); golden.json holds finite "
                      "numbers only; step.onnx takes the position per row, int64 (B,) (NaN parameters where rows "
                      "differ) and every state carries the batch on axis 0; real values get draw.onnx and sample.onnx",
    "densreg-onnx/2": "densreg 0.1-0.3: manifest.json with a sha256 of every file, golden.json, README.md, sample.onnx, "
                      "the pixel_log_prob output, families (manifest 'family'), features.onnx; step.onnx takes a "
                      "scalar position and a state may carry the batch on axis 1 (manifest 'batch_axis')",
    "densreg-onnx/1": "before manifest.json: the model's description in each graph's metadata_props, no digests, no "
                      "sample.onnx, no pixel_log_prob (read by export/legacy.py)",
}
READABLE = tuple(HISTORY)  # newest first
BOUND = (FORMAT,)  # formats whose graphs carry manifest_sha256
CONDITIONALS, STEP, DRAW, SAMPLE = "conditionals.onnx", "step.onnx", "draw.onnx", "sample.onnx"
GRAPHS = (CONDITIONALS, STEP, DRAW, SAMPLE)  # draw and sample only for families with an ONNX draw
FEATURES = "features.onnx"  # only in exports of models with learned features
WEIGHTS, MANIFEST, README, GOLDEN = "weights.bin", "manifest.json", "README.md", "golden.json"
TEST_DATA = "test_data_set_0"  # a folder: input_0.pb, output_N.pb (onnx.TensorProto) of conditionals.onnx
FILES = (*GRAPHS, FEATURES, WEIGHTS, GOLDEN, README, MANIFEST, TEST_DATA)  # everything an export folder may hold
OPSET = 18
DTYPES = ("float32", "float16")


def unreadable(folder, kind) -> str:
    """The one line for a folder whose format this densreg does not read."""
    return (f"{folder} is an export of format {str(kind)[:40]!r}, which this densreg does not read; it reads "
            f"{', '.join(READABLE)} (format history: docs/deployment/format.md); re-export it with this densreg, or "
            "open it with the densreg that wrote it")


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


def io(name: str, dtype: str, shape: list, meaning: str) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape, "meaning": meaning}


def family_of(manifest: dict) -> Family:
    """The family of an export's conditionals: the manifest's ``family``, or for folders written before
    families were recorded, ``Categorical(num_categories)`` or (value_kind "continuous")
    ``GaussianMixture(components)``. RuntimeLoadError for a description it cannot read."""
    try:
        if "family" in manifest:
            return family_from_spec(manifest["family"])
        if manifest.get("value_kind", "categorical") == "continuous":
            return GaussianMixture(manifest.get("components"))
        return Categorical(manifest["num_categories"])
    except ConfigError as exc:
        raise RuntimeLoadError(f"the manifest's family is not one this densreg knows: {exc}") from exc


def required_graphs(family: Family, manifest: dict | None = None) -> tuple[str, ...]:
    """The graphs an export of a model of this family holds: draw.onnx and sample.onnx where the family
    has an ONNX draw (``onnx_draw``) and, given the folder's ``manifest``, where it describes them (exports
    of real values by densreg 0.3.0 have neither)."""
    if not family.has_onnx_draw or (manifest is not None and SAMPLE not in (manifest.get("graphs") or {})):
        return (CONDITIONALS, STEP)
    return GRAPHS


def graph_descriptions(event_shape, family: Family, state: list[dict], features: dict | None = None) -> dict:
    """Every graph's inputs and outputs: name, dtype, shape (with "B" the batch), meaning and units.

    ``features``: the manifest's description of features.onnx (``size`` F, ``meaning``), or None
    when the export has no features graph.
    """
    c, h, w = event_shape
    d, p = c * h * w, family.param_size
    image = ["B", c, h, w]
    dtype = "int64" if family.discrete else "float32"
    values = io("images", dtype, image, f"{family.value_meaning()}, axes (batch, channel, row, column)")
    meanings = family.output_meanings()
    states_in = [io(s["name"], s["dtype"], s["shape"], f"state before this step (batch on axis {s['batch_axis']}); "
                    f"at step 0 the manifest's 'initial' tiled along the batch axis") for s in state]
    states_out = [io(s["output"], s["dtype"], s["shape"], f"state after this step; feed it back as {s['name']}")
                  for s in state]
    graphs = {
        CONDITIONALS: {
            "purpose": "exact density of whole images in one call",
            "inputs": [values],
            "outputs": [
                *(io(name, "float32", ["B", d, p], f"{meanings[name]}, of x_order[d] given x_order[<d]; axis 1 is "
                     "the generation step d, NOT the pixel index (pixel = order[d])") for name in family.param_names),
                io("log_prob", "float32", ["B"], "log p(x) in nats (natural log), the sum over all D values"
                   + ("" if family.discrete else "; a log density over the D real values")),
                io("pixel_log_prob", "float32", image, "log p(x_i | values before it) in nats, in image layout "
                   "(heatmaps need no ordering); sums to log_prob")]},
        STEP: {
            "purpose": "one cached generation step: the conditional of the value generated at step `position`",
            "inputs": [io("value", dtype, ["B"], f"x at pixel order[position-1] ({family.value_meaning()}); zeros "
                          "at position 0"),
                       io("position", "int64", ["B"], f"the step d of each row, 0..{d - 1} (not a pixel index); "
                          "rows of one call must share it (where they differ the outputs are NaN)"), *states_in],
            "outputs": [*(io(name, "float32", ["B", p], f"{meanings[name]}, of the value at pixel order[position]")
                          for name in family.param_names), *states_out]},
    }
    if family.has_onnx_draw:
        graphs[DRAW] = {
            "purpose": "the draw from uniform noise (use it to keep sampling on a device)",
            "inputs": [*(io(name, "float32", ["B", p], f"a step's {name}") for name in family.param_names),
                       io("noise", "float64", ["B", *family.noise_shape(1, 1)[2:]], "uniform in [0, 1)")],
            "outputs": [io("value", dtype, ["B"], "the drawn value (see draw_rule)")]}
        graphs[SAMPLE] = {
            "purpose": "whole ancestral sampling in one call (an ONNX Loop over the D steps)",
            "inputs": [io("noise", "float64", ["B", d, *family.noise_shape(1, 1)[2:]], "uniform in [0, 1); column d drives step d (see noise_rule)")],
            "outputs": [io("images", dtype, image, "the samples, in image layout")]}
    if features is not None:
        graphs[FEATURES] = {
            "purpose": "the model's learned representation of whole images (for downstream use)",
            "inputs": [values],
            "outputs": [io("features", "float32", ["B", features["size"]], features["meaning"])]}
    return graphs
