"""Conformance checks for real-valued models (``ContinuousDensityModel``), run by ``conformance.run_check``.

The same check names as the categorical kit, on tiny real-valued spaces (K = 0):

- ``normalization``: exp(log_prob) integrates to 1 within 1e-4 on 1x1x1 and 1x1x2 (one
  ordering: on these spaces orderings only permute), by Gauss-Legendre quadrature (6 nodes per
  interval) on intervals cut at mu +- {0, 1, 2, 3, 4, 6, 8, 12} sigma of every mixture component
  of the conditional being integrated (for x_1, those given each x_0 node): an interval is at
  most 1 sigma of a component within 4 sigma of its mean and the mass beyond 12 sigma is
  ~1e-32, so the rule is exact to ~1e-10 for a true mixture.
- ``chain_rule``: log_prob equals the sum over positions of the mixture log densities of
  ``conditional_params`` (computed here), and the params are (B, D, M) with finite values.
- ``causality``: by gradients (d params_d / d x_j is 0 for every j >= d) and by perturbation
  (changing x_j, or every x_{>=d} at once, leaves the params at positions <= j unchanged).
- ``step``: teacher-forced ``step`` equals ``conditional_params``, position an int and a 0-dim
  tensor; the state keeps its shapes.

causality and step compare each component's weight w (softmax), w * mean and w * log-scale, so a
component whose weight is negligible (a log weight of -1e7) counts by its weight alone.
- ``sampling``: SAMPLING_SIZE samples on 1x1x1 and 1x1x3; each value goes through its exact
  conditional CDF (the Rosenblatt transform, from ``conditional_params`` on the sample's own
  prefix: the chain_rule check ties those to log_prob), which makes the values of a correct
  sampler independent uniforms. Per position a Kolmogorov-Smirnov test, and for each pair of
  neighbouring positions a chi-square test on an 8x8 grid of (u_d, u_d+1); all at a
  Bonferroni share of SAMPLING_ALPHA. With 50000 draws a scale 5% off, a mean 0.05 sigma
  off or a wrong prefix fails (tests/test_continuous.py).
- ``round_trip``: checkpoint save and load: same config, log_prob and samples for the same noise.
- ``export``: ``densreg.export.export_model`` with parity, then the runtime's log_prob (1e-3
  nats) and samples for the same noise (within 1e-3) against torch.

chain_rule, causality and step compare on a float64 copy (``conformance.in_float64``).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import conformance as kit
from .checkpoint import load_checkpoint, save_checkpoint
from .mixtures import MixtureParams, mixture_cdf, mixture_log_density

SPACES_1D_2D = (((1, 1, 1), 0), ((1, 1, 2), 0))
CAUSALITY_SPACES = STEP_SPACES = CHAIN_SPACES = (((1, 2, 3), 0),)
SAMPLING_SPACES = (((1, 1, 1), 0), ((1, 1, 3), 0))
ROUND_TRIP_SPACES = (((1, 2, 3), 0),)
NORMALIZATION_TOL = 1e-4
SAMPLING_SIZE = 50000
SAMPLING_ALPHA = 1e-3
PAIR_BINS = 8
EXPORT_LOG_PROB_TOL = 1e-3  # nats per image
EXPORT_SAMPLE_TOL = 1e-3  # absolute, per value
BREAKS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)  # in sigmas, both sides
GAUSS_NODES = 6


def _expect_params(model, x) -> MixtureParams:
    params = model.conditional_params(x)
    if not isinstance(params, tuple) or len(params) != 3 or not all(isinstance(t, torch.Tensor) for t in params):
        raise kit.CheckFailed(f"conditional_params returned {type(params).__name__}, expected MixtureParams "
                              "(logits, means, log_scales)")
    params = MixtureParams(*params)
    shape = tuple(params.logits.shape)
    if len(shape) != 3 or shape[:2] != (x.shape[0], model.num_positions) or any(
            tuple(t.shape) != shape for t in params):
        raise kit.CheckFailed(f"conditional_params returned shapes {[tuple(t.shape) for t in params]}, expected "
                              f"three of (B, D, M) with (B, D) = {(x.shape[0], model.num_positions)}")
    if not all(bool(torch.isfinite(t).all()) for t in params):
        raise kit.CheckFailed("conditional_params returned NaN or infinite values")
    return params


def _stack(params: MixtureParams) -> torch.Tensor:
    """What the checks compare, (..., M, 3): each component's weight w (softmax of the logits), w * mean and
    w * log-scale. A component of negligible weight (a log weight of -1e7, say) then counts by its weight
    alone, and the rest in proportion to what they add to the density."""
    weights = torch.softmax(params.logits, -1)
    return torch.stack([weights, weights * params.means, weights * params.log_scales], -1)


def _nodes(params: MixtureParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature nodes and weights for the mixtures ``params`` (G, M): (G, N) each, float64."""
    x, w = np.polynomial.legendre.leggauss(GAUSS_NODES)
    x, w = torch.from_numpy(x), torch.from_numpy(w)
    offsets = torch.tensor(sorted({s * b for b in BREAKS for s in (-1, 1)}), dtype=torch.float64)
    means, scales = params.means.double(), params.log_scales.double().exp()
    breaks = (means.unsqueeze(-1) + scales.unsqueeze(-1) * offsets).flatten(1)  # (G, M * len(offsets))
    breaks = torch.sort(breaks, -1).values
    lo, hi = breaks[:, :-1], breaks[:, 1:]
    half = (hi - lo) / 2
    nodes = (lo + half).unsqueeze(-1) + half.unsqueeze(-1) * x  # (G, intervals, GAUSS_NODES)
    weights = half.unsqueeze(-1) * w
    return nodes.flatten(1), weights.flatten(1)


