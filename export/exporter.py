"""Export a DensityModel to an ONNX folder (torch side).

``export_model(model, out_dir)`` traces ``conditionals.onnx`` and ``step.onnx`` (and
``features.onnx`` when the model defines ``features``) with the dynamo exporter, strips them (``lean``), builds ``draw.onnx`` and ``sample.onnx``
(``loop``), runs a parity check (onnxruntime vs torch on random valid inputs), computes
golden vectors, checks each file with ``onnx.checker.check_model(full_check=True)``, and
only then writes the folder (format.py lists its files) in one move: a model that cannot
be exported leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import re
import json
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from densreg.registry.atomic import atomic_write_folder, check_target, is_utf8_path
from densreg.registry.errors import DensregError, ExportError
from densreg.registry.protocol import DensityModel
from densreg.registry.saved import SavedModelInfo

from . import format as fmt
from . import lean, loop, manifest, readme, recurrent

EXAMPLE_BATCH = 3  # traced with this batch; the batch dimension is exported dynamic
LOGITS_ATOL = 1e-4  # parity tolerance on logits (absolute)
LOG_PROB_ATOL = 1e-3  # parity tolerance on log_prob, nats per image
FLOAT16_ATOL, FLOAT16_LOG_PROB_ATOL = 0.05, 0.5  # the same for --dtype float16 (logits, nats per image)
FLOAT16_KEEP = ("LSTM", "GRU", "RNN")  # graphs with these stay float32 under --dtype float16 (see _to_float16)
IR_VERSION = 10  # what the torch exporter writes
ORT_MINIMUM = "1.25"  # the oldest onnxruntime that refuses external data outside the model's folder


class ConditionalsGraph(torch.nn.Module):
    """images int64 (B, C, H, W) -> logits (B, D, K), log_prob (B,) in nats, pixel_log_prob (B, C, H, W) in nats."""

    def __init__(self, model: DensityModel) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inverse_order", torch.argsort(model.order), persistent=False)

    def forward(self, images):
        logits = self.model.conditional_logits(images).to(torch.float32)  # the format's dtype (no-op for most)
        values = self.model.to_sequence(images)
        if logits.shape[-1] == 2:  # log sigmoid(+-(l1 - l0)): half the work of log_softmax and a gather
            diff = logits[..., 1] - logits[..., 0]
            log_p = -torch.nn.functional.softplus((1 - 2 * values).to(diff.dtype) * diff)
        else:
            log_p = torch.log_softmax(logits, dim=-1).gather(-1, values.unsqueeze(-1)).squeeze(-1)
        pixel = log_p.index_select(1, self.inverse_order).reshape(images.shape)  # generation -> image layout
        return logits, log_p.sum(-1), pixel


class StepGraph(torch.nn.Module):
    """value (B,), position (), *state -> logits (B, K), *new_state."""

    def __init__(self, model: DensityModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, value, position, *state):
        logits, new_state = self.model.step(value, position, tuple(state))
        return (logits.to(torch.float32), *new_state)


class FeaturesGraph(torch.nn.Module):
    """images int64 (B, C, H, W) -> features float32 (B, F): the model's ``features``."""

    def __init__(self, model: DensityModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.features(images).to(torch.float32)


def features_meaning(model: DensityModel) -> str:
    """What the model's ``features`` are, from its own docstring (one paragraph), for the manifest."""
    doc = getattr(type(model).features, "__doc__", None)  # not the protocol's inherited one
    text = " ".join(inspect.cleandoc(doc).split()) if doc else ""
    return text or f"{type(model).__name__}.features (undocumented)"


def draw_graph(opset: int = fmt.OPSET) -> onnx.ModelProto:
    """``categorical_from_uniform`` as ONNX: logits float (B, K), noise float64 (B,) -> value int64 (B,)."""
    const = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
    nodes = [
        helper.make_node("Cast", ["logits"], ["logits64"], to=TensorProto.DOUBLE),
        helper.make_node("Softmax", ["logits64"], ["probs"], axis=-1),
        helper.make_node("CumSum", ["probs", "axis"], ["cdf"]),
        helper.make_node("Unsqueeze", ["noise", "last"], ["noise_col"]),
        helper.make_node("Less", ["cdf", "noise_col"], ["below"]),
        helper.make_node("Cast", ["below"], ["below64"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["below64", "last"], ["count"], keepdims=0),
        helper.make_node("Shape", ["logits"], ["k"], start=1, end=2),
        helper.make_node("Sub", ["k", "one"], ["k_minus_1"]),
        helper.make_node("Min", ["count", "k_minus_1"], ["value"]),
    ]
    graph = helper.make_graph(
        nodes, "draw",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "K"]),
         helper.make_tensor_value_info("noise", TensorProto.DOUBLE, ["batch"])],
        [helper.make_tensor_value_info("value", TensorProto.INT64, ["batch"])],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [], [1]), const("last", [-1]), const("one", [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                             producer_name="densreg")


def _summary(exc: BaseException) -> str:
    """One readable line from the exporter's long message: the cause and the line that raised it."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in str(inner).strip().splitlines() if ln.strip()]
    cause = f"{type(inner).__name__}: {lines[0] if lines else ''}"[:400]
    where = re.search(r"The following call raised this error:\s*\n\s*File \"([^\"]+)\", line (\d+), in (\S+)\n\s*(.+)",
                      text)
    if where:
        cause += f" (at {Path(where[1]).name}:{where[2]} in {where[3]}: {where[4].strip()})"
    return cause


# torch's structured-trace logger sends DEBUG records with empty messages while tracing (pytest and
# other log capturers showed them as dozens of blank "DEBUG torch.__trace" lines on a failed export);
# they only matter to someone collecting a trace with TORCH_TRACE.
QUIET_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir", *(() if os.environ.get("TORCH_TRACE") else ("torch.__trace",)))


@contextlib.contextmanager
def _quiet(*logger_names: str):
    """Silence loggers (the exporter warns per missing optional package, its optimizer per
    constant it cannot fold)."""
    loggers = [logging.getLogger(n) for n in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@functools.lru_cache(maxsize=None)
def _torchlib_registry(opset: int):
    """The exporter's table of ONNX translations, built once per process (None if unavailable).

    ``torch.onnx.export(dynamo=True)`` rebuilds it on every call by parsing the source of
    about a thousand onnxscript functions (seconds each time); ``_core.export`` is the
    function it then calls, and takes the table as an argument. If this torch lays its
    exporter out differently, ``_onnx_export`` uses the public call.
    """
    try:
        from torch.onnx._internal.exporter import _core, _registration

        if "registry" not in inspect.signature(_core.export).parameters:
            return None
        return _core, _registration.ONNXRegistry.from_torchlib(opset_version=opset)
    except Exception:  # noqa: BLE001 - any change in the private layout: use the public API
        return None


def _onnx_export(program, args, opset: int, **names):
    """torch.onnx.export(program, dynamo=True), with the translation table cached and
    ``_optimize`` in place of the exporter's own optimizer."""
    cached = _torchlib_registry(opset)
    if cached is None:
        onnx_program = torch.onnx.export(program, args, dynamo=True, verbose=False, opset_version=opset,
                                         optimize=False, **names)
    else:
        core, registry = cached
        onnx_program = core.export(program, args, registry=registry, verbose=False, opset_version=opset,
                                   optimize=False, **names)
    _optimize(onnx_program.model)
    return onnx_program


def _optimize(model) -> None:
    """onnxscript's optimizer (``optimize_ir``: inline, fold constants, drop unused nodes, lift
    constants, deduplicate initializers, merge common subexpressions) without its pattern
    rewriter, in place on the exporter's ``onnx_ir`` model.

    The rewriter tries each of its rules at every node, repeatedly: on row-lstm's default
    graph (2000 nodes, rows unrolled) it took 630 of the 750 s an export spent in ONNX, for
    a graph 6 % smaller; onnxruntime applies such rewrites itself when it loads a graph.
    """
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import fold_constants_ir

    common.InlinePass()(model)
    for _ in range(2):  # as optimize_ir: folding can expose more folding
        fold_constants_ir(model)
        common.RemoveUnusedNodesPass()(model)
    for step in (common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass(),
                 common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                 common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
                 common.CommonSubexpressionEliminationPass(), common.OutputFixPass(), common.NameFixPass()):
        step(model)


def _name_batch_axis(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Call the symbolic batch dimension "batch" (torch.export names it s0, s4, ...)."""
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if symbol:
        for info in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
            for dim in info.type.tensor_type.shape.dim:
                if dim.dim_param == symbol:
                    dim.dim_param = "batch"
    return proto


def _to_onnx(module, args, input_names, output_names, dynamic_shapes, what: str, name: str,
             opset: int) -> onnx.ModelProto:
    try:
        # no_grad: the exporter's type-promotion pass reruns the graph, and with grad enabled it
        # runs a ``scan`` (the spatial PixelRNNs' rows and diagonals) through its autograd
        # rule, which fails on a symbolic batch size.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet(*QUIET_LOGGERS), \
                recurrent.fast_lstm_shapes(), torch.no_grad():
            warnings.simplefilter("ignore")
            # torch.export first, by hand: torch.onnx.export would otherwise fall back to
            # draft_export, which bakes a data-dependent value (say int(position)) in silently.
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
            program = _onnx_export(program, args, opset, input_names=input_names, output_names=output_names)
        proto = _name_batch_axis(program.model_proto)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one clear error
        raise ExportError(f"cannot export model {name!r}: its {what} does not export to ONNX: "
                          f"{_summary(exc)}") from exc
    return proto


def _features(model: DensityModel, images: torch.Tensor, name: str, opset: int,
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
        proto = _to_onnx(FeaturesGraph(model), (images,), ["images"], ["features"], ({0: batch},), "features",
                         name, opset)
    except ExportError as exc:
        return None, {"graph": None, "reason": str(exc)}
    return proto, {"graph": fmt.FEATURES, "shape": ["B", int(probe.shape[1])], "size": int(probe.shape[1]),
                   "dtype": "float32", "meaning": features_meaning(model)}


def _batch_axis(a: torch.Tensor, b: torch.Tensor, rows_a: int, rows_b: int) -> int | None:
    """The one axis along which the state for ``rows_a`` and ``rows_b`` batch rows differ (None: no axis)."""
    if a.dim() != b.dim():
        return -1
    differ = [i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n]
    if not differ:
        return None
    if len(differ) == 1 and (a.shape[differ[0]], b.shape[differ[0]]) == (rows_a, rows_b):
        return differ[0]
    return -1


def _state_specs(model: DensityModel, name: str) -> tuple[list[dict], tuple[torch.Tensor, ...]]:
    """Describe the state tensors: each has one batch axis (any position) or none, and the
    same initial value in every batch row (so the runtime can build it from one row)."""
    one, many = model.initial_state(1), model.initial_state(EXAMPLE_BATCH)
    if not isinstance(one, tuple) or len(one) != len(many) or not all(isinstance(t, torch.Tensor) for t in one + many):
        raise ExportError(f"cannot export model {name!r}: initial_state must return a tuple of tensors")
    specs = []
    for i, (a, b) in enumerate(zip(one, many)):
        axis = _batch_axis(a, b, 1, EXAMPLE_BATCH)
        if axis == -1 or a.dtype != b.dtype:
            raise ExportError(f"cannot export model {name!r}: state tensor {i} has shapes {tuple(a.shape)} "
                              f"(batch 1) and {tuple(b.shape)} (batch {EXAMPLE_BATCH}); expected one axis of "
                              "size batch and the others fixed")
        if not torch.equal(b, a.expand_as(b)):
            raise ExportError(f"cannot export model {name!r}: the initial value of state tensor {i} differs "
                              "between batch rows")
        initial = a.detach().cpu().numpy()
        shape = ["batch" if j == axis else n for j, n in enumerate(a.shape)]
        specs.append({"name": f"state_{i}", "output": f"new_state_{i}", "dtype": initial.dtype.name, "shape": shape,
                      "batch_axis": axis, "initial": fmt.encode_array(initial)})
    return specs, many


def _dynamic(spec: dict, batch) -> dict:
    return {} if spec["batch_axis"] is None else {spec["batch_axis"]: batch}


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session for the parity check and golden vectors, with the runtime's options: one
    intra-op thread unless $OMP_NUM_THREADS says (the checks make D small step calls, which
    onnxruntime's spinning thread pool slows down on a busy machine)."""
    from .runtime import session_options

    return ort.InferenceSession(proto.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])


@torch.no_grad()
def run_parity(check, name: str, *args, **kwargs) -> dict:
    """``check(*args, **kwargs)`` (a parity check); an export onnxruntime cannot run becomes one ExportError.

    Torch runs on the threads onnxruntime gets (one unless $OMP_NUM_THREADS says): the check's
    D small step calls waited up to 30 ms each on torch's second thread on a busy 2-core machine
    (a row-lstm step's 1x3 convolution: 24 ms on 2 threads, 0.13 ms on one).
    """
    from .runtime import DEFAULT_SAMPLING_THREADS, resolve_threads

    threads = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(None, DEFAULT_SAMPLING_THREADS))
    try:
        return check(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"model {name!r} exported, but onnxruntime cannot run the export: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        torch.set_num_threads(threads)


def parity_check(model: DensityModel, conditionals: onnx.ModelProto, step: onnx.ModelProto,
                 batch: int = 2, seed: int = 0, positions: int | None = None,
                 features: onnx.ModelProto | None = None) -> dict:
    """Max abs differences, onnxruntime (CPU) vs torch, on random images of ``batch`` rows.

    ``conditionals_logits``, ``log_prob`` (nats; also how far pixel_log_prob's sum is from it)
    and ``pixel_log_prob`` (nats) from conditionals.onnx;
    ``step_logits`` from step.onnx teacher-forced along the same images for the
    first ``positions`` positions (default all D), each side carrying its own state;
    with ``features`` (features.onnx), ``features``: the largest difference divided by
    max(1, largest |feature|) (features have no common scale).
    """
    device = model.order.device
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, model.num_categories, (batch, *model.event_shape), generator=gen).to(device)
    logits, log_prob, pixel = ConditionalsGraph(model)(images)
    ort_logits, ort_log_prob, ort_pixel = _session(conditionals).run(None, {"images": images.cpu().numpy()})
    result = {"conditionals_logits": float(np.abs(ort_logits - logits.cpu().numpy()).max()),
              "log_prob": max(float(np.abs(ort_log_prob - log_prob.cpu().numpy()).max()),
                              float(np.abs(ort_pixel.sum((1, 2, 3)) - ort_log_prob).max())),
              "pixel_log_prob": float(np.abs(ort_pixel - pixel.cpu().numpy()).max())}
    if features is not None:
        ours = FeaturesGraph(model)(images).cpu().numpy()
        theirs = _session(features).run(None, {"images": images.cpu().numpy()})[0]
        result["features"] = float(np.abs(theirs - ours).max() / max(1.0, float(np.abs(ours).max(initial=0.0))))
    session = _session(step)
    inputs = {i.name for i in session.get_inputs()}
    seq = model.to_sequence(images)
    state = model.initial_state(batch)
    ort_state = [t.cpu().numpy() for t in state]
    value = torch.zeros(batch, dtype=torch.int64, device=device)
    worst = 0.0
    for d in range(model.num_positions if positions is None else min(positions, model.num_positions)):
        logits, state = model.step(value, torch.tensor(d, device=device), state)
        feed = {"value": value.cpu().numpy(), "position": np.array(d, dtype=np.int64),
                **{f"state_{i}": s for i, s in enumerate(ort_state)}}
        ort_logits, *ort_state = session.run(None, {k: v for k, v in feed.items() if k in inputs})
        worst = max(worst, float(np.abs(ort_logits - logits.cpu().numpy()).max()))
        value = seq[:, d]
    result["step_logits"] = worst
    result["max_abs_diff"] = max(result["conditionals_logits"], result["step_logits"])
    return result


