"""Export a DensityModel to an ONNX folder (torch side), once for every family.

``export_model(model, out_dir)`` traces ``conditionals.onnx`` and ``step.onnx`` (and
``features.onnx`` when the model defines ``features``) with the dynamo exporter (``tracing``),
strips them (``lean``), adds ``draw.onnx`` and ``sample.onnx`` (``loop``) where the model's family
has an ONNX draw, runs a parity check (onnxruntime vs torch, ``parity``), computes golden vectors,
checks each file with ``onnx.checker.check_model(full_check=True)``, and only then writes the folder
(format.py lists its files) in one move: a model that cannot be exported leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from densreg.registry.api import describe_model
from densreg.registry.atomic import atomic_write_folder, check_target, is_utf8_path
from densreg.registry.errors import DensregError, ExportError
from densreg.registry.protocol import DensityModel
from densreg.registry.saved import SavedModelInfo

from . import format as fmt
from onnx import numpy_helper

from . import lean, loop, manifest, readme
from .card import UNKNOWN
from .card import build as build_card
from .parity import golden, parity_check, run_parity, session
from .tracing import (EXAMPLE_BATCH, ConditionalsGraph, FeaturesGraph, StepGraph, dynamic, features_meaning,
                      lean_graphs, state_specs, to_onnx)

LOGITS_ATOL = 1e-4  # parity tolerance on the parameters (relative to max(1, |value|))
LOG_PROB_ATOL = 1e-3  # parity tolerance on log_prob, nats per image
FLOAT16_ATOL, FLOAT16_LOG_PROB_ATOL = 0.05, 0.5  # the same for --dtype float16 (parameters, nats per image)
IR_VERSION = 10  # what the torch exporter writes
ORT_MINIMUM = "1.25"  # the oldest onnxruntime that refuses external data outside the model's folder


def features_graph(model: DensityModel, images: torch.Tensor, name: str, opset: int,
              batch) -> tuple[onnx.ModelProto | None, dict]:
    """features.onnx and its manifest entry; (None, entry with the reason) when the model has no
    ``features`` or they do not export (the rest of the export does not depend on them)."""
    with torch.no_grad():
        try:
            probe = model.features(images)
        except NotImplementedError as exc:
            return None, {"graph": None, "reason": str(exc) or f"{name} has no learned features"}
    if not isinstance(probe, torch.Tensor) or probe.dim() != 2 or probe.shape[0] != len(images):
        shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        return None, {"graph": None, "reason": f"{name}.features returned {shape} for {len(images)} images, "
                                               "not a (B, F) tensor"}
    try:
        proto = to_onnx(FeaturesGraph(model), (images,), ["images"], ["features"], ({0: batch},), "features",
                         name, opset)
    except ExportError as exc:
        return None, {"graph": None, "reason": str(exc)}
    return proto, {"graph": fmt.FEATURES, "shape": ["B", int(probe.shape[1])], "size": int(probe.shape[1]),
                   "dtype": "float32", "meaning": features_meaning(model)}


def check_export_target(out_dir: Path) -> None:
    """``out_dir`` must be new, empty, or a previous export (which is then replaced)."""
    if not is_utf8_path(out_dir.absolute()):
        raise ExportError(f"cannot export to {os.fsencode(out_dir)!r}: the path is not valid UTF-8, and onnxruntime "
                          "opens exports by UTF-8 path; choose a UTF-8 name")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"cannot export to {out_dir}: it is a file, not a folder")
    check_target(out_dir, "folder")  # no symlink or special file
    if out_dir.is_dir() and not set(os.listdir(out_dir)) <= set(fmt.FILES):
        raise ExportError(f"cannot export to {out_dir}: the folder holds files other than an export; "
                          "choose an empty or new folder")


def _preprocessing(name) -> str:
    """The registered dataset's description (its preprocessing), or "" when it is not registered here."""
    from densreg.registry import api

    try:
        return api.get_dataset(name).description if name else ""
    except DensregError:
        return ""


def _dataset(card: dict, metrics: dict) -> dict | None:
    """The manifest's ``dataset`` (kept for clients of format 2): name, preprocessing and NLL figures (nats), as
    the card says them; None when the training data is unknown."""
    if card["dataset"]["name"] == UNKNOWN:
        return None
    evaluation = card["evaluation"]
    return {"name": card["dataset"]["name"], "preprocessing": card["dataset"]["preprocessing"],
            "test_nll_nats": None if evaluation == UNKNOWN else evaluation["test_nll_nats"],
            **{key: metrics.get(key) for key in ("valid_nll_nats", "train_nll_nats")}}