def _integral(model, shape) -> float:
    """The integral of exp(log_prob) over R^D for D = 1 or 2, by nested quadrature (module docstring)."""
    d = math.prod(shape)
    dtype = model.value_dtype
    with torch.no_grad():
        first = _expect_params(model, torch.zeros(1, *shape, dtype=dtype)).map(lambda t: t[:, 0])
        x0, w0 = _nodes(first)  # (1, N)
        if d == 1:
            values = x0.reshape(-1, *shape).to(dtype)
            return float((model.log_prob(values).double().exp() * w0[0]).sum())
        prefix = torch.zeros(x0.shape[1], d, dtype=torch.float64)
        prefix[:, 0] = x0[0]
        second = _expect_params(model, model.from_sequence(prefix.to(dtype))).map(lambda t: t[:, 1])
        x1, w1 = _nodes(second)  # (N0, N1)
        seq = torch.stack([x0[0].unsqueeze(-1).expand_as(x1), x1], -1).reshape(-1, 2)
        total = 0.0
        for part, weights in zip(seq.split(20000), (w0[0].unsqueeze(-1) * w1).reshape(-1).split(20000)):
            log_p = model.log_prob(model.from_sequence(part.to(dtype))).double()
            total += float((log_p.exp() * weights).sum())
        return total


def normalization(subject) -> str:
    worst = 0.0
    for shape, k, ordering, model in subject.first_variant(subject.spaces_or(SPACES_1D_2D)):
        model, _ = kit.in_float64(model)
        total = _integral(model, shape)
        if not abs(total - 1.0) <= NORMALIZATION_TOL:
            raise kit.CheckFailed(f"exp(log_prob) integrates to {total:.6g} over R^{math.prod(shape)} "
                                  f"({kit._space(shape, k, ordering)}), not 1 (tolerance {NORMALIZATION_TOL:g}): "
                                  "log_prob is not a normalized density (each conditional must be a normalized "
                                  "mixture of Gaussians, log_prob their sum)")
        worst = max(worst, abs(total - 1.0))
    return f"integrals within {worst:.1e} of 1 (Gauss-Legendre on 1-D and 2-D spaces)" + kit._notes(subject)


