"""The README.md of an export folder: what it is, and a client in numpy + onnxruntime alone.

``SNIPPET`` is the client: run from the folder, it scores golden.json's images (and computes
their features when the folder has features.onnx), samples
golden.json's noise through sample.onnx and through the step loop, and checks both against
golden.json (tests run it with torch and densreg unimportable).
"""

from __future__ import annotations

from . import card
from . import format as fmt

# The clients' common opening: the sessions and the integrity checks of every file and graph.
OPENING = '''\
import base64, hashlib, json
import numpy as np
import onnxruntime as ort

manifest, golden = json.load(open("manifest.json")), json.load(open("golden.json"))
options = ort.SessionOptions()
options.intra_op_num_threads = 1  # per-step work is small: one thread is fastest for sampling
def open_graph(name):
    return ort.InferenceSession(name, options, providers=["CPUExecutionProvider"])

# integrity: every file's size and sha256 as the manifest lists them, and each graph names this manifest
for name, digest in manifest["files"].items():
    data = open(name, "rb").read()
    assert len(data) == digest["bytes"] and hashlib.sha256(data).hexdigest() == digest["sha256"], name
unbound = {**manifest, "files": {k: v for k, v in manifest["files"].items() if not k.endswith(".onnx")}}
manifest_sha256 = hashlib.sha256(json.dumps(unbound, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
for name in manifest["graphs"]:
    assert open_graph(name).get_modelmeta().custom_metadata_map["manifest_sha256"] == manifest_sha256, name

'''

SNIPPET = OPENING + '''\
# density: log p(x) in nats per image, and per value in image layout (B, C, H, W)
images = np.array(golden["images"], dtype=np.int64)  # values 0..K-1 (the runtime checks; here you do)
log_prob, pixel_log_prob = open_graph("conditionals.onnx").run(["log_prob", "pixel_log_prob"], {"images": images})
assert np.allclose(log_prob, golden["log_prob"], atol=golden["log_prob_atol"])

# learned features, when the model has them (manifest["features"] says what they are): (B, F) float32
def decode(item):  # an array stored as dtype, shape and base64 of its little-endian bytes
    data, dtype = base64.b64decode(item["data"]), np.dtype(item["dtype"]).newbyteorder("<")
    return np.frombuffer(data, dtype=dtype).reshape(item["shape"])
if "features.onnx" in manifest["files"]:
    features = open_graph("features.onnx").run(["features"], {"images": images})[0]
    expected = decode(golden["features"])
    assert np.abs(features - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())

# sampling in one call: noise (n, D) uniform float64 -> images (n, C, H, W)
noise = np.array(golden["noise"], dtype=np.float64)
samples = open_graph("sample.onnx").run(["images"], {"noise": noise})[0]
assert (samples == np.array(golden["samples"])).all()

# the same by the step loop: step d gives the logits of pixel order[d], given the value drawn at d-1
step, order, K = open_graph("step.onnx"), np.array(manifest["order"]), manifest["num_categories"]
n, D = noise.shape
state = {}
for s in manifest["state"]:  # the stored one-row initial value, tiled along the state's batch axis
    one = decode(s["initial"])
    state[s["name"]] = one if s["batch_axis"] is None else np.repeat(one, n, axis=s["batch_axis"])
inputs = {i.name for i in step.get_inputs()}
value, values = np.zeros(n, dtype=np.int64), np.empty((n, D), dtype=np.int64)
for d in range(D):
    feed = {"value": value, "position": np.full(n, d, dtype=np.int64), **state}  # each row's step d
    logits, *new_state = step.run(None, {k: v for k, v in feed.items() if k in inputs})
    state = {s["name"]: a for s, a in zip(manifest["state"], new_state)}  # new_state_i -> state_i
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(-1, keepdims=True), -1)
    value = np.minimum((cdf < noise[:, d, None]).sum(-1), K - 1)  # the inverse-CDF draw
    values[:, d] = value
pixels = np.empty_like(values)
pixels[:, order] = values  # generation order -> pixel order
assert (pixels.reshape(samples.shape) == samples).all()
print("ok", log_prob.tolist())
'''


