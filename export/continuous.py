"""Export of models of real values (``ContinuousDensityModel``): the torch side.

The folder holds ``conditionals.onnx`` (values float32 (B, C, H, W) -> the mixture parameters
``logits``, ``means``, ``log_scales`` (B, D, M) in generation order, ``log_prob`` (B,) and
``pixel_log_prob`` (B, C, H, W), log densities in nats), ``step.onnx`` (value float32 (B,),
position, state -> the three (B, M), new state), ``features.onnx`` when the model has features,
``weights.bin``, ``golden.json``, ``README.md`` and ``manifest.json`` (``value_kind``
"continuous"). There is no ``draw.onnx`` or ``sample.onnx``: the runtime draws in numpy
(``format.draw_mixture_numpy``, the same float64 arithmetic as torch's ``mixture_from_uniform``).

Parity: log_prob within ``log_prob_atol`` nats (1e-3), the mixture parameters of both graphs
(log weights after log_softmax, means, log-scales) within ``atol`` of max(1, |value|), on the
model's own samples; the golden samples must be drawn alike by the exported step loop and torch.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import torch

from densreg.registry.atomic import atomic_write_folder
from densreg.registry.errors import ExportError
from densreg.registry.mixtures import MixtureParams, mixture_log_density

from . import format as fmt
from . import manifest, readme
from .exporter import (EXAMPLE_BATCH, _check_target, _describe, _dynamic, _features, _lean, _seal, _session,
                       _state_specs, _to_onnx, run_parity)

PARAMS = ("logits", "means", "log_scales")
SAMPLE_ATOL = 1e-3  # golden samples: step loop in onnxruntime against torch, per value


class ContinuousConditionalsGraph(torch.nn.Module):
    """values float32 (B, C, H, W) -> logits, means, log_scales (B, D, M), log_prob (B,), pixel_log_prob."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inverse_order", torch.argsort(model.order), persistent=False)

    def forward(self, images):
        params = self.model.conditional_params(images).map(lambda t: t.to(torch.float32))
        params = params._replace(logits=torch.log_softmax(params.logits, -1))  # O(1) in float32
        log_p = mixture_log_density(params, self.model.to_sequence(images.to(torch.float32)))
        pixel = log_p.index_select(1, self.inverse_order).reshape(images.shape)
        return (*params, log_p.sum(-1), pixel)