def chain_rule(subject) -> str:
    worst, notes = 0.0, []
    for shape, k, ordering, model, why in kit._wide_variants(subject, subject.spaces_or(CHAIN_SPACES)):
        notes += [why] if why else []
        x = kit.random_values(shape, 16, seed=4).to(model.value_dtype)
        with torch.no_grad():
            params = _expect_params(model, x)
            chain = mixture_log_density(params.map(torch.Tensor.double), model.to_sequence(x).double()).sum(-1)
            log_p = model.log_prob(x).double()
        diff = (chain - log_p).abs()
        tol = kit.tolerance(params.logits.dtype, float(log_p.abs().max()))
        if not float(diff.max()) <= tol:
            i = int(diff.nan_to_num(float("inf")).argmax())
            raise kit.CheckFailed(f"log_prob differs from the chain rule of conditional_params by {float(diff[i]):.3g} "
                                  f"nats ({kit._space(shape, k, ordering)}; log_prob {float(log_p[i]):.5f}, sum of "
                                  f"mixture log densities {float(chain[i]):.5f}; tolerance {tol:.2g}): sampling and "
                                  "per-value scores use the conditionals, so they must agree with log_prob")
        worst = max(worst, float(diff.max()))
    return f"log_prob equals the sum of mixture conditionals within {worst:.1e} nats{kit._dtype_note(notes)}" \
        + kit._notes(subject)


def _peek(model, shape, k, ordering, changed_at, position, diff, tol, how) -> kit.CheckFailed:
    what = "the model sees the value it predicts (x_d)" if changed_at == position else "the model peeks at the future"
    return kit.CheckFailed(f"conditional at position {kit._where(model, position)} {how} x at position "
                           f"{kit._where(model, changed_at)} ({kit._space(shape, k, ordering)}; positions count in "
                           f"generation order; {diff:.3g} > tolerance {tol:.2g}): {what}")


def causality(subject) -> str:
    checked, notes = 0, []
    for shape, k, ordering, model, why in kit._wide_variants(subject, subject.spaces_or(CAUSALITY_SPACES)):
        notes += [why] if why else []
        gen = torch.Generator().manual_seed(1)
        x = kit.random_values(shape, 4, seed=1).to(model.value_dtype)
        seq = model.to_sequence(x)
        D = model.num_positions
        # by gradients: d params_d / d x_j = 0 for j >= d
        for d in range(D):
            wanted = seq.clone().requires_grad_(True)
            params = _stack(_expect_params(model, model.from_sequence(wanted)))
            weights = torch.randn(params[:, d].shape, generator=gen, dtype=torch.float64).to(params.dtype)
            (grad,) = torch.autograd.grad((params[:, d] * weights).sum(), wanted, allow_unused=True)
            if grad is None:
                continue
            tol = kit.tolerance(params.dtype, float(params.detach().abs().max()))
            late = grad[:, d:].abs().amax(0)
            if not float(late.max()) <= tol:
                j = d + int((~(late <= tol)).nonzero()[0])
                raise _peek(model, shape, k, ordering, j, d, float(late.max()), tol, "has a non-zero gradient in")
        # by perturbation: one position at a time, then every suffix
        with torch.no_grad():
            base = _stack(_expect_params(model, x))
            tol = kit.tolerance(base.dtype, float(base.abs().max()))
            for j in range(D):
                changed = seq.clone()
                changed[:, j] += torch.randn(len(x), generator=gen).to(changed.dtype) + 0.5
                diff = (_stack(_expect_params(model, model.from_sequence(changed)))[:, : j + 1] - base[:, : j + 1])
                diff = diff.abs().amax(dim=(0, 2, 3))
                if not float(diff.max()) <= tol:
                    p = int((~(diff <= tol)).nonzero()[0])
                    raise _peek(model, shape, k, ordering, j, p, float(diff[p]), tol, "changed when")
            for d in range(D):
                changed = seq.clone()
                changed[:, d:] = torch.randn(changed[:, d:].shape, generator=gen).to(changed.dtype) * 2
                diff = (_stack(_expect_params(model, model.from_sequence(changed)))[:, : d + 1] - base[:, : d + 1])
                if not float(diff.abs().max()) <= tol:
                    raise kit.CheckFailed(f"conditionals up to position {d} changed by {float(diff.abs().max()):.3g} "
                                          f"when the values at positions {d} and later changed together "
                                          f"({kit._space(shape, k, ordering)}): the model peeks at the future")
        checked += 1
    return (f"{checked} space/ordering pairs: zero gradients on every later value, every position perturbed"
            f"{kit._dtype_note(notes)}" + kit._notes(subject))