def _check_target(out_dir: Path) -> None:
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


def _dataset(source: SavedModelInfo | None) -> dict | None:
    """The training data as the checkpoint recorded it: name, preprocessing, NLL figures (nats)."""
    metrics = source.metrics if source is not None else {}
    if not metrics.get("dataset"):
        return None
    from densreg.registry import api

    try:
        preprocessing = api.get_dataset(metrics["dataset"]).description
    except DensregError:
        preprocessing = ""
    return {"name": metrics["dataset"], "preprocessing": preprocessing,
            **{key: metrics.get(key) for key in ("test_nll_nats", "valid_nll_nats", "train_nll_nats")}}


def _to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and arithmetic in float16, inputs and outputs as before (onnxruntime's converter).

    A graph with a recurrent op (FLOAT16_KEEP) is returned unchanged: the converter turns the
    op's weights to float16 but not its inputs, and onnxruntime 1.31's CPU provider crashes on
    a float16 LSTM.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if any(node.op_type in FLOAT16_KEEP for node in proto.graph.node):
        return proto
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
    nodes = loop.topological(list(half.graph.node))  # the converter appends its input casts last
    del half.graph.node[:]
    half.graph.node.extend(nodes)
    return half


def _lean(conditionals, step, features, dtype: str):
    """The traced graphs stripped (``lean``) and, for ``dtype`` float16, converted; ``features`` may be None."""
    conditionals, step = lean.strip(conditionals), lean.strip(step)
    features = features and lean.strip(features)
    if dtype == "float16":
        conditionals, step = _to_float16(conditionals), _to_float16(step)
        features = features and _to_float16(features)
    return conditionals, step, features


def _seal(graphs: dict, export_id: str, golden: dict, shared: list) -> tuple[dict[str, bytes], dict[str, str]]:
    """Stamp and check every graph; the folder's files so far (weights.bin shared by the ``shared`` graphs,
    the graphs, golden.json) and each graph's weights dtype."""
    for filename, proto in graphs.items():
        onnx.helper.set_model_props(proto, {"format": fmt.FORMAT, "export_id": export_id,
                                            "graph": filename.removesuffix(".onnx")})
        onnx.checker.check_model(proto, full_check=True)
    files = {fmt.WEIGHTS: lean.share_weights(shared, fmt.WEIGHTS)}
    files.update({filename: proto.SerializeToString() for filename, proto in graphs.items()})
    files[fmt.GOLDEN] = (json.dumps(golden) + "\n").encode()
    weights_dtype = {f: "float16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in p.graph.initializer)
                     else "float32" for f, p in graphs.items()}
    return files, weights_dtype


def _golden(model: DensityModel, conditionals, step, sample, specs, initial, seed: int = 0, n: int = 2,
            features: onnx.ModelProto | None = None) -> dict:
    """Golden vectors from the export itself: noise of ``seed`` and its samples (sample.onnx and the
    step loop must agree), then those samples and ``n`` random images with their log_prob (nats)
    and, with ``features``, their features (float32 (2n, F), ``fmt.encode_array``)."""
    from .runtime import step_loop

    d = model.num_positions
    noise = np.random.default_rng(seed).random((n, d))
    samples = _session(sample).run(["images"], {"noise": noise})[0]
    values = step_loop(_session(step), specs, initial, noise)
    by_steps = np.empty_like(values)
    by_steps[:, model.order.cpu().numpy()] = values
    if not np.array_equal(by_steps.reshape(samples.shape), samples):
        raise ExportError("sample.onnx and the step loop draw different images from the same noise")
    rng = np.random.default_rng(seed + 1)
    images = np.concatenate([samples, rng.integers(0, model.num_categories, (n, *model.event_shape))])
    log_prob = _session(conditionals).run(["log_prob"], {"images": images})[0]
    golden = {"seed": seed, "noise": noise.tolist(), "samples": samples.tolist(), "images": images.tolist(),
              "log_prob": log_prob.astype(np.float64).tolist(), "log_prob_atol": 1e-3}
    if features is not None:
        golden["features"] = fmt.encode_array(_session(features).run(["features"], {"images": images})[0])
        golden["features_tolerance"] = "abs(difference) <= 1e-3 * max(1, max(abs(features)))"
    return golden


def export_model(model: DensityModel, out_dir, name: str | None = None, parity: bool = True,
                 opset: int = fmt.OPSET, atol: float = LOGITS_ATOL, log_prob_atol: float = LOG_PROB_ATOL,
                 parity_positions: int | None = None, dtype: str = "float32",
                 source: SavedModelInfo | None = None) -> dict:
    """Export ``model`` to the folder ``out_dir``; returns a report.

    ``dtype`` "float16" stores weights and arithmetic in half precision (inputs and outputs
    keep their types); its parity tolerances are FLOAT16_ATOL and FLOAT16_LOG_PROB_ATOL unless
    given. ``source``: the checkpoint's SavedModelInfo (training dataset and NLL for the manifest).

    Keys: ``dir``, ``files`` (paths), ``sizes`` (bytes per file), ``traced_sizes`` (bytes of the
    conditionals and step graphs as traced, before ``lean``), ``model``, ``opset``, ``dtype``,
    ``export_id``, ``seconds``, and with ``parity``: ``max_abs_diff`` (logits, both graphs),
    ``log_prob_max_abs_diff`` (nats: the largest change of log p(x) per image against torch),
    ``conditionals_max_abs_diff``, ``step_max_abs_diff``, ``features_max_rel_diff`` (else None);
    ``features``: the manifest's entry (``graph`` "features.onnx", ``size`` F, ``meaning``; or
    ``graph`` None and the ``reason``: the model has no features, or they do not export).
    Raises ExportError (naming the model and the cause) when a graph does not
    export or parity exceeds ``atol`` / ``log_prob_atol``; nothing is written then.
    """
    if not isinstance(model, DensityModel):
        raise ExportError(f"cannot export {type(model).__name__}: not a DensityModel")
    name = name or getattr(model, "registry_name", None) or type(model).__name__
    if opset < 18:
        raise ExportError(f"opset {opset} is too old; the exporter needs 18 or newer")
    if dtype not in fmt.DTYPES:
        raise ExportError(f"unknown export dtype {dtype!r}; expected one of {', '.join(fmt.DTYPES)}")
    if dtype == "float16" and (atol, log_prob_atol) == (LOGITS_ATOL, LOG_PROB_ATOL):
        atol, log_prob_atol = FLOAT16_ATOL, FLOAT16_LOG_PROB_ATOL
    out_dir = Path(out_dir)
    _check_target(out_dir)  # before minutes of tracing, and again just before writing
    if model.continuous:  # real values: mixture parameters instead of logits (export/continuous.py)
        from .continuous import export_continuous

        return export_continuous(model, out_dir, name, parity, opset, atol, log_prob_atol, parity_positions, dtype,
                                 source)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        device = model.order.device
        batch = torch.export.Dim("batch", min=1)
        images = torch.zeros(EXAMPLE_BATCH, *model.event_shape, dtype=torch.int64, device=device)
        conditionals = _to_onnx(ConditionalsGraph(model), (images,), ["images"],
                                ["logits", "log_prob", "pixel_log_prob"], ({0: batch},), "conditional_logits",
                                name, opset)
        specs, state = _state_specs(model, name)
        value = torch.zeros(EXAMPLE_BATCH, dtype=torch.int64, device=device)
        position = torch.tensor(1, dtype=torch.int64, device=device)
        state_names = [s["name"] for s in specs]
        step = _to_onnx(StepGraph(model), (value, position, *state), ["value", "position", *state_names],
                        ["logits", *[f"new_{n}" for n in state_names]],
                        ({0: batch}, {}, *([tuple(_dynamic(s, batch) for s in specs)] if state else [])),
                        "step", name, opset)
        features, features_entry = _features(model, images, name, opset, batch)
        traced = {fmt.CONDITIONALS: conditionals.ByteSize(), fmt.STEP: step.ByteSize()}
        conditionals, step, features = _lean(conditionals, step, features, dtype)
        report = None
        if parity:
            report = run_parity(parity_check, name, model, conditionals, step, positions=parity_positions,
                                features=features)
            if not (report["max_abs_diff"] <= atol and report["log_prob"] <= log_prob_atol):  # NaN fails
                raise ExportError(f"export of model {name!r} fails its parity check: onnxruntime differs from "
                                  f"torch by {report['conditionals_logits']:.3g} (conditional logits), "
                                  f"{report['step_logits']:.3g} (step logits), {report['log_prob']:.3g} nats "
                                  f"(log_prob); tolerances {atol:g} and {log_prob_atol:g}")
            if features is not None and not report["features"] <= atol:
                raise ExportError(f"export of model {name!r} fails its parity check: onnxruntime's features differ "
                                  f"from torch's by {report['features']:.3g} of their scale; tolerance {atol:g}")
        initial = [fmt.decode_array(s["initial"]) for s in specs]
        draw = draw_graph(opset)
        try:
            sample = loop.sample_graph(step, draw, model.order.cpu().numpy(), tuple(model.event_shape), specs,
                                       initial)
            golden = _golden(model, conditionals, step, sample, specs, initial, features=features)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"model {name!r} exported, but its sampling graph fails: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0]}") from exc
        export_id = uuid.uuid4().hex
        graphs = {fmt.CONDITIONALS: conditionals, fmt.STEP: step, fmt.DRAW: draw, fmt.SAMPLE: sample,
                  **({fmt.FEATURES: features} if features is not None else {})}
        files, weights_dtype = _seal(graphs, export_id, golden, shared=[conditionals, step, sample,
                                                                        *([features] if features else [])])
        description = _describe(model, name, specs, opset, dtype, export_id, report, source, weights_dtype,
                                features_entry)
        files[fmt.README] = readme.render(description).encode()
        files[fmt.MANIFEST] = manifest.build(description, files)
        _check_target(out_dir)
        atomic_write_folder(out_dir, files)
    finally:
        model.train(was_training)
    return {
        "dir": str(out_dir), "files": [str(out_dir / f) for f in fmt.FILES if f in files], "model": name,
        "opset": opset, "features": features_entry,
        "dtype": dtype, "export_id": export_id, "sizes": {f: len(data) for f, data in files.items()},
        "traced_sizes": traced,
        "max_abs_diff": report and report["max_abs_diff"],
        "log_prob_max_abs_diff": report and report["log_prob"],
        "conditionals_max_abs_diff": report and report["conditionals_logits"],
        "step_max_abs_diff": report and report["step_logits"],
        "features_max_rel_diff": report and report.get("features"),
        "seconds": time.perf_counter() - start,
    }