CONTINUOUS_SNIPPET = OPENING + '''\
# density: log p(x) in nats (a log density over the real values), and per value in image layout
images = np.array(golden["images"], dtype=np.float32)  # finite real values (B, C, H, W)
log_prob, pixel_log_prob = open_graph("conditionals.onnx").run(["log_prob", "pixel_log_prob"], {"images": images})
assert np.allclose(log_prob, golden["log_prob"], atol=golden["log_prob_atol"])

# sampling by the step loop: step d gives the mixture of pixel order[d], given the value drawn at d-1
def decode(item):  # an array stored as dtype, shape and base64 of its little-endian bytes
    data, dtype = base64.b64decode(item["data"]), np.dtype(item["dtype"]).newbyteorder("<")
    return np.frombuffer(data, dtype=dtype).reshape(item["shape"])
step, order = open_graph("step.onnx"), np.array(manifest["order"])
noise = np.array(golden["noise"], dtype=np.float64)  # (n, D, 3) uniforms: component, Box-Muller radius, angle
n, D = noise.shape[:2]
state = {}
for s in manifest["state"]:  # the stored one-row initial value, tiled along the state's batch axis
    one = decode(s["initial"])
    state[s["name"]] = one if s["batch_axis"] is None else np.repeat(one, n, axis=s["batch_axis"])
inputs = {i.name for i in step.get_inputs()}
value, values = np.zeros(n, dtype=np.float32), np.empty((n, D))
for d in range(D):
    feed = {"value": value, "position": np.full(n, d, dtype=np.int64), **state}  # each row's step d
    logits, means, log_scales, *new_state = step.run(None, {k: v for k, v in feed.items() if k in inputs})
    state = {s["name"]: a for s, a in zip(manifest["state"], new_state)}  # new_state_i -> state_i
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(-1, keepdims=True), -1)
    k = np.minimum((cdf < noise[:, d, :1]).sum(-1), z.shape[-1] - 1)[:, None]  # the component (inverse CDF)
    normal = np.sqrt(-2 * np.log1p(-noise[:, d, 1])) * np.cos(2 * np.pi * noise[:, d, 2])  # Box-Muller
    values[:, d] = np.take_along_axis(means.astype(np.float64), k, 1)[:, 0] \\
        + np.exp(np.take_along_axis(log_scales.astype(np.float64), k, 1)[:, 0]) * normal
    value = values[:, d].astype(np.float32)
pixels = np.empty_like(values)
pixels[:, order] = values  # generation order -> pixel order
assert np.abs(pixels.reshape(images[:n].shape) - np.array(golden["samples"])).max() <= golden["samples_atol"]
print("ok", log_prob.tolist())
'''


def render(manifest: dict) -> str:
    """README.md text for an export described by ``manifest`` (without its files section)."""
    model, features = manifest["model"], manifest.get("features") or {}
    c, h, w = manifest["event_shape"]
    continuous = manifest.get("value_kind") == "continuous"
    values = ("real values, whose conditionals are mixtures of Gaussians (log_prob is a log density)" if continuous
              else f"values 0..{manifest['num_categories'] - 1}")
    lines = [
        f"# {model['name']} (densreg export {manifest['export_id']})",
        "",
        f"An exact-likelihood density model of {c}x{h}x{w} images with {values}, "
        f"exported by densreg {model['densreg_version']} from `{model['qualified_name']}` "
        f"({model['distribution'] or 'no distribution'} {model['version']}). It runs with numpy and "
        "onnxruntime alone.",
        "",
        f"- ordering `{manifest['ordering']}`: `order[d]` (manifest.json) is the flat pixel index (c*H*W + h*W + w) "
        "generated at step d. `logits` of conditionals.onnx and everything in step.onnx are in generation order; "
        "`pixel_log_prob` and images are in image layout.",
        f"- units: log-probabilities (log densities for real values) in nats (natural log); logits are "
        "unnormalized (apply log_softmax); "
        f"graph weights are {manifest['dtype']}, inputs and outputs as listed in manifest.json.",
        *([f"- features: {features['size']} values per image from {fmt.FEATURES}: {features['meaning']}"]
          if features.get("graph") else []),
        "- noise: " + manifest["noise_rule"],
        "- draw: " + manifest["draw_rule"],
        f"- versions: onnx {manifest['versions']['onnx']}, opset {manifest['versions']['opset']}, exported with "
        f"onnxruntime {manifest['versions']['onnxruntime']} (needs {manifest['versions']['onnxruntime_minimum']} "
        "or newer)",
        "",
        "| file | what |",
        "|---|---|",
    ]
    for name, graph in manifest["graphs"].items():
        ins = ", ".join(i["name"] for i in graph["inputs"])
        outs = ", ".join(o["name"] for o in graph["outputs"])
        lines.append(f"| {name} | {graph['purpose']}: {ins} -> {outs} |")
    lines += [
        f"| {fmt.WEIGHTS} | the graphs' weights, each stored once (ONNX external data) |",
        f"| {fmt.GOLDEN} | golden vectors: images with their log_prob, and noise with the samples it gives |",
        f"| {fmt.MANIFEST} | the meaning of every input and output (shapes, axes, units), the state pairing and "
        "batch axes, the model card, the export id and a sha256 of every other file |",
        f"| {fmt.TEST_DATA}/ | conditionals.onnx's golden input (input_0.pb) and outputs (output_N.pb, in the "
        "graph's output order) as ONNX TensorProto files, the ONNX model zoo's layout |",
        "",
        *card.render(manifest.get("card")),
        f"Format `{fmt.FORMAT}` (what each format changed: densreg's docs/deployment/format.md). Before use, check "
        "that every file's sha256 equals the manifest's and that each graph's `manifest_sha256` metadata is the "
        "digest of this manifest (densreg's runtime refuses a folder where one differs, or whose conditionals.onnx "
        "does not reproduce golden.json, and external data naming anything but weights.bin). A client with numpy "
        "and onnxruntime only, run from this folder (it does both checks, then checks itself against "
        "golden.json):",
        "",
        "```python",
        (CONTINUOUS_SNIPPET if continuous else SNIPPET).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def snippet_of(readme_text: str) -> str:
    """The python block of a rendered README."""
    return readme_text.split("```python\n", 1)[1].split("```", 1)[0]