def step(subject) -> str:
    worst, notes = 0.0, []
    for shape, k, ordering, model, why in kit._wide_variants(subject, subject.spaces_or(STEP_SPACES)):
        notes += [why] if why else []
        x = kit.random_values(shape, 3, seed=2).to(model.value_dtype)
        seq = model.to_sequence(x)
        with torch.no_grad():
            expected = _stack(_expect_params(model, x))
            tol = kit.tolerance(expected.dtype, float(expected.abs().max()))
            for as_tensor in (False, True):
                kind = "a 0-dim int64 tensor" if as_tensor else "an int"
                state = model.initial_state(3)
                if not isinstance(state, tuple) or not all(isinstance(t, torch.Tensor) for t in state):
                    raise kit.CheckFailed(f"initial_state returned {type(state).__name__}, expected a tuple of tensors")
                shapes = [tuple(t.shape) for t in state]
                value = torch.zeros(3, dtype=seq.dtype)
                for d in range(model.num_positions):
                    position = torch.tensor(d, dtype=torch.int64) if as_tensor else d
                    try:
                        params, state = model.step(value, position, state)
                    except Exception as exc:
                        raise kit.CheckFailed(f"step at position {d} with the position given as {kind} raised "
                                              f"{kit._describe(exc)}") from exc
                    got = _stack(MixtureParams(*params))
                    if tuple(got.shape) != tuple(expected[:, d].shape):
                        raise kit.CheckFailed(f"step returned params of shape {tuple(got.shape[:-1])} x 3, expected "
                                              f"(B, M) = {tuple(expected.shape[::2][:1]) + (expected.shape[2],)}")
                    if [tuple(t.shape) for t in state] != shapes:
                        raise kit.CheckFailed(f"the state changed shape from {shapes} to "
                                              f"{[tuple(t.shape) for t in state]} at position {d}: the state must be "
                                              "a tuple of fixed-shape tensors (for export)")
                    diff = float((got.double() - expected[:, d].double()).abs().max())
                    if not diff <= tol:
                        raise kit.CheckFailed(f"step at position {kit._where(model, d)} (position given as {kind}, "
                                              f"{kit._space(shape, k, ordering)}) differs from conditional_params by "
                                              f"{diff:.3g} (tolerance {tol:.2g}) under teacher forcing: value is x at "
                                              "the previous position (zeros at 0) and the cached state must "
                                              "reproduce the full pass")
                    worst = max(worst, diff)
                    value = seq[:, d]
    return (f"teacher-forced steps match within {worst:.1e} (int and tensor positions){kit._dtype_note(notes)}"
            + kit._notes(subject))


