"""The density-model protocol every densreg model follows.

A model factorises p(x) over the D = C*H*W values of an image by the chain rule
in a fixed ``ordering``:  log p(x) = sum_d log p(x_{o(d)} | x_{o(<d)}).
Subclasses implement ``conditional_logits`` (one teacher-forced pass) and,
where the model allows a cheaper one than recomputing the prefix, the
incremental pair ``initial_state`` / ``step``. Everything else (log_prob,
per-pixel scores, sampling) is derived here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .datasets import validate_real_images
from .errors import ConfigError, DataError
from .limits import check_event_shape
from .orderings import make_ordering

State = tuple[torch.Tensor, ...]


def validate_images(x: Any, event_shape: tuple[int, int, int], num_categories: int) -> torch.Tensor:
    """Check a batch of images at the boundary and return it as int64 (B, C, H, W).

    Raises DataError (a ValueError) naming what was expected and what came: a wrong
    rank or shape, values outside 0..K-1, non-integer or NaN values. Float input is
    accepted only when every value is already a whole number; nothing is cast silently.
    ``num_categories`` 0 means real values: ``validate_real``.
    """
    if num_categories == 0:
        return validate_real(x, event_shape)
    if isinstance(x, torch.Tensor) and x.dtype in (torch.uint16, torch.uint32, torch.uint64):
        x = x.cpu().numpy()  # torch has no comparisons for these: check them in numpy
    if isinstance(x, np.ndarray):
        x = _from_numpy(x, num_categories)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"expected a tensor or numpy array of images, got {type(x).__name__}")
    expected = tuple(event_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise DataError(
            f"expected images of shape (B, {', '.join(map(str, expected))}), got shape {tuple(x.shape)}"
        )
    if x.is_complex():
        raise DataError(f"expected integer values 0..{num_categories - 1}, got complex dtype {x.dtype}")
    if torch.compiler.is_compiling():
        # Tracing for ONNX export (or torch.compile): the value checks below branch on
        # data, which a traced graph cannot do. Shapes were checked above; the exported
        # runtime validates values itself.
        return x.to(torch.int64)
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise DataError("images contain NaN or infinite values; expected integers 0..K-1")
        if not bool((x == torch.round(x)).all()):
            raise DataError(f"images contain non-integer values; expected integers 0..{num_categories - 1}")
    if x.numel():  # compared as Python numbers: uint8 >= 256 in torch wraps 256 to 0
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi >= num_categories:
            raise DataError(f"image values must lie in 0..{num_categories - 1}; got values from {lo} to {hi}")
    return x.to(torch.int64)


def validate_real(x: Any, event_shape: tuple[int, int, int]) -> torch.Tensor:
    """Check a batch of real-valued images (B, C, H, W) and return it as a float tensor.

    Integer and float input are accepted (float64 stays float64, anything else becomes
    float32); DataError for a wrong rank or shape, NaN or infinite values, or a non-numeric dtype.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == np.float64:
            x = torch.from_numpy(np.ascontiguousarray(x))
        else:
            return torch.from_numpy(validate_real_images(x, event_shape))
    if not isinstance(x, torch.Tensor):
        raise DataError(f"expected a tensor or numpy array of real values, got {type(x).__name__}")
    expected = tuple(event_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise DataError(f"expected values of shape (B, {', '.join(map(str, expected))}), got shape {tuple(x.shape)}")
    if x.is_complex():
        raise DataError(f"expected real values, got complex dtype {x.dtype}")
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise DataError("values contain NaN or infinite entries; expected finite real numbers")
    return x


def _from_numpy(x: np.ndarray, num_categories: int) -> torch.Tensor:
    """A numpy batch as a tensor torch can compare: native byte order, contiguous, and wide unsigned
    integers (which torch cannot compare) range-checked here and widened to int64."""
    if x.dtype.kind not in "biufc":
        raise DataError(f"expected integer values 0..{num_categories - 1}, got an array of dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
    if x.dtype.kind == "u" and x.dtype.itemsize > 1:
        if x.size and x.max() >= num_categories:
            raise DataError(f"image values must lie in 0..{num_categories - 1}; got values up to {x.max()}")
        x = x.astype(np.int64)
    return torch.from_numpy(x)


def categorical_from_uniform(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: logits (B, K), noise uniform in [0, 1) (B,) -> int64 (B,).

    Deterministic given the noise, so torch and onnxruntime samplers fed the same
    noise draw the same values.
    """
    cdf = torch.cumsum(torch.softmax(logits.double(), dim=-1), dim=-1)
    value = (cdf < noise.double().unsqueeze(-1)).sum(-1)
    return value.clamp(max=logits.shape[-1] - 1)


def at_position(table: torch.Tensor, position) -> torch.Tensor:
    """``table[position]`` along dim 0 for an int or a 0-dim int64 tensor ``position``.

    Written with ``index_select`` so it traces for export (indexing with a 0-dim
    tensor would call ``int()`` on it).
    """
    index = torch.as_tensor(position, dtype=torch.int64, device=table.device).reshape(1)
    return table.index_select(0, index).squeeze(0)


class DensityModel(nn.Module):
    """Base class: an exact autoregressive density over images (C, H, W) with K levels.

    Attributes: ``event_shape`` (C, H, W); ``num_categories`` K; ``ordering`` (its
    name); buffer ``order`` (D,) int64, the flat index generated at each step.
    Set ``closed_form = True`` and implement ``fit_closed_form`` when maximum
    likelihood has a closed form (fit by counting, not gradient descent).
    """

    closed_form: bool = False
    continuous: bool = False  # True: real values with mixture-of-Gaussians conditionals (ContinuousDensityModel)
    description: str = ""

    def __init__(self, event_shape, num_categories: int = 2, ordering: str = "raster") -> None:
        super().__init__()
        shape, num_categories = check_event_shape(event_shape, num_categories, continuous=self.continuous)
        self.event_shape = shape
        self.num_categories = num_categories
        self.ordering = str(ordering)
        self.register_buffer("order", make_ordering(self.ordering, shape), persistent=False)

    # -- shapes -------------------------------------------------------------
    @property
    def num_positions(self) -> int:
        """D = C * H * W."""
        return math.prod(self.event_shape)

    @property
    def value_kind(self) -> str:
        """"categorical" (values 0..K-1) or "continuous" (real values); checkpoints and exports record it."""
        return "continuous" if self.continuous else "categorical"

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments; subclasses add theirs to this dict."""
        return {
            "event_shape": list(self.event_shape),
            "num_categories": self.num_categories,
            "ordering": self.ordering,
        }

    def free_parameters(self) -> int:
        """Number of free parameters (default: elements of trainable parameters)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def validate(self, x: Any) -> torch.Tensor:
        """``validate_images`` for this model's shape, moved to its device."""
        return validate_images(x, self.event_shape, self.num_categories).to(self.order.device)

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> values in generation order (B, D)."""
        return x.reshape(x.shape[0], -1).index_select(1, self.order)  # one Gather when exported

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """Values in generation order (B, D) -> images (B, C, H, W)."""
        flat = seq.index_select(1, torch.argsort(self.order))  # a gather, not an index_put, for export
        return flat.reshape(seq.shape[0], *self.event_shape)

    # -- density ------------------------------------------------------------
    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every conditional p(x_{o(d)} | x_{o(<d)}): (B, C, H, W) -> (B, D, K).

        Position d must depend on x_{o(<d)} only.
        """
        raise NotImplementedError

    def conditional_log_probs(self, x: Any) -> torch.Tensor:
        """log p(x_{o(d)} | x_{o(<d)}) in nats, (B, D) in generation order."""
        x = self.validate(x)
        logits = self.conditional_logits(x)
        log_p = torch.log_softmax(logits, dim=-1)
        return log_p.gather(-1, self.to_sequence(x).unsqueeze(-1)).squeeze(-1)

    def log_prob(self, x: Any) -> torch.Tensor:
        """Exact log-likelihood in nats, (B, C, H, W) -> (B,)."""
        return self.conditional_log_probs(x).sum(-1)

    def pixel_log_probs(self, x: Any) -> torch.Tensor:
        """Per-value log-probabilities in nats laid out as the image, (B, C, H, W)."""
        return self.from_sequence(self.conditional_log_probs(x))

    def features(self, x: Any) -> torch.Tensor:
        """A hidden representation for downstream use, (B, C, H, W) -> (B, F) float.

        Models with learned hidden units override this and document what it is.
        """
        raise NotImplementedError(f"{type(self).__name__} has no learned features")

    # -- incremental interface ------------------------------------------------
    def initial_state(self, batch_size: int) -> State:
        """State before position 0. Default: the prefix of values drawn so far (B, D)."""
        return (torch.zeros(batch_size, self.num_positions, dtype=torch.int64, device=self.order.device),)

    def step(self, value: torch.Tensor, position, state: State) -> tuple[torch.Tensor, State]:
        """Logits (B, K) of the conditional at ``position`` d, and the new state.

        ``value`` (B,) int64 is x at generation position d-1 (ignored, pass zeros, at
        d = 0); ``position`` is an int or a 0-dim int64 tensor. The default recomputes
        the whole prefix (O(D) per step); models override it with a cached step.
        """
        return self.recompute_step(value, position, state)

    def recompute_step(self, value: torch.Tensor, position, state: State) -> tuple[torch.Tensor, State]:
        """The naive step: write ``value`` into the prefix and re-run ``conditional_logits``.

        Written without ``int(position)`` or branches on it, so it exports with a
        0-dim tensor ``position`` (a one-hot mask writes the value; at d = 0 it matches nothing).
        """
        (prefix,) = state
        position = torch.as_tensor(position, dtype=torch.int64, device=prefix.device)
        previous = torch.arange(prefix.shape[1], device=prefix.device) == position - 1
        prefix = torch.where(previous, value.unsqueeze(-1), prefix)
        logits = self.conditional_logits(self.from_sequence(prefix))
        return at_position(logits.transpose(0, 1), position), (prefix,)

    # -- sampling -----------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               naive: bool = False) -> torch.Tensor:
        """Exact ancestral samples, int64 (n, C, H, W).

        ``noise`` (n, D) uniform in [0, 1) fixes the draw (one value per position);
        otherwise it is drawn from ``generator``. ``naive=True`` re-runs the full
        conditional network for every position (for benchmarks and checks).
        """
        device = self.order.device
        if noise is None:
            noise = torch.rand(n, self.num_positions, generator=generator, dtype=torch.float64)
        noise = noise.to(device)
        if naive:
            state = DensityModel.initial_state(self, n)
            step = self.recompute_step
        else:
            state = self.initial_state(n)
            step = self.step
        values = torch.zeros(n, self.num_positions, dtype=torch.int64, device=device)
        value = torch.zeros(n, dtype=torch.int64, device=device)
        for d in range(self.num_positions):
            logits, state = step(value, d, state)
            value = categorical_from_uniform(logits, noise[:, d])
            values[:, d] = value
        return self.from_sequence(values)

    # -- closed-form fitting --------------------------------------------------
    def fit_closed_form(self, x: torch.Tensor) -> dict[str, float]:
        """Maximum-likelihood fit by counting on int64 images (N, C, H, W); returns metrics."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fit")
