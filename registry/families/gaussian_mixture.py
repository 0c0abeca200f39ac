"""``GaussianMixture(M)``: a mixture of M Gaussians per real value (RNADE, MADE-MoG).

``params`` is ``MixtureParams(logits, means, log_scales)``, each (..., M): unnormalized log
weights, means and log standard deviations; densities are in nats:

    log p(x) = logsumexp_m (logits_m + log N(x; means_m, exp(log_scales_m)^2)) - logsumexp(logits)

Sampling is exact and deterministic given three uniforms per value: u0 picks the component by
the inverse CDF of the weights (exactly the categorical draw), u1 and u2 give a standard normal
by Box-Muller, z = sqrt(-2 log(1 - u1)) cos(2 pi u2), and the value is mean + exp(log_scale) z,
in float64. The kit integrates a real family by Gauss-Legendre quadrature on intervals cut at
each component's mean +- {0, 1, 2, 3, 4, 6, 8, 12} sigma (``integration_points``) and tests
samples through the conditional CDF (``cdf``, the Rosenblatt transform).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..datasets import numeric_batch, validate_real_images
from ..errors import ConfigError, DataError
from .base import Family, check_positive_int, stack_last
from .categorical import inverse_cdf

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
MAX_COMPONENTS = 1 << 10
BREAKS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)  # quadrature interval ends, in sigmas, both sides
GAUSS_NODES = 6  # Gauss-Legendre nodes per interval


class MixtureParams(NamedTuple):
    """Mixture-of-Gaussians conditionals: ``logits``, ``means``, ``log_scales``, each (..., M)."""

    logits: Any
    means: Any
    log_scales: Any

    def map(self, fn) -> "MixtureParams":
        """The same function applied to the three tensors (e.g. select a position)."""
        return MixtureParams(*(fn(t) for t in self))


def normal_log_density(x, means, log_scales):
    """log N(x; mean, exp(log_scale)^2) in nats, broadcast."""
    z = (x - means) * (-log_scales).exp()
    return -0.5 * z * z - log_scales - LOG_SQRT_2PI


def mixture_log_density(params, x):
    """log sum_m w_m N(x; mean_m, scale_m^2) in nats: params (..., M), x (...) -> (...).

    Computed as logsumexp(logits + log N) - logsumexp(logits): the same value as with log_softmax
    weights (within float rounding) and about twice as fast to train through on CPU for small M.
    """
    logits, means, log_scales = params
    joint = logits + normal_log_density(x.unsqueeze(-1), means, log_scales)
    return joint.logsumexp(-1) - logits.logsumexp(-1)


class LocationScaleMixture(Family):
    """What the families whose ``params`` are ``MixtureParams(logits, means, log_scales)`` share (the Gaussian
    mixture, the discretized logistic mixture): the packing, the normalized weights exports output, and what
    the kit compares."""

    param_names = ("logits", "means", "log_scales")

    def pack(self, params: tuple) -> MixtureParams:
        return MixtureParams(*params)

    def normalized(self, params) -> tuple:
        logits, means, log_scales = params
        return (logits.log_softmax(-1), means, log_scales)

    def comparable(self, params):
        """Each component's weight w, w * mean and w * log-scale, (..., M, 3): a component of negligible
        weight counts by its weight alone, the rest in proportion to what they add to the density."""
        logits, means, log_scales = params
        weights = logits.softmax(-1)
        return stack_last((weights, weights * means, weights * log_scales))


class GaussianMixture(LocationScaleMixture):
    """Mixtures of ``components`` Gaussians over real values (None: M is read off the parameters)."""

    name = "gaussian-mixture"
    discrete = False
    noise_width = 3
    noise_rule = ("noise = numpy.random.default_rng(seed).random((n, D, 3)), float64 uniform in [0, 1); "
                  "noise[:, d] (three uniforms) is used at step d (densreg sample --seed uses exactly this)")
    draw_rule = ("component = number of entries of cumsum(softmax(float64(logits))) that are < noise[0], "
                 "capped at M-1; z = sqrt(-2 log(1 - noise[1])) cos(2 pi noise[2]) (Box-Muller); value = "
                 "means[component] + exp(log_scales[component]) z, computed in float64, fed back as float32")

    def __init__(self, components: int | None = None) -> None:
        self.components = None if components is None else check_positive_int("components", components,
                                                                               MAX_COMPONENTS)

    @property
    def param_size(self) -> int | None:
        return self.components

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "components": self.components}

    @classmethod
    def for_data(cls, num_categories: int) -> "GaussianMixture":
        if num_categories != 0:
            raise ConfigError(f"models real values, but these data have K={num_categories} levels: use a continuous "
                              "dataset (`densreg datasets` marks them) or a categorical model")
        return cls()

    def log_prob(self, params, x):
        return mixture_log_density(tuple(params), x)

    def cdf(self, params, x):
        """P(X <= x) under the mixture: params (..., M), x (...) -> (...) in [0, 1]."""
        logits, means, log_scales = params
        z = (x.unsqueeze(-1) - means) * (-log_scales).exp()
        return (logits.softmax(-1) * 0.5 * (-z / math.sqrt(2)).erfc()).sum(-1)

    def draw(self, params, noise):
        """Torch: params (B, M) each, noise (B, 3) -> values (B,) in the dtype of ``means``, computed in float64."""
        logits, means, log_scales = params
        noise = noise.double()
        component = inverse_cdf(logits, noise[:, 0]).unsqueeze(-1)
        mean = means.double().gather(-1, component).squeeze(-1)
        log_scale = log_scales.double().gather(-1, component).squeeze(-1)
        z = (-2 * (-noise[:, 1]).log1p()).sqrt() * (2 * math.pi * noise[:, 2]).cos()
        return (mean + log_scale.exp() * z).to(means.dtype)

    def draw_numpy(self, params, noise: np.ndarray) -> np.ndarray:
        """numpy float64, as ``draw``: params (B, M) each, noise (B, 3) -> values float64 (B,)."""
        logits, means, log_scales = (np.asarray(p) for p in params)
        logits = logits.astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), -1)
        component = np.minimum((cdf < noise[:, :1]).sum(-1), logits.shape[-1] - 1)[:, None]
        mean = np.take_along_axis(means.astype(np.float64), component, -1)[:, 0]
        log_scale = np.take_along_axis(log_scales.astype(np.float64), component, -1)[:, 0]
        z = np.sqrt(-2 * np.log1p(-noise[:, 1])) * np.cos(2 * np.pi * noise[:, 2])
        with np.errstate(over="ignore"):  # a value beyond float range comes out inf, as in torch
            return mean + np.exp(log_scale) * z

    def onnx_draw(self, opset: int, ir_version: int):
        """draw.onnx: logits, means, log_scales float (B, M), noise float64 (B, 3) -> value float32 (B,): the
        component by the inverse CDF of noise[:, 0], then Box-Muller on noise[:, 1:], in float64 as ``draw``
        (ONNX has no log1p: log(1 - u) in its place, a few float64 ulps from numpy's draw)."""
        from onnx import TensorProto, helper

        ints = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
        double = lambda name, value: helper.make_tensor(name, TensorProto.DOUBLE, [], [value])  # noqa: E731
        nodes = [
            helper.make_node("Cast", ["logits"], ["logits64"], to=TensorProto.DOUBLE),
            helper.make_node("Softmax", ["logits64"], ["probs"], axis=-1),
            helper.make_node("CumSum", ["probs", "axis"], ["cdf"]),
            *(helper.make_node("Slice", ["noise", ints(f"start{i}", [i]).name, f"end{i}", "last"], [f"u{i}"])
              for i in range(3)),
            helper.make_node("Less", ["cdf", "u0"], ["below"]),
            helper.make_node("Cast", ["below"], ["below64"], to=TensorProto.INT64),
            helper.make_node("ReduceSum", ["below64", "last"], ["count"], keepdims=1),
            helper.make_node("Shape", ["logits"], ["m"], start=1, end=2),
            helper.make_node("Sub", ["m", "start1"], ["m_minus_1"]),
            helper.make_node("Min", ["count", "m_minus_1"], ["component"]),  # (B, 1)
            helper.make_node("Cast", ["means"], ["means64"], to=TensorProto.DOUBLE),
            helper.make_node("Cast", ["log_scales"], ["log_scales64"], to=TensorProto.DOUBLE),
            helper.make_node("GatherElements", ["means64", "component"], ["mean"], axis=1),
            helper.make_node("GatherElements", ["log_scales64", "component"], ["log_scale"], axis=1),
            helper.make_node("Sub", ["one", "u1"], ["rest"]),
            helper.make_node("Log", ["rest"], ["log_rest"]),
            helper.make_node("Mul", ["log_rest", "minus_two"], ["radius2"]),
            helper.make_node("Sqrt", ["radius2"], ["radius"]),
            helper.make_node("Mul", ["u2", "two_pi"], ["angle"]),
            helper.make_node("Cos", ["angle"], ["cos"]),
            helper.make_node("Mul", ["radius", "cos"], ["z"]),
            helper.make_node("Exp", ["log_scale"], ["scale"]),
            helper.make_node("Mul", ["scale", "z"], ["offset"]),
            helper.make_node("Add", ["mean", "offset"], ["value64"]),
            helper.make_node("Squeeze", ["value64", "last"], ["value_flat"]),
            helper.make_node("Cast", ["value_flat"], ["value"], to=TensorProto.FLOAT),
        ]
        params = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "M"])
                  for name in ("logits", "means", "log_scales")]
        graph = helper.make_graph(
            nodes, "draw",
            [*params, helper.make_tensor_value_info("noise", TensorProto.DOUBLE, ["batch", 3])],
            [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"])],
            initializer=[helper.make_tensor("axis", TensorProto.INT64, [], [1]), ints("last", [-1]),
                         *(ints(f"start{i}", [i]) for i in range(3)), *(ints(f"end{i}", [i + 1]) for i in range(3)),
                         double("one", 1.0), double("minus_two", -2.0), double("two_pi", 2 * math.pi)],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                                 producer_name="densreg")

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def check_values(self, x, event_shape) -> np.ndarray:
        """Real values (B, C, H, W) -> finite float64 where they came as float64, else float32."""
        x = np.asarray(x)
        if x.dtype != np.float64:
            return validate_real_images(x, event_shape)
        x = numeric_batch(x, event_shape, "real values", "values of shape (B")
        if not np.isfinite(x).all():
            raise DataError("values contain NaN or infinite entries; expected finite real numbers")
        return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))

    def graph_input(self, x, event_shape) -> np.ndarray:
        """Finite float32 values (B, C, H, W); DataError also for values float32 cannot hold."""
        return validate_real_images(x, event_shape)

    def check_tensor_values(self, x):
        if x.is_complex():
            raise DataError(f"expected real values, got complex dtype {x.dtype}")
        if not x.is_floating_point() or x.element_size() < 8:
            x = x.float()
        if not bool(x.isfinite().all()):
            raise DataError("values contain NaN or infinite entries; expected finite real numbers")
        return x

    def integration_points(self, params):
        """Quadrature nodes and weights for the mixtures ``params`` (G, M): (G, N) each, float64 (module docstring)."""
        logits, means, log_scales = params
        x, w = np.polynomial.legendre.leggauss(GAUSS_NODES)
        means, scales = means.double(), log_scales.double().exp()
        x, w = means.new_tensor(x), means.new_tensor(w)
        offsets = means.new_tensor(sorted({s * b for b in BREAKS for s in (-1, 1)}))
        breaks = (means.unsqueeze(-1) + scales.unsqueeze(-1) * offsets).flatten(1).sort(-1).values
        lo, hi = breaks[:, :-1], breaks[:, 1:]
        half = (hi - lo) / 2
        nodes = (lo + half).unsqueeze(-1) + half.unsqueeze(-1) * x  # (G, intervals, GAUSS_NODES)
        return nodes.flatten(1), (half.unsqueeze(-1) * w).flatten(1)

    def describe(self) -> str:
        return f"mixture of {self.components or 'M'} Gaussians (logits, means, log_scales)"

    def output_meanings(self) -> dict[str, str]:
        mixture = "of the mixture of M Gaussians"
        return {"logits": f"log weights (log_softmax applied) {mixture}", "means": f"means {mixture}",
                "log_scales": f"log standard deviations {mixture}"}