def ks_p_value(u: torch.Tensor) -> tuple[float, float]:
    """Kolmogorov-Smirnov test of values ``u`` (n,) against U(0, 1): (statistic, asymptotic p-value,
    with Stephens' small-sample correction)."""
    n = len(u)
    u = torch.sort(u.double()).values
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    stat = float(torch.maximum(ranks / n - u, u - (ranks - 1) / n).max())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * stat
    p = 2 * sum((-1) ** (i - 1) * math.exp(-2 * i * i * lam * lam) for i in range(1, 101))
    return stat, min(1.0, max(0.0, p))


def rosenblatt(model, samples: torch.Tensor) -> torch.Tensor:
    """The conditional CDF of every value given its prefix: (n, C, H, W) -> (n, D) in [0, 1]."""
    out = []
    with torch.no_grad():
        for part in samples.split(5000):
            params = _expect_params(model, part).map(torch.Tensor.double)
            out.append(mixture_cdf(params, model.to_sequence(part).double()))
    return torch.cat(out)


def sampling(subject) -> str:
    shown = []
    for shape, k, ordering, model in subject.first_variant(subject.spaces_or(SAMPLING_SPACES)):
        samples = model.sample(SAMPLING_SIZE, generator=torch.Generator().manual_seed(0))
        if tuple(samples.shape) != (SAMPLING_SIZE, *shape) or not samples.is_floating_point():
            raise kit.CheckFailed(f"sample({SAMPLING_SIZE}) returned {samples.dtype} of shape "
                                  f"{tuple(samples.shape)}, expected floats of shape {(SAMPLING_SIZE, *shape)}")
        if not bool(torch.isfinite(samples).all()):
            raise kit.CheckFailed("samples hold NaN or infinite values")
        wide, _ = kit.in_float64(model)
        u = rosenblatt(wide, samples.to(wide.value_dtype))
        D = u.shape[1]
        tests = D + (D - 1)
        alpha = SAMPLING_ALPHA / tests
        space = kit._space(shape, k, ordering)
        worst, dofs = 1.0, []
        for d in range(D):
            stat, p = ks_p_value(u[:, d])
            if not p >= alpha:
                raise kit.CheckFailed(f"{SAMPLING_SIZE} samples on {space} do not follow the model's conditionals "
                                      f"at position {kit._where(model, d)}: Kolmogorov-Smirnov statistic {stat:.4f} "
                                      f"of the conditional CDF values against U(0, 1), p = {p:.2g} < {alpha:.2g}: "
                                      "sample() (through step) must draw from the same mixtures as log_prob")
            worst = min(worst, p)
        for d in range(D - 1):
            cells = (u[:, d] * PAIR_BINS).long().clamp(max=PAIR_BINS - 1) * PAIR_BINS \
                + (u[:, d + 1] * PAIR_BINS).long().clamp(max=PAIR_BINS - 1)
            counts = torch.bincount(cells, minlength=PAIR_BINS ** 2).double()
            stat, dof, p = kit.chi_square(counts, torch.full_like(counts, SAMPLING_SIZE / PAIR_BINS ** 2))
            if not p >= alpha:
                raise kit.CheckFailed(f"{SAMPLING_SIZE} samples on {space}: the conditional CDF values at positions "
                                      f"{d} and {d + 1} are not independent uniforms (chi-square {stat:.1f}, {dof} "
                                      f"dof, p = {p:.2g} < {alpha:.2g}): a value is drawn given the wrong prefix")
            worst, dofs = min(worst, p), dofs + [dof]
        pairs = f", {len(dofs)} pair chi-square tests of {dofs[0]} dof" if dofs else ""
        shown.append(f"{'x'.join(map(str, shape))}: {D} Kolmogorov-Smirnov tests{pairs}, smallest p = {worst:.2g} "
                     f">= {alpha:.2g}")
    return "; ".join(shown) + kit._notes(subject)