def _seal(graphs: dict, export_id: str, golden: dict, shared: list) -> tuple[dict[str, bytes], dict[str, str]]:
    """Check every graph and share its weights; the folder's files but the graphs (weights.bin shared by the
    ``shared`` graphs, golden.json, test_data_set_0/) and each graph's weights dtype. ExportError (one line) for
    golden vectors that are not finite."""
    for filename, proto in graphs.items():
        stamp(proto, filename, export_id, "")
        onnx.checker.check_model(proto, full_check=True)
    weights_dtype = {f: "float16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in p.graph.initializer)
                     else "float32" for f, p in graphs.items()}
    files = test_data(graphs[fmt.CONDITIONALS], golden)  # before the weights leave the graphs
    files[fmt.WEIGHTS] = lean.share_weights(shared, fmt.WEIGHTS)
    try:
        files[fmt.GOLDEN] = (json.dumps(golden, allow_nan=False) + "\n").encode()
    except ValueError:
        raise ExportError("the export's golden vectors hold NaN or infinity (a sample, log_prob or feature is not "
                          "finite); golden.json must be valid JSON, so the export is refused") from None
    return files, weights_dtype


def stamp(proto: onnx.ModelProto, filename: str, export_id: str, binding: str) -> None:
    """A graph's metadata_props: format, export id, graph name and the digest of its manifest."""
    onnx.helper.set_model_props(proto, {"format": fmt.FORMAT, "export_id": export_id,
                                        "graph": filename.removesuffix(".onnx"), manifest.BINDING_KEY: binding})


def test_data(conditionals: onnx.ModelProto, golden: dict) -> dict[str, bytes]:
    """test_data_set_0/ (the ONNX model zoo's layout): conditionals.onnx's golden images as input_0.pb and
    each of its outputs for them as output_N.pb, in the graph's output order (onnx.TensorProto)."""
    images = np.asarray(golden["images"])
    dtype = np.int64 if images.dtype.kind in "iu" else np.float32
    images = images.astype(dtype)
    names = [o.name for o in conditionals.graph.output]
    outputs = session(conditionals).run(names, {"images": images})
    tensors = [("input_0.pb", numpy_helper.from_array(images, conditionals.graph.input[0].name))]
    tensors += [(f"output_{i}.pb", numpy_helper.from_array(a, n)) for i, (n, a) in enumerate(zip(names, outputs))]
    return {f"{fmt.TEST_DATA}/{name}": tensor.SerializeToString() for name, tensor in tensors}


def bind(graphs: dict, export_id: str, description: dict, files: dict[str, bytes]) -> dict:
    """Stamp each graph with the digest of the manifest (``manifest.binding_digest``), serialize the graphs
    into ``files``, and return the manifest."""
    unbound = manifest.assemble(description, files)
    for filename, proto in graphs.items():
        stamp(proto, filename, export_id, manifest.binding_digest(unbound))
        files[filename] = proto.SerializeToString()
    whole = manifest.assemble(description, files)
    assert manifest.binding_digest(whole) == manifest.binding_digest(unbound)
    return whole


def components(model: DensityModel, family):
    """The family with its parameter size read off one teacher-forced pass where it is not fixed (a
    Gaussian mixture declared without M): what the manifest records."""
    if family.param_size is not None:
        return family
    with torch.no_grad():
        zeros = torch.zeros(1, *model.event_shape, dtype=model.value_dtype, device=model.order.device)
        size = int(family.unpack(model.conditional_params(zeros))[0].shape[-1])
    return type(family)(size)


def trace(model: DensityModel, name: str, opset: int):
    """The traced conditionals, step and features graphs, the state specs and the features entry."""
    device, family = model.order.device, model.family
    batch = torch.export.Dim("batch", min=1)
    dtype = torch.int64 if family.discrete else torch.float32
    images = torch.zeros(EXAMPLE_BATCH, *model.event_shape, dtype=dtype, device=device)
    params = list(family.param_names)
    conditionals = to_onnx(ConditionalsGraph(model), (images,), ["images"], [*params, "log_prob", "pixel_log_prob"],
                           ({0: batch},), "conditional_params", name, opset)
    specs, state, axes = state_specs(model, name)
    value = torch.zeros(EXAMPLE_BATCH, dtype=dtype, device=device)
    position = torch.ones(EXAMPLE_BATCH, dtype=torch.int64, device=device)
    names = [s["name"] for s in specs]
    step = to_onnx(StepGraph(model, axes), (value, position, *state), ["value", "position", *names],
                   [*params, *[f"new_{n}" for n in names]],
                   ({0: batch}, {0: batch}, *([tuple(dynamic(s, batch) for s in specs)] if state else [])), "step",
                   name, opset)
    features, features_entry = features_graph(model, images, name, opset, batch)
    return conditionals, step, features, specs, features_entry


