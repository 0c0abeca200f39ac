"""The protocol for real-valued data: chain-rule models with mixture-of-Gaussians conditionals.

A ``ContinuousDensityModel`` factorises a density over the D = C*H*W real values of an
image by the chain rule in its ordering (Uria, Murray & Larochelle 2013, RNADE):

    log p(x) = sum_d log sum_m w_dm N(x_o(d); mu_dm, sigma_dm^2)     (nats; a log density)

with weights, means and log-scales that depend on x_o(<d) only. Subclasses implement
``conditional_params`` (one teacher-forced pass, ``MixtureParams`` of (B, D, M) each in
generation order) and, where cheaper than recomputing the prefix, ``initial_state`` / ``step``
(value: x at position d-1, a float (B,); returns ``MixtureParams`` of (B, M) each). log_prob,
per-value scores and sampling are derived here. The model's ``num_categories`` is 0.

Sampling noise: (n, D, 3) uniforms in [0, 1), three per value (see ``registry.mixtures``).
"""

from __future__ import annotations

from typing import Any

import torch

from .mixtures import NOISE_PER_VALUE, MixtureParams, mixture_from_uniform, mixture_log_density
from .protocol import DensityModel, State, at_position, validate_real


class ContinuousDensityModel(DensityModel):
    """Base class of real-valued models: ``continuous = True``, ``num_categories`` 0.

    Values are float tensors in the model's floating dtype (float32 unless the model was
    converted, e.g. ``model.double()``).
    """

    continuous = True

    def __init__(self, event_shape, num_categories: int = 0, ordering: str = "raster") -> None:
        super().__init__(event_shape, num_categories, ordering)

    @property
    def value_dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters (or float buffers); float32 if it has none."""
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def validate(self, x: Any) -> torch.Tensor:
        """``validate_real`` for this model's shape, in its dtype and on its device."""
        return validate_real(x, self.event_shape).to(self.order.device, self.value_dtype)

    # -- density ------------------------------------------------------------
    def conditional_params(self, x: torch.Tensor) -> MixtureParams:
        """Mixture parameters of every conditional: (B, C, H, W) -> MixtureParams of (B, D, M) each.

        Position d (generation order) must depend on x_{o(<d)} only.
        """
        raise NotImplementedError

    def conditional_logits(self, x):
        raise NotImplementedError(f"{type(self).__name__} models real values: its conditionals are mixtures of "
                                  "Gaussians (conditional_params), not logits over K levels")

    def conditional_log_probs(self, x: Any) -> torch.Tensor:
        """log p(x_{o(d)} | x_{o(<d)}) in nats (a log density), (B, D) in generation order."""
        x = self.validate(x)
        return mixture_log_density(self.conditional_params(x), self.to_sequence(x))

    # -- incremental interface ------------------------------------------------
    def initial_state(self, batch_size: int) -> State:
        """State before position 0. Default: the prefix of values drawn so far (B, D), zeros."""
        return (torch.zeros(batch_size, self.num_positions, dtype=self.value_dtype, device=self.order.device),)

    def step(self, value: torch.Tensor, position, state: State) -> tuple[MixtureParams, State]:
        """MixtureParams of (B, M) each for the conditional at ``position`` d, and the new state.

        ``value`` (B,) float is x at generation position d-1 (ignored at d = 0); ``position``
        an int or a 0-dim int64 tensor. The default recomputes the whole prefix.
        """
        return self.recompute_step(value, position, state)

    def recompute_step(self, value: torch.Tensor, position, state: State) -> tuple[MixtureParams, State]:
        """The naive step: write ``value`` into the prefix and re-run ``conditional_params``."""
        (prefix,) = state
        position = torch.as_tensor(position, dtype=torch.int64, device=prefix.device)
        previous = torch.arange(prefix.shape[1], device=prefix.device) == position - 1
        prefix = torch.where(previous, value.to(prefix.dtype).unsqueeze(-1), prefix)
        params = self.conditional_params(self.from_sequence(prefix))
        return params.map(lambda t: at_position(t.transpose(0, 1), position)), (prefix,)

    # -- sampling -----------------------------------------------------------
    def noise_shape(self, n: int) -> tuple[int, int, int]:
        """(n, D, 3): three uniforms per value (component, Box-Muller radius and angle)."""
        return (n, self.num_positions, NOISE_PER_VALUE)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               naive: bool = False) -> torch.Tensor:
        """Exact ancestral samples, float (n, C, H, W) in the model's dtype.

        ``noise`` (n, D, 3) uniform in [0, 1) fixes the draw; otherwise it is drawn from
        ``generator`` (float64). ``naive=True`` re-runs ``conditional_params`` at every position.
        """
        device = self.order.device
        if noise is None:
            noise = torch.rand(self.noise_shape(n), generator=generator, dtype=torch.float64)
        noise = noise.to(device)
        if naive:
            state, step = ContinuousDensityModel.initial_state(self, n), self.recompute_step
        else:
            state, step = self.initial_state(n), self.step
        values = torch.zeros(n, self.num_positions, dtype=self.value_dtype, device=device)
        value = torch.zeros(n, dtype=self.value_dtype, device=device)
        for d in range(self.num_positions):
            params, state = step(value, d, state)
            value = mixture_from_uniform(params, noise[:, d]).to(self.value_dtype)
            values[:, d] = value
        return self.from_sequence(values)

    def fit_closed_form(self, x: torch.Tensor) -> dict[str, float]:
        """Maximum-likelihood fit (e.g. EM) on real values (N, C, H, W); returns metrics."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fit")