def _describe(model: DensityModel, name: str, specs: list[dict], opset: int, dtype: str, export_id: str,
              parity: dict | None, source: SavedModelInfo | None, weights_dtype: dict[str, str],
              features: dict) -> dict:
    """The manifest's content, but for its list of files."""
    info = SavedModelInfo.describe(model, name)
    return {
        "export_id": export_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"name": info.model, "qualified_name": info.qualified_name, "plugin": info.plugin,
                  "distribution": info.distribution, "version": info.distribution_version, "config": info.config,
                  "densreg_version": info.densreg_version},
        "event_shape": list(info.event_shape), "num_categories": info.num_categories,
        "num_positions": model.num_positions, "value_range": [0, info.num_categories - 1], "dtype": dtype,
        "ordering": info.ordering, "order": model.order.cpu().tolist(),
        "order_meaning": "order[d] is the flat pixel index (c*H*W + h*W + w) of the value generated at step d",
        "graphs": fmt.graph_descriptions(info.event_shape, info.num_categories, specs,
                                         features if features["graph"] else None),
        "features": features,
        "weights_dtype": weights_dtype,
        "state": specs,
        "noise_rule": fmt.NOISE_RULE, "draw_rule": fmt.DRAW_RULE,
        "dataset": _dataset(source),
        "versions": {"onnx": onnx.__version__, "opset": opset, "ir_version": IR_VERSION,
                     "onnxruntime": ort.__version__, "onnxruntime_minimum": ORT_MINIMUM,
                     "torch": torch.__version__, "densreg": info.densreg_version},
        "parity": parity,
    }


__all__ = ["ConditionalsGraph", "FeaturesGraph", "StepGraph", "draw_graph", "export_model", "parity_check"]
