"""``LogisticMixture(K, M)``: PixelCNN++'s discretized mixture of M logistics over the levels 0..K-1.

``params`` is ``MixtureParams(logits, means, log_scales)``, each (..., M): unnormalized log weights,
and the means and log scales of M logistic distributions on the scaled axis [-1, 1], where level k sits at
x_k = 2k/(K-1) - 1 and owns the bin [x_k - 1/(K-1), x_k + 1/(K-1)] (Salimans et al. 2017, eq. 2):

    P(k | m) = sigmoid((x_k + 1/(K-1) - mu_m) / s_m) - sigmoid((x_k - 1/(K-1) - mu_m) / s_m)

with the edge bins open: P(0 | m) = sigmoid((x_0 + 1/(K-1) - mu_m) / s_m) and P(K-1 | m) = 1 - sigmoid((x_{K-1}
- 1/(K-1) - mu_m) / s_m), so the K probabilities sum to one exactly. log p(k) = logsumexp_m(log_softmax(logits)_m
+ log P(k | m)), in nats, with each log P computed without cancellation (no pdf fallback as in PixelCNN++'s
code): log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)). Log scales
are clamped to [-7, 7] (PixelCNN++ clamps below at -7; above, the distribution is flat over the levels anyway).

One value per pixel channel: for C = 3 the channels R, G, B are separate positions whose mixtures the model
conditions on the earlier channels of the pixel (PixelCNN++ instead shares one mixture indicator across the
three channels and shifts the G and B means linearly; here that coupling is the network's job).

The draw is the inverse CDF over the levels, one uniform u per value: value = the number of bin upper edges
k = 0..K-2 whose CDF sum_m w_m sigmoid((x_k + 1/(K-1) - mu_m) / s_m) is below u, in float64 (torch, numpy
and draw.onnx compute it alike, sigmoid written as 1 / (1 + exp(-z))).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import check_positive_int
from .categorical import Levels, check_discrete_data, check_levels
from .gaussian_mixture import MAX_COMPONENTS, LocationScaleMixture

LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 7.0


def component_log_probs(x, means, log_scales, num_categories: int):
    """Torch: log P(x | m) in nats of each discretized logistic: x int (...), means and log_scales (..., M)
    -> (..., M)."""
    half = 1.0 / (num_categories - 1)
    level = x.unsqueeze(-1)
    inv_scale = (-log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)).exp()
    # Edge i (odd) of the bins is i/(K-1) - 1, computed alike for the two bins that share it, so that their
    # masses telescope in floating point too (the K probabilities then sum to 1 within float rounding).
    upper = ((2 * level + 1).to(means.dtype) * half - 1.0 - means) * inv_scale
    lower = ((2 * level - 1).to(means.dtype) * half - 1.0 - means) * inv_scale
    log_below_upper = -(-upper).logaddexp(upper.new_zeros(()))  # log sigmoid(upper): the bin 0 is open below
    log_above_lower = -lower.logaddexp(lower.new_zeros(()))  # log (1 - sigmoid(lower)): the bin K-1 is open above
    inner = log_below_upper + log_above_lower + (-(lower - upper).expm1()).log()
    return inner.where((level > 0) & (level < num_categories - 1),
                       log_below_upper.where(level == 0, log_above_lower))


class LogisticMixture(Levels, LocationScaleMixture):
    """Discretized mixtures of ``components`` logistics over the levels 0..K-1 (module docstring).

    >>> import torch
    >>> family = LogisticMixture(4, components=2)
    >>> params = (torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))
    >>> round(float(family.log_prob(params, torch.arange(4)[:, None]).exp().sum()), 6)
    1.0
    """

    name = "logistic-mixture"
    noise_width = 1
    noise_rule = ("noise = numpy.random.default_rng(seed).random((n, D)), float64 uniform in [0, 1); column d is "
                  "used at step d (densreg sample --seed uses exactly this)")
    draw_rule = ("in float64: w = softmax(logits), s = exp(-clip(log_scales, -7, 7)); for each bin upper edge "
                 "e_k = (2k + 1)/(K - 1) - 1, k = 0..K-2, cdf_k = sum_m w_m / (1 + exp(-(e_k - means_m) s_m)); "
                 "value = number of k with cdf_k < noise")

    def __init__(self, num_categories: int, components: int = 5) -> None:
        self.k = check_levels(num_categories)
        self.components = check_positive_int("components", components, MAX_COMPONENTS)

    @property
    def param_size(self) -> int:
        return self.components

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "num_categories": self.k, "components": self.components}

    @classmethod
    def for_data(cls, num_categories: int) -> "LogisticMixture":
        return cls(check_discrete_data(num_categories))

    def log_prob(self, params, x):
        logits, means, log_scales = params
        return (logits.log_softmax(-1) + component_log_probs(x, means, log_scales, self.k)).logsumexp(-1)

    def edges(self):
        """The K-1 bin upper edges on the scaled axis, float64 numpy (K-1,)."""
        return (2 * np.arange(self.k - 1, dtype=np.float64) + 1) * (1.0 / (self.k - 1)) - 1

    def draw(self, params, noise):
        """Torch: params (B, M) each, noise float64 (B, 1) -> levels int64 (B,), in float64 (module docstring)."""
        logits, means, log_scales = (p.double() for p in params)
        weights = logits.softmax(-1).unsqueeze(-1)
        inv_scale = (-log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)).exp().unsqueeze(-1)
        z = (means.new_tensor(self.edges()) - means.unsqueeze(-1)) * inv_scale  # (B, M, K-1)
        cdf = (weights / (1 + (-z).exp())).sum(-2)
        return (cdf < noise[..., :1].double()).sum(-1)

    def draw_numpy(self, params, noise: np.ndarray) -> np.ndarray:
        """numpy float64, as ``draw``: params (B, M) each, noise (B, 1) or (B,) -> levels int64 (B,)."""
        logits, means, log_scales = (np.asarray(p, dtype=np.float64) for p in params)
        u = noise[:, :1] if noise.ndim == 2 else noise[:, None]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        weights = (probs / probs.sum(-1, keepdims=True))[..., None]
        inv_scale = np.exp(-np.clip(log_scales, LOG_SCALE_MIN, LOG_SCALE_MAX))[..., None]
        z = (self.edges() - means[..., None]) * inv_scale
        with np.errstate(over="ignore"):  # exp(-z) = inf gives a CDF term of 0, as in torch
            cdf = (weights / (1 + np.exp(-z))).sum(-2)
        return (cdf < u).sum(-1).astype(np.int64)

    def describe(self) -> str:
        return f"discretized mixture of {self.components} logistics over {self.k} levels (logits, means, log_scales)"

    def output_meanings(self) -> dict[str, str]:
        mixture = f"of the discretized mixture of M logistics (levels 0..{self.k - 1} at 2k/(K-1) - 1)"
        return {"logits": f"log weights (log_softmax applied) {mixture}", "means": f"means {mixture}",
                "log_scales": f"log scales {mixture}; clamped to [-7, 7] when used"}

    def onnx_draw(self, opset: int, ir_version: int):
        """draw.onnx: logits, means, log_scales float (B, M), noise float64 (B,) -> value int64 (B,) (``draw``)."""
        from onnx import TensorProto, helper, numpy_helper

        node = helper.make_node
        nodes = [
            *(node("Cast", [name], [name + "64"], to=TensorProto.DOUBLE) for name in self.param_names),
            node("Softmax", ["logits64"], ["weights"], axis=-1),
            node("Clip", ["log_scales64", "lo", "hi"], ["clipped"]),
            node("Neg", ["clipped"], ["neg_log_scales"]),
            node("Exp", ["neg_log_scales"], ["inv_scale"]),
            *(node("Unsqueeze", [name, "last"], [name + "_col"]) for name in ("weights", "means64", "inv_scale")),
            node("Sub", ["edges", "means64_col"], ["centred"]),
            node("Mul", ["centred", "inv_scale_col"], ["z"]),
            node("Neg", ["z"], ["neg_z"]),
            node("Exp", ["neg_z"], ["exp_neg_z"]),
            node("Add", ["exp_neg_z", "one"], ["denominator"]),
            node("Div", ["weights_col", "denominator"], ["terms"]),
            node("ReduceSum", ["terms", "components_axis"], ["cdf"], keepdims=0),
            node("Unsqueeze", ["noise", "last"], ["noise_col"]),
            node("Less", ["cdf", "noise_col"], ["below"]),
            node("Cast", ["below"], ["below64"], to=TensorProto.INT64),
            node("ReduceSum", ["below64", "last"], ["value"], keepdims=0),
        ]
        double = lambda name, value: numpy_helper.from_array(np.asarray(value, dtype=np.float64), name)  # noqa: E731
        graph = helper.make_graph(
            nodes, "draw",
            [*(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "M"]) for name in self.param_names),
             helper.make_tensor_value_info("noise", TensorProto.DOUBLE, ["batch"])],
            [helper.make_tensor_value_info("value", TensorProto.INT64, ["batch"])],
            initializer=[double("lo", LOG_SCALE_MIN), double("hi", LOG_SCALE_MAX), double("one", 1.0),
                         double("edges", self.edges()),
                         numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
                         numpy_helper.from_array(np.array([1], dtype=np.int64), "components_axis")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                                 producer_name="densreg")