def check_parity(report: dict, name: str, family, atol: float, log_prob_atol: float) -> None:
    """ExportError (one line) unless the parameters, log_prob and features are within tolerance (NaN fails)."""
    if report["max_abs_diff"] <= atol and report["log_prob"] <= log_prob_atol and report.get("features", 0.0) <= atol:
        return
    what = "logits" if family.param_names == ("logits",) else "parameters"
    scale = "" if family.discrete else " (relative to max(1, |value|))"
    features = f", {report['features']:.3g} (features)" if "features" in report else ""
    raise ExportError(f"export of model {name!r} fails its parity check: onnxruntime differs from torch by "
                      f"{report['conditionals_params']:.3g} (conditional {what}), {report['step_params']:.3g} "
                      f"(step {what}), {report['log_prob']:.3g} nats (log_prob){features}; tolerances {atol:g}{scale} "
                      f"and {log_prob_atol:g} nats")


def sampling_graphs(model: DensityModel, step, specs, initial, opset: int, name: str) -> dict:
    """draw.onnx and sample.onnx for a family with an ONNX draw ({} otherwise)."""
    draw = model.family.onnx_draw(opset, IR_VERSION)
    if draw is None:
        return {}
    try:
        sample = loop.sample_graph(step, draw, model.order.cpu().numpy(), tuple(model.event_shape), specs, initial)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"model {name!r} exported, but its sampling graph fails: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0]}") from exc
    return {fmt.DRAW: draw, fmt.SAMPLE: sample}


def export_model(model: DensityModel, out_dir, name: str | None = None, parity: bool = True,
                 opset: int = fmt.OPSET, atol: float = LOGITS_ATOL, log_prob_atol: float = LOG_PROB_ATOL,
                 parity_positions: int | None = None, dtype: str = "float32",
                 source: SavedModelInfo | None = None, card: dict | None = None) -> dict:
    """Export ``model`` to the folder ``out_dir``; returns a report.

    ``dtype`` "float16" stores weights and arithmetic in half precision (inputs and outputs
    keep their types); its parity tolerances are FLOAT16_ATOL and FLOAT16_LOG_PROB_ATOL unless
    given. ``source``: the checkpoint's SavedModelInfo (its metrics fill the model card; ``extra["card"]``,
    a pretrained catalog's card, fills what they do not record). ``card``: what the user states of the model,
    ``license``, ``intended_use``, ``limitations`` (others, and the unstated, are "unknown"; ``card.py``).

    Keys: ``dir``, ``files`` (paths), ``sizes`` (bytes per file), ``traced_sizes`` (bytes of the
    conditionals and step graphs as traced, before ``lean``), ``model``, ``opset``, ``dtype``,
    ``export_id``, ``seconds``, and with ``parity``: ``max_abs_diff`` (parameters, both graphs,
    relative to max(1, |value|)), ``log_prob_max_abs_diff`` (nats: the largest change of log p(x)
    per image against torch), ``conditionals_max_abs_diff``, ``step_max_abs_diff``,
    ``features_max_rel_diff`` (else None); ``features``: the manifest's entry (``graph``
    "features.onnx", ``size`` F, ``meaning``; or ``graph`` None and the ``reason``: the model has
    no features, or they do not export). Raises ExportError (naming the model and the cause) when
    a graph does not export or parity exceeds ``atol`` / ``log_prob_atol``; nothing is written then.
    """
    if not isinstance(model, DensityModel):
        raise ExportError(f"cannot export {type(model).__name__}: not a DensityModel")
    name = name or model.registry_name or type(model).__name__
    if opset < 18:
        raise ExportError(f"opset {opset} is too old; the exporter needs 18 or newer")
    if dtype not in fmt.DTYPES:
        raise ExportError(f"unknown export dtype {dtype!r}; expected one of {', '.join(fmt.DTYPES)}")
    if dtype == "float16" and (atol, log_prob_atol) == (LOGITS_ATOL, LOG_PROB_ATOL):
        atol, log_prob_atol = FLOAT16_ATOL, FLOAT16_LOG_PROB_ATOL
    out_dir = Path(out_dir)
    check_export_target(out_dir)  # before minutes of tracing, and again just before writing
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        conditionals, step, features, specs, features_entry = trace(model, name, opset)
        traced = {fmt.CONDITIONALS: conditionals.ByteSize(), fmt.STEP: step.ByteSize()}
        conditionals, step, features = lean_graphs(conditionals, step, features, dtype)
        report = None
        if parity:
            report = run_parity(parity_check, name, model, conditionals, step, positions=parity_positions,
                                features=features)
            check_parity(report, name, model.family, atol, log_prob_atol)
        initial = [fmt.decode_array(s["initial"]) for s in specs]
        sampling = sampling_graphs(model, step, specs, initial, opset, name)
        try:
            golden_vectors = golden(model, conditionals, step, sampling.get(fmt.SAMPLE), specs, initial,
                                    features=features)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"model {name!r} exported, but sampling from the export fails: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0]}") from exc
        export_id = uuid.uuid4().hex
        graphs = {fmt.CONDITIONALS: conditionals, fmt.STEP: step, **sampling,
                  **({fmt.FEATURES: features} if features is not None else {})}
        shared = [g for f, g in graphs.items() if f != fmt.DRAW]
        files, weights_dtype = _seal(graphs, export_id, golden_vectors, shared=shared)
        description = describe_export(model, name, specs, opset, dtype, export_id, report, source, weights_dtype,
                                      features_entry, card)
        files[fmt.README] = readme.render(description).encode()
        try:
            files[fmt.MANIFEST] = manifest.encode(bind(graphs, export_id, description, files))
        except ValueError as exc:
            raise ExportError(f"the manifest of model {name!r} is not valid JSON: {exc}") from None
        check_export_target(out_dir)
        atomic_write_folder(out_dir, files)
    finally:
        model.train(was_training)
    return {
        "dir": str(out_dir), "files": [str(out_dir / f) for f in files], "model": name,
        "opset": opset, "features": features_entry,
        "dtype": dtype, "export_id": export_id, "sizes": {f: len(data) for f, data in files.items()},
        "traced_sizes": traced,
        "max_abs_diff": report and report["max_abs_diff"],
        "log_prob_max_abs_diff": report and report["log_prob"],
        "conditionals_max_abs_diff": report and report["conditionals_params"],
        "step_max_abs_diff": report and report["step_params"],
        "features_max_rel_diff": report and report.get("features"),
        "seconds": time.perf_counter() - start,
    }