def round_trip(subject) -> str:
    shape, k, ordering, model = subject.first_accepted(subject.spaces_or(ROUND_TRIP_SPACES))
    config = model.config()
    x = kit.random_values(shape, 16, seed=5).to(model.value_dtype)
    noise = torch.rand(model.noise_shape(64), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        before = model.log_prob(x).double()
    before_samples = model.sample(64, noise=noise)
    with tempfile.TemporaryDirectory() as tmp, kit._registered(subject) as name:
        path = Path(tmp) / "model.safetensors"
        save_checkpoint(path, model, name)
        try:
            again, info = load_checkpoint(path)
        except Exception as exc:
            raise kit.CheckFailed(f"load_checkpoint could not rebuild the model from its own checkpoint: {exc}") \
                from exc
    if type(again) is not type(model) or again.config() != config:
        raise kit.CheckFailed(f"the checkpoint rebuilt {type(again).__name__} with config {again.config()}, "
                              f"expected {type(model).__name__} with {config}")
    if info.value_kind != "continuous":
        raise kit.CheckFailed(f"the checkpoint records value_kind {info.value_kind!r}, expected 'continuous'")
    with torch.no_grad():
        diff = float((again.log_prob(x).double() - before).abs().max())
    if diff > 1e-6:
        raise kit.CheckFailed(f"log_prob of the model reloaded from its checkpoint differs by {diff:.3g} nats: state "
                              "that shapes the density is neither in config() nor a parameter or buffer")
    if not torch.equal(again.sample(64, noise=noise), before_samples):
        raise kit.CheckFailed("samples of the reloaded model differ from the original's for the same noise")
    return "rebuilt through the registry (value_kind continuous); log_prob and samples identical"


def export(subject) -> str:
    try:
        from densreg.export import export_model
        from densreg.export.runtime import ExportedModel
    except ImportError as exc:
        raise kit.CheckSkipped(kit.NO_EXPORTER) from exc
    shape, k, ordering, model = subject.first_accepted(subject.spaces_or(ROUND_TRIP_SPACES))
    x = kit.random_values(shape, 16, seed=6).to(model.value_dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        try:
            export_model(model, folder, name=subject.label.replace(":", "-"), parity=True)
        except Exception as exc:
            raise kit.CheckFailed(f"export_model failed on {kit._space(shape, k, ordering)}: "
                                  f"{kit._describe(exc)}") from exc
        runtime = ExportedModel(folder)
        with torch.no_grad():
            expected = model.log_prob(x).double().numpy()
        diff = float(np.abs(runtime.log_prob(x.numpy()).astype(np.float64) - expected).max())
        if not diff <= EXPORT_LOG_PROB_TOL:
            raise kit.CheckFailed(f"log_prob in onnxruntime differs from torch by {diff:.3g} nats "
                                  f"(tolerance {EXPORT_LOG_PROB_TOL:g})")
        noise = torch.rand(model.noise_shape(200), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        ours = model.sample(200, noise=noise).double().numpy().reshape(200, -1)
        theirs = np.asarray(runtime.sample(200, noise=noise.numpy()), dtype=np.float64).reshape(200, -1)
        with np.errstate(invalid="ignore"):  # a random model's value may overflow: then both must
            same = (theirs == ours) | (np.isnan(theirs) & np.isnan(ours))
            differs = ~(np.abs(theirs - ours) <= EXPORT_SAMPLE_TOL) & ~same
        mismatched = int(differs.any(-1).sum())
        if mismatched > 2:  # a component drawn right at a CDF boundary may legitimately differ
            raise kit.CheckFailed(f"{mismatched} of 200 samples drawn in onnxruntime differ from torch's by more than "
                                  f"{EXPORT_SAMPLE_TOL:g} for the same noise")
    return (f"onnxruntime ({runtime.provider}) log_prob within {diff:.1e} nats; samples for the same noise agree "
            f"within {EXPORT_SAMPLE_TOL:g} ({mismatched} of 200 differ)")


CHECKS = {"normalization": normalization, "chain_rule": chain_rule, "causality": causality, "step": step,
          "sampling": sampling, "round_trip": round_trip, "export": export}