class ContinuousStepGraph(torch.nn.Module):
    """value float32 (B,), position (), *state -> logits, means, log_scales (B, M), *new_state."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, value, position, *state):
        params, new_state = self.model.step(value, position, tuple(state))
        params = MixtureParams(*params).map(lambda t: t.to(torch.float32))
        return (torch.log_softmax(params.logits, -1), params.means, params.log_scales, *new_state)


def _worst(ours: list[torch.Tensor], theirs: list[np.ndarray]) -> float:
    """Largest difference of the mixture parameters, each relative to max(1, |value|)."""
    return max(float(np.abs(b - a.cpu().numpy()).max() / max(1.0, float(a.abs().max()))) for a, b in zip(ours, theirs))


@torch.no_grad()
def parity_check(model, conditionals, step, batch: int = 2, seed: int = 0, positions: int | None = None,
                 features=None) -> dict:
    """onnxruntime (CPU) vs torch on ``batch`` samples of the model: ``conditionals_params``, ``log_prob``
    (nats, also how far pixel_log_prob's sum is from it), ``step_params`` along the same values
    (first ``positions`` positions), ``features`` (relative), ``max_abs_diff`` (params of both graphs)."""
    values = model.sample(batch, generator=torch.Generator().manual_seed(seed)).to(torch.float32)
    ours = ContinuousConditionalsGraph(model)(values)
    theirs = _session(conditionals).run(None, {"images": values.cpu().numpy()})
    result = {"conditionals_params": _worst(list(ours[:3]), theirs[:3]),
              "log_prob": max(float(np.abs(theirs[3] - ours[3].cpu().numpy()).max()),
                              float(np.abs(theirs[4].sum((1, 2, 3)) - theirs[3]).max()))}
    if features is not None:
        mine = model.features(values).to(torch.float32).cpu().numpy()
        other = _session(features).run(None, {"images": values.cpu().numpy()})[0]
        result["features"] = float(np.abs(other - mine).max() / max(1.0, float(np.abs(mine).max(initial=0.0))))
    session = _session(step)
    inputs = {i.name for i in session.get_inputs()}
    graph = ContinuousStepGraph(model)
    seq = model.to_sequence(values)
    state = model.initial_state(batch)
    ort_state = [t.cpu().numpy() for t in state]
    value, worst = torch.zeros(batch, dtype=torch.float32), 0.0
    for d in range(model.num_positions if positions is None else min(positions, model.num_positions)):
        out = graph(value.to(model.value_dtype), torch.tensor(d), *state)
        state = tuple(out[3:])
        feed = {"value": value.numpy(), "position": np.array(d, dtype=np.int64),
                **{f"state_{i}": s for i, s in enumerate(ort_state)}}
        ort_out = session.run(None, {k: v for k, v in feed.items() if k in inputs})
        ort_state = ort_out[3:]
        worst = max(worst, _worst(list(out[:3]), ort_out[:3]))
        value = seq[:, d].to(torch.float32)
    result["step_params"] = worst
    result["max_abs_diff"] = max(result["conditionals_params"], worst)
    return result


def step_loop(session, state_specs: list[dict], initial: list[np.ndarray], noise: np.ndarray) -> np.ndarray:
    """Ancestral sampling by D calls of a continuous step.onnx session: noise (n, D, 3) -> values float64
    (n, D) in generation order (the runtime's loop; imported here for the golden vectors)."""
    from .runtime import continuous_step_loop

    return continuous_step_loop(session, state_specs, initial, noise)


def _golden(model, conditionals, step, specs, initial, seed: int = 0, n: int = 4, features=None) -> dict:
    """Noise of ``seed``, the samples the exported step loop draws from it (checked against torch's
    within SAMPLE_ATOL), and their log densities (nats) from conditionals.onnx."""
    noise = np.random.default_rng(seed).random((n, model.num_positions, 3))
    values = step_loop(_session(step), specs, initial, noise)
    flat = np.empty_like(values)
    flat[:, model.order.cpu().numpy()] = values
    samples = flat.reshape(n, *model.event_shape).astype(np.float32)
    with torch.no_grad():
        ours = model.sample(n, noise=torch.from_numpy(noise)).double().cpu().numpy()
    with np.errstate(invalid="ignore"):
        far = float(np.nan_to_num(np.abs(ours - samples), nan=0.0).max()) if ours.size else 0.0
    if not (far <= SAMPLE_ATOL and np.array_equal(np.isfinite(ours), np.isfinite(samples))):
        raise ExportError(f"the exported step loop draws samples {far:.3g} away from torch's for the same noise "
                          f"(tolerance {SAMPLE_ATOL:g})")
    log_prob = _session(conditionals).run(["log_prob"], {"images": samples})[0]
    golden = {"seed": seed, "noise": noise.tolist(), "samples": samples.tolist(), "images": samples.tolist(),
              "log_prob": log_prob.astype(np.float64).tolist(), "log_prob_atol": 1e-3, "samples_atol": SAMPLE_ATOL}
    if features is not None:
        golden["features"] = fmt.encode_array(_session(features).run(["features"], {"images": samples})[0])
        golden["features_tolerance"] = "abs(difference) <= 1e-3 * max(1, max(abs(features)))"
    return golden


def export_continuous(model, out_dir: Path, name: str, parity: bool, opset: int, atol: float, log_prob_atol: float,
                      parity_positions: int | None, dtype: str, source) -> dict:
    """``export_model`` for a ContinuousDensityModel (same arguments and report keys; see the module docstring)."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        device = model.order.device
        batch = torch.export.Dim("batch", min=1)
        images = torch.zeros(EXAMPLE_BATCH, *model.event_shape, dtype=torch.float32, device=device)
        conditionals = _to_onnx(ContinuousConditionalsGraph(model), (images,), ["images"],
                                [*PARAMS, "log_prob", "pixel_log_prob"], ({0: batch},), "conditional_params",
                                name, opset)
        specs, state = _state_specs(model, name)
        value = torch.zeros(EXAMPLE_BATCH, dtype=torch.float32, device=device)
        position = torch.tensor(1, dtype=torch.int64, device=device)
        names = [s["name"] for s in specs]
        step = _to_onnx(ContinuousStepGraph(model), (value, position, *state), ["value", "position", *names],
                        [*PARAMS, *[f"new_{n}" for n in names]],
                        ({0: batch}, {}, *([tuple(_dynamic(s, batch) for s in specs)] if state else [])),
                        "step", name, opset)
        features, features_entry = _features(model, images, name, opset, batch)
        traced = {fmt.CONDITIONALS: conditionals.ByteSize(), fmt.STEP: step.ByteSize()}
        conditionals, step, features = _lean(conditionals, step, features, dtype)
        report = None
        if parity:
            report = run_parity(parity_check, name, model, conditionals, step, positions=parity_positions,
                                features=features)
            if not (report["max_abs_diff"] <= atol and report["log_prob"] <= log_prob_atol
                    and report.get("features", 0.0) <= atol):
                raise ExportError(f"export of model {name!r} fails its parity check: onnxruntime differs from torch "
                                  f"by {report['conditionals_params']:.3g} (conditional mixture parameters), "
                                  f"{report['step_params']:.3g} (step), {report['log_prob']:.3g} nats (log_prob)"
                                  f"{', %.3g (features)' % report['features'] if 'features' in report else ''}; "
                                  f"tolerances {atol:g} (relative to max(1, |value|)) and {log_prob_atol:g} nats")
        initial = [fmt.decode_array(s["initial"]) for s in specs]
        golden = _golden(model, conditionals, step, specs, initial, features=features)
        export_id = uuid.uuid4().hex
        graphs = {fmt.CONDITIONALS: conditionals, fmt.STEP: step, **({fmt.FEATURES: features} if features else {})}
        files, weights_dtype = _seal(graphs, export_id, golden, shared=list(graphs.values()))
        description = _describe(model, name, specs, opset, dtype, export_id, report, source, weights_dtype,
                                features_entry)
        components = components_of(model)
        description.update({
            "value_kind": "continuous", "components": components, "value_range": None,
            "graphs": fmt.continuous_graph_descriptions(model.event_shape, components, specs,
                                                        features_entry if features_entry["graph"] else None),
            "noise_rule": fmt.CONTINUOUS_NOISE_RULE, "draw_rule": fmt.CONTINUOUS_DRAW_RULE})
        files[fmt.README] = readme.render(description).encode()
        files[fmt.MANIFEST] = manifest.build(description, files)
        _check_target(out_dir)
        atomic_write_folder(out_dir, files)
    finally:
        model.train(was_training)
    return {
        "dir": str(out_dir), "files": [str(out_dir / f) for f in fmt.FILES if f in files], "model": name,
        "opset": opset, "features": features_entry, "dtype": dtype, "export_id": export_id,
        "sizes": {f: len(data) for f, data in files.items()}, "traced_sizes": traced,
        "max_abs_diff": report and report["max_abs_diff"], "log_prob_max_abs_diff": report and report["log_prob"],
        "conditionals_max_abs_diff": report and report["conditionals_params"],
        "step_max_abs_diff": report and report["step_params"],
        "features_max_rel_diff": report and report.get("features"), "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def components_of(model) -> int:
    """M, the number of mixture components, read off one teacher-forced pass on a zero image."""
    zeros = torch.zeros(1, *model.event_shape, dtype=model.value_dtype, device=model.order.device)
    return int(model.conditional_params(zeros).logits.shape[-1])
