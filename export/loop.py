"""sample.onnx: whole ancestral sampling as one ONNX Loop around the step and draw graphs.

    noise float64 (B, D) -> images int64 (B, C, H, W)             (Categorical)
    noise float64 (B, D, 3) -> images float32 (B, C, H, W)        (GaussianMixture: w uniforms per value)

The draw graph says which: its inputs are the family's parameters and ``noise`` (B,) or (B, w), its output
``value`` of the values' type.

The Loop runs D iterations; iteration d is ``step.onnx`` at position d (the iteration
counter, one per row), fed the value drawn at d-1 and the carried state, followed by ``draw.onnx`` on
noise column d. The step's weights stay in the outer graph (a Loop body may read them),
so the step and sample graphs can share them in weights.bin.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PREFIX = "sample__"  # names this module adds; kept apart from the step's own names


def _renamed_draw_nodes(draw: onnx.ModelProto, noise: str, value: str) -> tuple[list, list]:
    """The draw graph's nodes and initializers with internal names prefixed, its noise input and value output
    renamed; its other inputs, the family's parameters, keep their names (the step's outputs)."""
    outer = {i.name: i.name for i in draw.graph.input if i.name != "noise"}
    outer.update(noise=noise, value=value)
    rename = lambda n: outer.get(n, PREFIX + "draw_" + n) if n else n  # noqa: E731
    nodes = []
    for node in draw.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = rename(node.name or node.output[0])
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        nodes.append(copy)
    inits = []
    for tensor in draw.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(tensor.name)
        inits.append(copy)
    return nodes, inits


def consumed(node: onnx.NodeProto) -> set[str]:
    """The names ``node`` reads: its inputs and, for a control-flow node (If, Loop, Scan), every name its
    subgraphs read, which may be the outer graph's values (an If node of a cached step reads them so)."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs):
            for inner in graph.node:
                names |= consumed(inner)
    return names


def topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` ordered so that each comes after the producers of what it reads (``consumed``; converters
    may append nodes out of order; a graph must be sorted). Names no node produces count as given."""
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    waiting = [{producer[n] for n in consumed(node) if n in producer} for node in nodes]
    users: dict[int, list[int]] = {}
    for i, needs in enumerate(waiting):
        for j in needs:
            users.setdefault(j, []).append(i)
    ready = [i for i, needs in enumerate(waiting) if not needs]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in users.get(i, ()):
            waiting[j].discard(i)
            if not waiting[j]:
                ready.append(j)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return [nodes[i] for i in order]


def _value_type(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    """A body input/output of ``info``'s element type with unknown shape (no stale annotations)."""
    return helper.make_tensor_value_info(name, info.type.tensor_type.elem_type, None)


def sample_graph(step: onnx.ModelProto, draw: onnx.ModelProto, order: np.ndarray, event_shape,
                 state: list[dict], initial: list[np.ndarray]) -> onnx.ModelProto:
    """Build sample.onnx from the (inline-weight) step and draw models.

    ``state``: the manifest's state specs (name, output, batch_axis); ``initial``: each
    state's value for one batch row.
    """
    d = len(order)
    taken = {n for node in step.graph.node for n in node.output} | {t.name for t in step.graph.initializer}
    if taken & {"noise", "images"}:
        raise ValueError("the step graph uses the names 'noise' or 'images' internally")
    step_outputs = {o.name: o for o in step.graph.output}
    value_type = draw.graph.output[0].type.tensor_type.elem_type  # INT64 levels or FLOAT real values
    noise_rank = len([i for i in draw.graph.input if i.name == "noise"][0].type.tensor_type.shape.dim)
    p = PREFIX
    # -- the body: (iteration, cond, value, *state) -> (cond, value, *state, scan value)
    body_in = [helper.make_tensor_value_info(p + "d", TensorProto.INT64, []),
               helper.make_tensor_value_info(p + "cond_in", TensorProto.BOOL, []),
               helper.make_tensor_value_info("value", value_type, None)]
    body_in += [_value_type(step_outputs[s["output"]], s["name"]) for s in state]
    nodes = [helper.make_node("Expand", [p + "d", p + "batch"], ["position"], name=p + "position")]  # (B,)
    nodes += list(step.graph.node)
    nodes.append(helper.make_node("Gather", ["noise", p + "d"], [p + "noise_d"], axis=1, name=p + "noise_d"))
    draw_nodes, draw_inits = _renamed_draw_nodes(draw, p + "noise_d", p + "value_out")
    nodes += draw_nodes
    nodes.append(helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"], name=p + "cond"))
    nodes.append(helper.make_node("Identity", [p + "value_out"], [p + "value_scan"], name=p + "scan"))
    body_out = [helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info(p + "value_out", value_type, None)]
    for s in state:
        nodes.append(helper.make_node("Identity", [s["output"]], [p + s["output"]], name=p + s["output"]))
        body_out.append(_value_type(step_outputs[s["output"]], p + s["output"]))
    body_out.append(helper.make_tensor_value_info(p + "value_scan", value_type, None))
    body = helper.make_graph(topological(nodes), "sample_body", body_in, body_out)
    # -- the outer graph: initial value and state, the Loop, then generation order -> image layout
    inverse = np.empty(d, dtype=np.int64)
    inverse[np.asarray(order)] = np.arange(d)
    inits = [numpy_helper.from_array(np.array(d, dtype=np.int64), p + "trip"),
             numpy_helper.from_array(np.array(True), p + "true"),
             numpy_helper.from_array(inverse, p + "inverse_order"),
             numpy_helper.from_array(np.array([-1, *event_shape], dtype=np.int64), p + "image_shape"),
             *draw_inits, *step.graph.initializer]
    outer = [helper.make_node("Shape", ["noise"], [p + "batch"], start=0, end=1, name=p + "batch"),
             helper.make_node("ConstantOfShape", [p + "batch"], [p + "value0"],
                              value=numpy_helper.from_array(np.array([0], dtype=helper.tensor_dtype_to_np_dtype(
                                  value_type))), name=p + "value0")]
    loop_state = []
    for s, a in zip(state, initial):
        init = p + "initial_" + s["name"]
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a), init))
        if s["batch_axis"] is None:
            loop_state.append(init)
            continue
        dims = [numpy_helper.from_array(np.array([n], dtype=np.int64), f"{init}_dim{j}")
                for j, n in enumerate(a.shape) if j != s["batch_axis"]]
        inits += dims
        parts = [t.name for t in dims]
        parts.insert(s["batch_axis"], p + "batch")
        outer.append(helper.make_node("Concat", parts, [init + "_shape"], axis=0, name=init + "_shape"))
        outer.append(helper.make_node("Expand", [init, init + "_shape"], [init + "_tiled"], name=init + "_tiled"))
        loop_state.append(init + "_tiled")
    final = [p + "final_value", *[p + "final_" + s["name"] for s in state]]
    outer.append(helper.make_node("Loop", [p + "trip", p + "true", p + "value0", *loop_state],
                                  [*final, p + "values"], body=body, name=p + "loop"))
    noise_width = [] if noise_rank == 1 else [draw.graph.input[-1].type.tensor_type.shape.dim[1].dim_value]
    outer += [helper.make_node("Transpose", [p + "values"], [p + "by_row"], perm=[1, 0], name=p + "by_row"),
              helper.make_node("Gather", [p + "by_row", p + "inverse_order"], [p + "flat"], axis=1, name=p + "flat"),
              helper.make_node("Reshape", [p + "flat", p + "image_shape"], ["images"], name=p + "images")]
    graph = helper.make_graph(
        outer, "sample", [helper.make_tensor_value_info("noise", TensorProto.DOUBLE, ["batch", d, *noise_width])],
        [helper.make_tensor_value_info("images", value_type, ["batch", *event_shape])], initializer=inits)
    model = helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version,
                              producer_name="densreg", functions=list(step.functions))
    return model
