"""The exporter's checks of its own graphs against torch, and the golden vectors (torch side).

Written once for every family: the parity check feeds onnxruntime and torch the same values (random
levels for a discrete family, the model's own samples for a real one) and compares every exported
parameter (after the family's ``normalized``), log_prob and pixel_log_prob; the golden vectors hold
noise with the samples the exported step loop draws from it (checked against sample.onnx where there
is one, and against torch's sampler), and images with their log_prob.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from densreg.registry.errors import ExportError, ModelOutputError
from densreg.registry.protocol import DensityModel

from . import format as fmt
from .runtime import DEFAULT_SAMPLING_THREADS, resolve_threads, session_options, step_loop
from .tracing import ConditionalsGraph, FeaturesGraph, StepGraph, state_specs

SAMPLE_ATOL = 1e-3  # golden samples of real values: the exported step loop against torch, per value
GOLDEN_LOG_PROB_ATOL = 1e-3  # nats per image, what a client may expect of its own runtime


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session for the parity check and golden vectors, with the runtime's options: one
    intra-op thread unless $OMP_NUM_THREADS says (the checks make D small step calls, which
    onnxruntime's spinning thread pool slows down on a busy machine)."""
    return ort.InferenceSession(proto.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])


@torch.no_grad()
def run_parity(check, name: str, *args, **kwargs) -> dict:
    """``check(*args, **kwargs)`` (a parity check); an export onnxruntime cannot run becomes one ExportError.

    Torch runs on the threads onnxruntime gets (one unless $OMP_NUM_THREADS says): the check's
    D small step calls waited up to 30 ms each on torch's second thread on a busy 2-core machine
    (a row-lstm step's 1x3 convolution: 24 ms on 2 threads, 0.13 ms on one).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(None, DEFAULT_SAMPLING_THREADS))
    try:
        return check(*args, **kwargs)
    except ModelOutputError as exc:  # the torch model's own results break a rule (registry.returns)
        raise ExportError(f"model {name!r} cannot be exported: the parity check refused its results: {exc.rule}") \
            from exc
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"model {name!r} exported, but onnxruntime cannot run the export: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        torch.set_num_threads(threads)


def probe_values(model: DensityModel, batch: int, seed: int) -> torch.Tensor:
    """What the parity check feeds: random levels (discrete family) or the model's own samples (real values,
    so that they lie where the model puts its mass), float32."""
    gen = torch.Generator().manual_seed(seed)
    if model.family.discrete:
        return torch.randint(0, model.num_categories, (batch, *model.event_shape), generator=gen).to(model.order.device)
    return model.sample(batch, generator=gen).to(torch.float32)


def worst(ours, theirs, relative: bool = True) -> float:
    """Largest difference of matching tensors and arrays (NaN: inf), each relative to max(1, |value|) or, with
    ``relative`` False, absolute (logits, whose scale carries no meaning of units)."""
    out = 0.0
    for a, b in zip(ours, theirs):
        a = a.detach().cpu().numpy()
        scale = max(1.0, float(np.abs(a).max(initial=0.0))) if relative else 1.0
        diff = float(np.abs(np.asarray(b) - a).max(initial=0.0)) / scale
        out = max(out, diff if diff == diff else float("inf"))
    return out


@torch.no_grad()
def parity_check(model: DensityModel, conditionals: onnx.ModelProto, step: onnx.ModelProto,
                 batch: int = 2, seed: int = 0, positions: int | None = None,
                 features: onnx.ModelProto | None = None) -> dict:
    """Differences, onnxruntime (CPU) vs torch, on ``batch`` probe images (``probe_values``).

    ``conditionals_params``: the parameters of conditionals.onnx (absolute for a discrete family's logits,
    relative to max(1, |value|) for real values);
    ``log_prob`` (nats; also how far pixel_log_prob's sum is from it); ``pixel_log_prob`` (nats);
    ``step_params``: step.onnx teacher-forced along the same images for the first ``positions``
    positions (default all D), each side carrying its own state; ``features`` (with features.onnx):
    the largest difference over max(1, largest |feature|); ``max_abs_diff``: the parameters' worst.
    """
    family, n_params = model.family, len(model.family.param_names)
    images = probe_values(model, batch, seed)
    ours = ConditionalsGraph(model)(images)
    theirs = session(conditionals).run(None, {"images": images.cpu().numpy()})
    relative = not family.discrete  # real values carry the data's units; logits are compared absolutely
    result = {"conditionals_params": worst(ours[:n_params], theirs[:n_params], relative),
              "log_prob": max(float(np.abs(theirs[n_params] - ours[n_params].cpu().numpy()).max()),
                              float(np.abs(theirs[n_params + 1].sum((1, 2, 3)) - theirs[n_params]).max())),
              "pixel_log_prob": float(np.abs(theirs[n_params + 1] - ours[n_params + 1].cpu().numpy()).max())}
    if features is not None:
        mine = FeaturesGraph(model)(images)
        other = session(features).run(None, {"images": images.cpu().numpy()})[0]
        result["features"] = worst([mine], [other])
    step_session = session(step)
    inputs = {i.name for i in step_session.get_inputs()}
    axes = state_specs(model, model.registry_name or type(model).__name__)[2]
    graph, seq = StepGraph(model, axes), model.to_sequence(images)
    state = tuple(t if a in (None, 0) else t.movedim(a, 0).contiguous()
                  for t, a in zip(model.initial_state(batch), axes))
    ort_state = [t.cpu().numpy() for t in state]
    value, step_worst = torch.zeros(batch, dtype=seq.dtype, device=seq.device), 0.0
    for d in range(model.num_positions if positions is None else min(positions, model.num_positions)):
        position = torch.full((batch,), d, dtype=torch.int64, device=seq.device)
        out = graph(value.to(model.value_dtype), position, *state)
        state = tuple(out[n_params:])
        feed = {"value": value.cpu().numpy().astype(family.numpy_dtype), "position": position.cpu().numpy(),
                **{f"state_{i}": s for i, s in enumerate(ort_state)}}
        ort_out = step_session.run(None, {k: v for k, v in feed.items() if k in inputs})
        ort_state = ort_out[n_params:]
        step_worst = max(step_worst, worst(out[:n_params], ort_out[:n_params], relative))
        value = seq[:, d]
    result["step_params"] = step_worst
    result["max_abs_diff"] = max(result["conditionals_params"], step_worst)
    return result


def golden(model: DensityModel, conditionals, step, sample, specs, initial, seed: int = 0, n: int = 2,
           features: onnx.ModelProto | None = None) -> dict:
    """Golden vectors from the export itself: noise of ``seed`` and the samples the step loop draws from it
    (sample.onnx, where there is one, must draw the same; torch's sampler too: identical levels, or real
    values within SAMPLE_ATOL), then those samples and ``n`` probe images with their log_prob (nats) and,
    with ``features``, their features (float32 (2n, F), ``fmt.encode_array``). ExportError for a
    disagreement or a non-finite sample or log_prob."""
    family, d = model.family, model.num_positions
    noise = np.random.default_rng(seed).random(family.noise_shape(n, d))
    values = step_loop(session(step), family, specs, initial, noise)
    flat = np.empty_like(values)
    flat[:, model.order.cpu().numpy()] = values
    samples = flat.reshape(n, *model.event_shape).astype(family.numpy_dtype)
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples.reshape(n, -1))).any(-1).sum())
        raise ExportError(f"{bad} of {n} golden samples drawn from the export are not finite (NaN or infinity): the "
                          "model diverges when sampling, and golden.json holds finite numbers only; the export is "
                          "refused")
    if sample is not None:
        drawn = session(sample).run(["images"], {"noise": noise})[0]
        apart = float(np.abs(drawn.astype(np.float64) - samples).max(initial=0.0)) if drawn.shape == samples.shape \
            else float("inf")
        if not (apart == 0 if family.discrete else apart <= SAMPLE_ATOL):  # NaN fails
            raise ExportError(f"sample.onnx and the step loop draw images {apart:.3g} apart from the same noise"
                              + ("" if family.discrete else f" (tolerance {SAMPLE_ATOL:g})"))
    with torch.no_grad():
        torch_samples = model.sample(n, noise=torch.from_numpy(noise)).double().cpu().numpy()
    far = float(np.abs(torch_samples - samples).max(initial=0.0))
    if not (far == 0 if family.discrete else far <= SAMPLE_ATOL):  # NaN fails
        raise ExportError(f"the exported step loop draws samples {far:.3g} away from torch's for the same noise"
                          + ("" if family.discrete else f" (tolerance {SAMPLE_ATOL:g})"))
    rng = np.random.default_rng(seed + 1)
    probes = (rng.integers(0, model.num_categories, (n, *model.event_shape)) if family.discrete
              else rng.standard_normal((n, *model.event_shape)))
    images = np.concatenate([samples, probes.astype(family.numpy_dtype)])
    log_prob = session(conditionals).run(["log_prob"], {"images": images})[0]
    if not np.isfinite(log_prob).all():
        raise ExportError("the golden images' log_prob is not finite: the model puts no density on its own samples")
    out = {"seed": seed, "noise": noise.tolist(), "samples": samples.tolist(), "images": images.tolist(),
           "log_prob": log_prob.astype(np.float64).tolist(), "log_prob_atol": GOLDEN_LOG_PROB_ATOL}
    if not family.discrete:
        out["samples_atol"] = SAMPLE_ATOL
    if features is not None:
        out["features"] = fmt.encode_array(session(features).run(["features"], {"images": images})[0])
        out["features_tolerance"] = "abs(difference) <= 1e-3 * max(1, max(abs(features)))"
    return out
