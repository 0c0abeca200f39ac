"""The density-model protocol every densreg model follows.

A model factorises p(x) over the D = C*H*W values of an image by the chain rule in a fixed
``ordering``:  log p(x) = sum_d log p(x_{o(d)} | x_{o(<d)}). For each position d it maps the
values before d to the parameters of a one-dimensional distribution whose meaning its
**family** owns (``registry.families``: ``Categorical(K)`` for values 0..K-1,
``GaussianMixture(M)`` for real values, ...).

A subclass implements the teacher-forced pass, ``conditional_params`` (every position's
parameters at once; a categorical model may implement ``conditional_logits`` instead) and,
where it is cheaper than recomputing the prefix, ``initial_state`` / ``step``. Everything else
(log_prob, per-value scores, validation, sampling) is written here once, for every family.
"""

from __future__ import annotations

import math
from abc import ABCMeta
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from . import returns
from .errors import ConfigError, DataError
from .families import Categorical, Family, GaussianMixture, inverse_cdf
from .limits import check_event_shape
from .orderings import make_ordering

State = tuple[torch.Tensor, ...]
WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)  # torch cannot compare these: checked in numpy


def validate_values(x: Any, event_shape: tuple[int, int, int], family: Family) -> torch.Tensor:
    """Check a batch of values at the boundary and return it as a tensor (B, C, H, W): int64 for a discrete
    family, floating (float64 kept, else float32) for a real one.

    Raises DataError (a ValueError) naming what was expected and what came: a wrong rank or shape, or
    values the family refuses (outside 0..K-1, non-integer, NaN or infinite). Nothing is cast silently.
    """
    if isinstance(x, torch.Tensor) and x.dtype in WIDE_UNSIGNED:
        x = x.cpu().numpy()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(family.check_values(x, event_shape))
    if not isinstance(x, torch.Tensor):
        noun = "images" if family.discrete else "real values"
        raise DataError(f"expected a tensor or numpy array of {noun}, got {type(x).__name__}")
    expected = tuple(event_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        noun = "images" if family.discrete else "values"
        raise DataError(f"expected {noun} of shape (B, {', '.join(map(str, expected))}), got shape {tuple(x.shape)}")
    if torch.compiler.is_compiling():
        # Tracing for ONNX export (or torch.compile): the value checks branch on data, which a traced
        # graph cannot do. Shapes were checked above; the exported runtime validates values itself.
        return x.to(torch.int64) if family.discrete else x
    return family.check_tensor_values(x)


def validate_images(x: Any, event_shape: tuple[int, int, int], num_categories: int) -> torch.Tensor:
    """``validate_values`` for data with K = ``num_categories`` levels (values 0..K-1 -> int64), or real
    values where K is 0 (the data's convention; models speak of families)."""
    return validate_values(x, event_shape, GaussianMixture() if num_categories == 0 else Categorical(num_categories))


def categorical_from_uniform(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: logits (B, K), noise uniform in [0, 1) (B,) -> int64 (B,) (``Categorical``'s draw)."""
    return inverse_cdf(logits, noise)


def step_positions(position, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``position`` (an int or a 0-dim int64 tensor) and the one before it (0 at position 0), each as an int64
    tensor of shape (1,) on ``device``: what a cached step indexes its weights with (``index_select``)."""
    position = torch.as_tensor(position, dtype=torch.int64, device=device).reshape(1)
    return position, torch.clamp(position - 1, min=0)


def at_position(table: torch.Tensor, position) -> torch.Tensor:
    """``table[position]`` along dim 0 for an int or a 0-dim int64 tensor ``position``.

    Written with ``index_select`` so it traces for export (indexing with a 0-dim tensor would call
    ``int()`` on it).

    >>> at_position(torch.tensor([10, 20, 30]), torch.tensor(2))
    tensor(30)
    """
    index = torch.as_tensor(position, dtype=torch.int64, device=table.device).reshape(1)
    return table.index_select(0, index).squeeze(0)


class DensityModel(nn.Module, metaclass=ABCMeta):
    """Base class: an exact autoregressive density over images (C, H, W).

    What the registry, the CLI and the training loop read is declared here:

    - ``registry_name``, ``description``: the default name and one line for ``densreg models``;
    - ``families``: the family classes the model can emit (the first is its default; ``family`` in the
      constructor picks another); the registry matches them against the data (levels or real values);
    - ``closed_form``: fitted by ``fit_closed_form`` (counting, EM), not gradient descent;
    - ``init_from_data(x)``: called by training with up to 10,000 training images before the first epoch;
    - ``features(x)``: learned features, where ``has_features``.

    Attributes: ``event_shape`` (C, H, W); ``family``; ``num_categories`` (K of the data, 0 for real
    values); ``ordering`` (its name); buffer ``order`` (D,) int64, the flat index generated at each step.
    """

    registry_name: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    closed_form: ClassVar[bool] = False
    families: ClassVar[tuple[type[Family], ...]] = (Categorical,)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        returns.check_methods(cls, DensityModel)  # every override's results are validated (returns.RULES)

    def __init__(self, event_shape, num_categories: int = 2, ordering: str = "raster",
                 family: Family | None = None) -> None:
        super().__init__()
        if family is None:
            try:
                family = self.families[0].for_data(num_categories)
            except ConfigError as exc:
                raise ConfigError(f"{type(self).__name__} {exc}") from None
        shape, num_categories = check_event_shape(event_shape, num_categories, continuous=not family.discrete)
        if family.discrete and family.num_categories != num_categories:
            raise ConfigError(f"family {family!r} does not model data with K = {num_categories} levels")
        self.family = family
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
        """"categorical" (values 0..K-1) or "continuous" (real values), from the family; files record it."""
        return self.family.value_kind

    @property
    def value_dtype(self) -> torch.dtype:
        """The dtype of values: int64 for a discrete family; else the floating dtype of the parameters (float32
        if there are none)."""
        if self.family.discrete:
            return torch.int64
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    @property
    def has_features(self) -> bool:
        """Whether the class defines ``features``."""
        return type(self).features is not DensityModel.features

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments; subclasses add theirs to this dict."""
        return {"event_shape": list(self.event_shape), "num_categories": self.num_categories,
                "ordering": self.ordering}

    def free_parameters(self) -> int:
        """Number of free parameters (default: elements of trainable parameters)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def validate(self, x: Any) -> torch.Tensor:
        """``validate_values`` for this model's shape and family, on its device (real values in its dtype)."""
        x = validate_values(x, self.event_shape, self.family)
        return x.to(self.order.device, self.value_dtype)

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> values in generation order (B, D)."""
        return x.reshape(x.shape[0], -1).index_select(1, self.order)  # one Gather when exported

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """Values in generation order (B, D) -> images (B, C, H, W)."""
        flat = seq.index_select(1, torch.argsort(self.order))  # a gather, not an index_put, for export
        return flat.reshape(seq.shape[0], *self.event_shape)

    # -- density ------------------------------------------------------------
    def conditional_params(self, x: torch.Tensor):
        """The family's parameters of every conditional p(x_{o(d)} | x_{o(<d)}): values (B, C, H, W) ->
        tensors (B, D, P) in generation order (``family.pack`` form: the logits alone for ``Categorical``).

        Position d must depend on x_{o(<d)} only. Default: ``conditional_logits`` for a categorical model.
        """
        if type(self).conditional_logits is DensityModel.conditional_logits:
            raise NotImplementedError(f"{type(self).__name__} implements neither conditional_params nor "
                                      "conditional_logits")
        return self.conditional_logits(x)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every conditional of a categorical model: (B, C, H, W) -> (B, D, K). Default: the
        logits of ``conditional_params``."""
        if not isinstance(self.family, Categorical) or \
                type(self).conditional_params is DensityModel.conditional_params:
            raise NotImplementedError(f"{type(self).__name__} emits {self.family.describe()}, not logits: "
                                      "use conditional_params")
        return self.conditional_params(x)

    def conditional_log_probs(self, x: Any) -> torch.Tensor:
        """log p(x_{o(d)} | x_{o(<d)}) in nats (log densities for real values), (B, D) in generation order."""
        x = self.validate(x)
        params = self.family.unpack(self.conditional_params(x))
        return self.family.log_prob(params, self.to_sequence(x))

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

    def init_from_data(self, x: torch.Tensor) -> None:
        """Set data-dependent buffers (e.g. a standardization) from training values (N, C, H, W) before
        gradient training starts. Default: nothing."""

    # -- incremental interface ------------------------------------------------
    def initial_state(self, batch_size: int) -> State:
        """State before position 0. Default: the prefix of values drawn so far (B, D), zeros."""
        return (torch.zeros(batch_size, self.num_positions, dtype=self.value_dtype, device=self.order.device),)

    def step(self, value: torch.Tensor, position, state: State):
        """The family's parameters (B, P) of the conditional at ``position`` d (``pack`` form: logits (B, K)
        for a categorical model), and the new state.

        ``value`` (B,) is x at generation position d-1 (ignored, pass zeros, at d = 0); ``position`` is an
        int or a 0-dim int64 tensor. The default recomputes the whole prefix (O(D) per step); models
        override it with a cached step.
        """
        return self.recompute_step(value, position, state)

    def recompute_step(self, value: torch.Tensor, position, state: State):
        """The naive step: write ``value`` into the prefix and re-run ``conditional_params``.

        Written without ``int(position)`` or branches on it, so it exports with a 0-dim tensor
        ``position`` (a one-hot mask writes the value; at d = 0 it matches nothing).
        """
        (prefix,) = state
        position = torch.as_tensor(position, dtype=torch.int64, device=prefix.device)
        previous = torch.arange(prefix.shape[1], device=prefix.device) == position - 1
        prefix = torch.where(previous, value.to(prefix.dtype).unsqueeze(-1), prefix)
        params = self.family.unpack(self.conditional_params(self.from_sequence(prefix)))
        return self.family.pack(tuple(at_position(t.transpose(0, 1), position) for t in params)), (prefix,)

    # -- sampling -----------------------------------------------------------
    def noise_shape(self, n: int) -> tuple[int, ...]:
        """The uniform noise ``n`` samples take: (n, D), or (n, D, w) for a family that draws with w > 1."""
        return self.family.noise_shape(n, self.num_positions)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               naive: bool = False) -> torch.Tensor:
        """Exact ancestral samples (n, C, H, W): int64 for a discrete family, the model's float dtype for real values.

        ``noise`` of ``noise_shape(n)``, uniform in [0, 1), fixes the draw; otherwise it is drawn from
        ``generator`` (float64). ``naive=True`` re-runs the full conditional network for every position
        (for benchmarks and checks).
        """
        device, family = self.order.device, self.family
        if noise is None:
            noise = torch.rand(self.noise_shape(n), generator=generator, dtype=torch.float64)
        noise = noise.to(device)
        if naive:
            state, step = DensityModel.initial_state(self, n), self.recompute_step
        else:
            state, step = self.initial_state(n), self.step
        values = torch.zeros(n, self.num_positions, dtype=self.value_dtype, device=device)
        value = torch.zeros(n, dtype=self.value_dtype, device=device)
        for d in range(self.num_positions):
            params, state = step(value, d, state)
            value = family.draw(family.unpack(params), family.noise_column(noise, d)).to(self.value_dtype)
            values[:, d] = value
        return self.from_sequence(values)

    # -- closed-form fitting --------------------------------------------------
    def fit_closed_form(self, x: torch.Tensor) -> dict[str, float]:
        """Maximum-likelihood fit (counting, EM) on validated values (N, C, H, W); returns metrics."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fit")


returns.check_methods(DensityModel, DensityModel)


class ContinuousDensityModel(DensityModel):
    """A model of real values with mixture-of-Gaussians conditionals: ``DensityModel`` with
    ``families = (GaussianMixture,)`` (the style before families; still supported). It implements
    ``conditional_params`` returning ``MixtureParams`` of (B, D, M) each."""

    families = (GaussianMixture,)

    def __init__(self, event_shape, num_categories: int = 0, ordering: str = "raster",
                 family: Family | None = None) -> None:
        super().__init__(event_shape, num_categories, ordering, family)