def describe_export(model: DensityModel, name: str, specs: list[dict], opset: int, dtype: str, export_id: str,
                    parity: dict | None, source: SavedModelInfo | None, weights_dtype: dict[str, str],
                    features: dict, stated: dict | None = None) -> dict:
    """The manifest's content, but for its list of files. ``family`` is the family's spec (a Gaussian
    mixture's M measured); ``value_kind``, ``num_categories``, ``value_range`` and ``components`` say the
    same for clients written before families."""
    info = describe_model(model, name)
    family = components(model, model.family)
    metrics = source.metrics if source is not None else {}
    transform = manifest.transform_entry(source)
    catalog = (source.extra or {}).get("card") if source is not None else None
    if transform and not catalog:  # a model of the user's own files: its transform names the data
        catalog = {"dataset": {"name": f"own data: {transform.get('source') or 'files'}",
                               "preprocessing": "the manifest's transform (its fingerprint.sha256 is the data's)"}}
    model_card = build_card(metrics, source.densreg_version if source is not None else "",
                            _preprocessing(metrics.get("dataset")), catalog, stated)
    return {
        "export_id": export_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"name": info.model, "qualified_name": info.qualified_name, "plugin": info.plugin,
                  "distribution": info.distribution, "version": info.distribution_version, "config": info.config,
                  "densreg_version": info.densreg_version},
        "event_shape": list(info.event_shape), "num_categories": info.num_categories,
        "num_positions": model.num_positions, "dtype": dtype,
        "family": family.spec(), "value_kind": family.value_kind,
        "value_range": [0, info.num_categories - 1] if family.discrete else None,
        **({} if family.discrete else {"components": family.param_size}),
        "ordering": info.ordering, "order": model.order.cpu().tolist(),
        "order_meaning": "order[d] is the flat pixel index (c*H*W + h*W + w) of the value generated at step d",
        "graphs": fmt.graph_descriptions(info.event_shape, family, specs, features if features["graph"] else None),
        "features": features,
        "weights_dtype": weights_dtype,
        "state": specs,
        "noise_rule": family.noise_rule, "draw_rule": family.draw_rule,
        "dataset": _dataset(model_card, metrics),
        "card": model_card,
        "transform": transform,
        "versions": {"onnx": onnx.__version__, "opset": opset, "ir_version": IR_VERSION,
                     "onnxruntime": ort.__version__, "onnxruntime_minimum": ORT_MINIMUM,
                     "torch": torch.__version__, "densreg": info.densreg_version},
        "parity": parity,
    }


__all__ = ["ConditionalsGraph", "FeaturesGraph", "StepGraph", "export_model", "parity_check"]
