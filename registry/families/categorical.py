"""``Categorical(K)``: K unnormalized logits per value, values 0..K-1 (K = 2 is the Bernoulli).

    p(x = k) = softmax(logits)_k                       log_prob = log_softmax(logits)[x]   (nats)

The draw is the inverse CDF in float64: the number of entries of cumsum(softmax(logits)) below
the noise u (one uniform per value), capped at K-1. torch (``draw``), numpy (``draw_numpy``) and
ONNX (``onnx_draw``, the runtime's draw.onnx) compute it alike.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..datasets import numeric_batch
from ..errors import ConfigError, DataError
from ..limits import MAX_CATEGORIES
from .base import Family


def inverse_cdf(logits, u):
    """Torch: the number of entries of cumsum(softmax(float64(logits))) below ``u``, capped at K-1:
    logits (B, K), u (B,) uniform in [0, 1) -> int64 (B,)."""
    cdf = logits.double().softmax(-1).cumsum(-1)
    return (cdf < u.double().unsqueeze(-1)).sum(-1).clamp(max=logits.shape[-1] - 1)


def check_levels(num_categories) -> int:
    """K as an int in 2..MAX_CATEGORIES; ConfigError otherwise."""
    if not isinstance(num_categories, numbers.Integral) or isinstance(num_categories, bool) \
            or not 2 <= num_categories <= MAX_CATEGORIES:
        raise ConfigError(f"num_categories must be an integer from 2 to {MAX_CATEGORIES}, got {num_categories!r}")
    return int(num_categories)


def check_discrete_data(num_categories: int) -> int:
    """``num_categories`` unchanged; ConfigError when it is 0 (real-valued data, which a family of levels cannot model)."""
    if num_categories == 0:
        raise ConfigError("models values 0..K-1, but these data are real-valued (continuous): use a continuous "
                          "model such as rnade or gaussian-mixture")
    return num_categories


class Levels(Family):
    """A family of distributions over the integer levels 0..K-1 (``self.k`` = K): the value checks and
    dtypes every discrete family shares (``Categorical``, ``LogisticMixture``)."""

    discrete = True
    k: int

    @property
    def num_categories(self) -> int:
        return self.k

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(np.int64)

    def _range_error(self, lo, hi) -> DataError:
        return DataError(f"image values must lie in 0..{self.k - 1}; got values from {lo} to {hi}")

    def check_values(self, x, event_shape) -> np.ndarray:
        """Integer images (B, C, H, W), values 0..K-1 -> int64; float input only when every value is whole."""
        x = numeric_batch(x, event_shape, f"integer values 0..{self.k - 1}", "images of shape (B")
        if x.dtype.kind == "f":
            if not np.isfinite(x).all():
                raise DataError("images contain NaN or infinite values; expected integers 0..K-1")
            if not (x == np.round(x)).all():
                raise DataError(f"images contain non-integer values; expected integers 0..{self.k - 1}")
        if x.size and (x.min() < 0 or x.max() >= self.k):
            raise self._range_error(x.min(), x.max())
        return np.ascontiguousarray(x, dtype=np.int64)

    def check_tensor_values(self, x):
        if x.is_complex():
            raise DataError(f"expected integer values 0..{self.k - 1}, got complex dtype {x.dtype}")
        if x.is_floating_point():
            if not bool(x.isfinite().all()):
                raise DataError("images contain NaN or infinite values; expected integers 0..K-1")
            if not bool((x == x.round()).all()):
                raise DataError(f"images contain non-integer values; expected integers 0..{self.k - 1}")
        if x.numel():  # compared as Python numbers: uint8 >= 256 in torch wraps 256 to 0
            lo, hi = x.min().item(), x.max().item()
            if lo < 0 or hi >= self.k:
                raise self._range_error(lo, hi)
        return x.long()


class Categorical(Levels):
    """K-way softmax conditionals over integer values 0..K-1; ``params`` is ``(logits,)``, (..., K).

    >>> import torch
    >>> family = Categorical(3)
    >>> family.log_prob((torch.zeros(2, 3),), torch.tensor([0, 2]))   # uniform logits: log(1/3)
    tensor([-1.0986, -1.0986])
    >>> family.spec()
    {'name': 'categorical', 'num_categories': 3}
    """

    name = "categorical"
    param_names = ("logits",)
    noise_width = 1
    draw_rule = ("value = number of entries of cumsum(softmax(float64(logits))) that are < noise, capped at K-1 "
                 "(inverse CDF; for K = 2: value = 1 iff softmax(logits)[0] < noise)")
    noise_rule = ("noise = numpy.random.default_rng(seed).random((n, D)), float64 uniform in [0, 1); column d is "
                  "used at step d (densreg sample --seed uses exactly this)")

    def __init__(self, num_categories: int) -> None:
        self.k = check_levels(num_categories)

    @property
    def param_size(self) -> int:
        return self.k

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "num_categories": self.k}

    @classmethod
    def for_data(cls, num_categories: int) -> "Categorical":
        return cls(check_discrete_data(num_categories))

    def pack(self, params: tuple):
        return params[0]

    def log_prob(self, params, x):
        (logits,) = self.unpack(params)
        return logits.log_softmax(-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)

    def export_log_prob(self, params, x):
        """``log_prob`` as exported graphs compute it: for K = 2, -softplus(+-(l1 - l0)), half the work of
        log_softmax and a gather (the same value within float rounding)."""
        (logits,) = self.unpack(params)
        if self.k != 2:
            return self.log_prob(params, x)
        z = (1 - 2 * x).to(logits.dtype) * (logits[..., 1] - logits[..., 0])
        return -(z.relu() + (-z.abs()).exp().log1p())

    def draw(self, params, noise):
        (logits,) = self.unpack(params)
        return inverse_cdf(logits, noise[..., 0])

    def draw_numpy(self, params, noise: np.ndarray) -> np.ndarray:
        """The same draw in numpy float64; for K = 2 written on the two columns (value 1 iff p0 < noise)."""
        (logits,) = self.unpack(params)
        u = noise[:, 0] if noise.ndim == 2 else noise
        if logits.shape[-1] == 2:
            l0, l1 = logits[:, 0].astype(np.float64), logits[:, 1].astype(np.float64)
            top = np.maximum(l0, l1)
            e0, e1 = np.exp(l0 - top), np.exp(l1 - top)
            return (e0 / (e0 + e1) < u).astype(np.int64)
        logits = logits.astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), -1)
        return np.minimum((cdf < u[:, None]).sum(-1), logits.shape[-1] - 1).astype(np.int64)

    def output_meanings(self) -> dict[str, str]:
        return {"logits": "unnormalized logits; log_softmax over the last axis gives log p of each value 0..K-1"}

    def onnx_draw(self, opset: int, ir_version: int):
        """draw.onnx: logits float (B, K), noise float64 (B,) -> value int64 (B,), the inverse-CDF draw."""
        from onnx import TensorProto, helper

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
            initializer=[helper.make_tensor("axis", TensorProto.INT64, [], [1]), const("last", [-1]),
                         const("one", [1])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                                 producer_name="densreg")
