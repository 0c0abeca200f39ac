"""The family: what the parameters a model emits for one value mean.

Every densreg model maps the values before generation position d (and nothing else) to the
parameters of a one-dimensional distribution for the value at d. A ``Family`` says what those
parameters are and does everything that depends on them, once for every model: their layout,
``log_prob`` (nats), the draw from fixed uniform noise (in torch and in numpy, the same
arithmetic, so the torch-free runtime draws the same samples), how a value is checked, what
the conformance kit compares and how it integrates (enumeration for discrete families,
quadrature for real ones), and the names and meanings of the exported outputs.

This module and every family module import neither torch nor onnx: torch tensors are handled
through their own methods, so the runtime (onnxruntime and numpy only) shares the classes.

Shapes: ``params`` is a tuple of tensors (or arrays) named ``param_names``, each (..., P) with
P = ``param_size``; for a teacher-forced pass (B, D, P), for one step (B, P). Values are (...)
without the last axis. Noise for one value is ``noise_width`` uniforms in [0, 1), float64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError


class Family(ABC):
    """A family of one-dimensional conditional distributions (see the module docstring).

    Subclasses set the class variables and implement the abstract methods; ``spec()`` returns
    the JSON that rebuilds the family (``family_from_spec``), and is what checkpoints and export
    manifests record.
    """

    name: ClassVar[str]  # registered name, e.g. "categorical"
    discrete: ClassVar[bool]  # integer values 0..K-1 (normalization by enumeration) or reals (by quadrature)
    param_names: ClassVar[tuple[str, ...]]  # the tensors of ``params``, in order
    noise_width: ClassVar[int]  # uniforms per drawn value
    # human-readable rules, written into export manifests
    noise_rule: ClassVar[str]
    draw_rule: ClassVar[str]

    # -- identity --------------------------------------------------------------------------
    @property
    @abstractmethod
    def param_size(self) -> int | None:
        """P, the last axis of every parameter tensor (None: not fixed, read off the params)."""

    @property
    def num_categories(self) -> int:
        """K for a discrete family (values 0..K-1); 0 for real values (no levels)."""
        return 0

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-able description: ``{"name": ..., **constructor arguments}``."""

    def __eq__(self, other) -> bool:
        return isinstance(other, Family) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "name")
        return f"{type(self).__name__}({args})"

    @classmethod
    @abstractmethod
    def for_data(cls, num_categories: int) -> "Family":
        """The family a model of this kind uses on data with K = ``num_categories`` levels (0: real values);
        ConfigError when the family cannot model such data."""

    @property
    def value_kind(self) -> str:
        """"categorical" (integer levels) or "continuous" (real values), as files have recorded it."""
        return "categorical" if self.discrete else "continuous"

    # -- parameters ------------------------------------------------------------------------
    def params(self, raw) -> tuple:
        """A model's output as the tuple of ``param_names`` tensors (one bare tensor for a family with one
        parameter); ValueError naming what is wrong for another count or mismatched shapes."""
        if not isinstance(raw, tuple):
            raw = (raw,)
        if len(raw) != len(self.param_names):
            raise ValueError(f"{self.name} parameters are {len(self.param_names)} tensors "
                             f"({', '.join(self.param_names)}), got {len(raw)}")
        shapes = [tuple(t.shape) for t in raw]
        if any(shape != shapes[0] for shape in shapes[1:]):
            raise ValueError(f"{self.name} parameters must share one shape, got {shapes}")
        return self.pack(raw)

    def pack(self, params: tuple):
        """The tuple in the form models return (a bare tensor for one parameter; subclasses may name them)."""
        return tuple(params)

    def unpack(self, params) -> tuple:
        """``pack``'s inverse: always a tuple of ``param_names`` tensors."""
        return params if isinstance(params, tuple) else (params,)

    def normalized(self, params: tuple) -> tuple:
        """The same distribution with its parameters in a canonical scale (e.g. log weights that
        sum to one in probability): what exported graphs output. Default: unchanged."""
        return tuple(params)

    def comparable(self, params: tuple):
        """What the kit compares between two computations of the same conditionals: a tensor
        (..., P, n). Default: the parameters stacked on a new last axis."""
        return stack_last(tuple(params))

    # -- values ----------------------------------------------------------------------------
    @abstractmethod
    def log_prob(self, params: tuple, x):
        """log p(x) in nats (a log-probability, or a log-density for real values): params (..., P), x (...) -> (...)."""

    def export_log_prob(self, params: tuple, x):
        """``log_prob`` as exported graphs compute it (a family may trade rounding for speed). Default: log_prob."""
        return self.log_prob(params, x)

    def onnx_draw(self, opset: int, ir_version: int):
        """draw.onnx, the draw as an ONNX graph (params and noise (B,) -> value (B,)), for sampling on a device
        and sample.onnx; None where the family has none (the runtime then draws in numpy)."""
        return None

    @property
    def has_onnx_draw(self) -> bool:
        return type(self).onnx_draw is not Family.onnx_draw

    @abstractmethod
    def draw(self, params: tuple, noise):
        """Torch: the value drawn by the noise, params (B, P), noise float64 (B, noise_width) -> (B,)."""

    @abstractmethod
    def draw_numpy(self, params: tuple, noise: np.ndarray) -> np.ndarray:
        """numpy: ``draw`` with the same arithmetic: params (B, P) arrays, noise (B, noise_width) -> (B,)."""

    @abstractmethod
    def check_values(self, x: np.ndarray, event_shape) -> np.ndarray:
        """Values at the boundary (numpy), shape (B, C, H, W) -> an array in ``numpy_dtype``; DataError
        (one line) for a wrong shape, dtype or value."""

    def graph_input(self, x, event_shape) -> np.ndarray:
        """``check_values`` in ``numpy_dtype``, what exported graphs take (DataError as there)."""
        return np.ascontiguousarray(self.check_values(x, event_shape), dtype=self.numpy_dtype)

    @abstractmethod
    def check_tensor_values(self, x):
        """The value checks of ``check_values`` on a tensor of the right shape; returns it in the family's
        value dtype (int64 for discrete families; real families keep float64 and make the rest float32)."""

    @property
    @abstractmethod
    def numpy_dtype(self) -> np.dtype:
        """What the runtime feeds to graphs as values: int64, or float32 for real values."""

    def noise_shape(self, n: int, positions: int) -> tuple[int, ...]:
        """The noise for ``n`` samples of ``positions`` values: (n, D), or (n, D, width) for width > 1."""
        return (n, positions) if self.noise_width == 1 else (n, positions, self.noise_width)

    def noise_column(self, noise, d: int):
        """The noise of position ``d`` as (B, noise_width), from noise of ``noise_shape``."""
        column = noise[:, d]
        return column[:, None] if self.noise_width == 1 else column

    def describe(self) -> str:
        """What the parameters mean, for manifests and READMEs."""
        return f"{self.name}: {', '.join(self.param_names)}"

    def output_meanings(self) -> dict[str, str]:
        """Each exported parameter's meaning (after ``normalized``)."""
        return {name: name for name in self.param_names}

    def value_meaning(self) -> str:
        """What an exported graph's value input holds."""
        return f"values 0..{self.num_categories - 1}" if self.discrete else "real values (finite)"


def stack_last(tensors: tuple):
    """Tensors of one shape (...) stacked on a new last axis -> (..., n), with tensor methods only (keeps
    gradients)."""
    out = tensors[0].new_empty(*tensors[0].shape, len(tensors))
    for i, tensor in enumerate(tensors):
        out[..., i] = tensor
    return out


def check_positive_int(key: str, value, most: int) -> int:
    """``value`` as an int in 1..most; ConfigError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ConfigError(f"{key} must be an integer from 1 to {most}, got {value!r}")
    return value
