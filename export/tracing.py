"""Tracing a model's graphs into ONNX (torch side): the wrappers traced (conditionals, step, features),
the dynamo exporter with its translation table cached and a lighter optimizer, the state tensors'
description, and float16 conversion. Every failure becomes one ExportError line naming the model.

The wrappers are written once for every family: ``ConditionalsGraph`` outputs the family's
parameters (``normalized``, float32) named ``family.param_names``, ``log_prob`` and ``pixel_log_prob``
(nats); ``StepGraph`` the parameters of one position and the new state.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import re
import warnings
from pathlib import Path

import onnx
import torch

from densreg.registry.errors import ExportError
from densreg.registry.protocol import DensityModel

from . import format as fmt
from . import lean, recurrent

EXAMPLE_BATCH = 3  # traced with this batch; the batch dimension is exported dynamic
FLOAT16_KEEP = ("LSTM", "GRU", "RNN")  # graphs with these stay float32 under --dtype float16 (see to_float16)


class ConditionalsGraph(torch.nn.Module):
    """values (B, C, H, W) -> the family's parameters (B, D, P) each, log_prob (B,) in nats, pixel_log_prob
    (B, C, H, W) in nats."""

    def __init__(self, model: DensityModel) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inverse_order", torch.argsort(model.order), persistent=False)

    def forward(self, images):
        family = self.model.family
        raw = family.unpack(self.model.conditional_params(images))
        params = family.normalized(tuple(t.to(torch.float32) for t in raw))
        values = self.model.to_sequence(images)
        log_p = family.export_log_prob(params, values if family.discrete else values.to(torch.float32))
        pixel = log_p.index_select(1, self.inverse_order).reshape(images.shape)  # generation -> image layout
        return (*params, log_p.sum(-1), pixel)


class TracingError(ExportError):
    """A graph (``graph``: "conditional_params", "step" or "features") that torch cannot export to ONNX."""

    def __init__(self, graph: str, message: str) -> None:
        super().__init__(message)
        self.graph = graph


class StepGraph(torch.nn.Module):
    """value (B,), position int64 (B,), *state (batch on axis 0) -> the family's parameters (B, P) each,
    *new_state (batch on axis 0).

    ``axes``: each state tensor's batch axis in the model's own layout (None: no batch axis); the graph
    moves it to axis 0 on the way in and out, so every state of every export carries the batch on axis 0
    (what dynamic batching needs). The model's ``step`` takes one position: the graph runs it at
    ``position[0]``, and where the rows' positions differ its parameters come out NaN (never a silent
    wrong answer when a server batches requests at different steps).
    """

    def __init__(self, model: DensityModel, axes: list[int | None] | None = None) -> None:
        super().__init__()
        self.model = model
        self.axes = list(axes or [])

    def forward(self, value, position, *state):
        family = self.model.family
        axes = self.axes or [0] * len(state)
        # contiguous: a model may return a state unchanged in one branch of a torch.cond and computed in the
        # other, and the branches' outputs must have the same strides
        state = tuple(t if a in (None, 0) else t.movedim(0, a).contiguous() for t, a in zip(state, axes))
        first = position[0]
        out, new_state = self.model.step(value, first, state)
        params = tuple(t.to(torch.float32) for t in family.unpack(family.params(out)))
        same = (position == first).all()
        params = tuple(torch.where(same, t, torch.full_like(t, float("nan"))) for t in family.normalized(params))
        new_state = tuple(t if a in (None, 0) else t.movedim(a, 0) for t, a in zip(new_state, axes))
        # A state tensor returned as it came in would make a graph output that is its input, which
        # onnxruntime refuses: pass it on as a copy.
        new_state = tuple(t.clone() if any(t is s for s in state) else t for t in new_state)
        return (*params, *new_state)


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


def to_onnx(module, args, input_names, output_names, dynamic_shapes, what: str, name: str,
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
        raise TracingError(what, f"cannot export model {name!r}: its {what} does not export to ONNX: "
                                 f"{_summary(exc)}") from exc
    return proto


def batch_axis(a: torch.Tensor, b: torch.Tensor, rows_a: int, rows_b: int) -> int | None:
    """The one axis along which the state for ``rows_a`` and ``rows_b`` batch rows differ (None: no axis)."""
    if a.dim() != b.dim():
        return -1
    differ = [i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n]
    if not differ:
        return None
    if len(differ) == 1 and (a.shape[differ[0]], b.shape[differ[0]]) == (rows_a, rows_b):
        return differ[0]
    return -1


def state_specs(model: DensityModel, name: str) -> tuple[list[dict], tuple[torch.Tensor, ...], list[int | None]]:
    """Describe the state tensors as step.onnx carries them: each has one batch axis (any position in the
    model, axis 0 in the graph) or none, and the same initial value in every batch row (so the runtime can
    build it from one row). Returns the specs, the state for EXAMPLE_BATCH rows in the graph's layout, and
    each tensor's batch axis in the model's layout (``StepGraph``'s ``axes``)."""
    one, many = model.initial_state(1), model.initial_state(EXAMPLE_BATCH)
    if not isinstance(one, tuple) or len(one) != len(many) or not all(isinstance(t, torch.Tensor) for t in one + many):
        raise ExportError(f"cannot export model {name!r}: initial_state must return a tuple of tensors")
    specs, axes, graph_state = [], [], []
    for i, (a, b) in enumerate(zip(one, many)):
        axis = batch_axis(a, b, 1, EXAMPLE_BATCH)
        if axis == -1 or a.dtype != b.dtype:
            raise ExportError(f"cannot export model {name!r}: state tensor {i} has shapes {tuple(a.shape)} "
                              f"(batch 1) and {tuple(b.shape)} (batch {EXAMPLE_BATCH}); expected one axis of "
                              "size batch and the others fixed")
        if not torch.equal(b, a.expand_as(b)):
            raise ExportError(f"cannot export model {name!r}: the initial value of state tensor {i} differs "
                              "between batch rows")
        if axis not in (None, 0):
            a, b = a.movedim(axis, 0), b.movedim(axis, 0)
        initial = a.detach().cpu().contiguous().numpy()
        graph_axis = None if axis is None else 0
        shape = ["batch" if j == graph_axis else n for j, n in enumerate(a.shape)]
        specs.append({"name": f"state_{i}", "output": f"new_state_{i}", "dtype": initial.dtype.name, "shape": shape,
                      "batch_axis": graph_axis, "initial": fmt.encode_array(initial)})
        axes.append(axis)
        graph_state.append(b.contiguous())
    return specs, tuple(graph_state), axes


def dynamic(spec: dict, batch) -> dict:
    return {} if spec["batch_axis"] is None else {spec["batch_axis"]: batch}


def to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and arithmetic in float16, inputs and outputs as before (onnxruntime's converter).

    A graph with a recurrent op (FLOAT16_KEEP) is returned unchanged: the converter turns the
    op's weights to float16 but not its inputs, and onnxruntime 1.31's CPU provider crashes on
    a float16 LSTM.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from . import loop

    if any(node.op_type in FLOAT16_KEEP for node in proto.graph.node):
        return proto
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
    nodes = loop.topological(list(half.graph.node))  # the converter appends its input casts last
    del half.graph.node[:]
    half.graph.node.extend(nodes)
    return half


def lean_graphs(conditionals, step, features, dtype: str):
    """The traced graphs stripped (``lean``) and, for ``dtype`` float16, converted; ``features`` may be None."""
    conditionals, step = lean.strip(conditionals), lean.strip(step)
    features = features and lean.strip(features)
    if dtype == "float16":
        conditionals, step = to_float16(conditionals), to_float16(step)
        features = features and to_float16(features)
    return conditionals, step, features

