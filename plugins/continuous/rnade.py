"""RNADE (Uria, Murray & Larochelle, 2013): registered as ``rnade``.

NADE's shared hidden layer with a mixture of M Gaussians per position, all weights indexed
by generation position d (position d models x_{o(d)}, a real value):

    a_d = c + sum_{j<d} x_j W_j                    (H,)  running pre-activation, W (D, H)
    h_d = act(rho_d a_d)                           (H,)   rho_d = 1 unless rescale=True
    [logits, means, log_scales]_d = V_d h_d + b_d  (3, M), V (D, 3, M, H), b (D, 3, M)

p(x_d | x_<d) = sum_m softmax(logits_d)_m N(x_d; means_dm, exp(log_scales_dm)^2). ``rescale=True``
adds the paper's per-position rescaling of the pre-activation, a learned rho (D,) starting at 1 (a_d
sums d terms, so its scale grows with d; with relu, rho_d > 0 only rescales h_d, which V_d could do
too, so it matters most for sigmoid and tanh). Free parameters: DH + H + 3DM(H+1) (+ D with rescale).
Sampling and ``step`` cost O(HM) per value through the running pre-activation.

The network reads and emits standardized values (``standardized.StandardizedReals``: buffers ``loc`` and
``log_scale`` set from the training data, the standardized log-scales floored and capped, the values the
hidden layer reads clamped to 30 standard deviations), so its samples stay finite: what a drawn value can do
to the conditionals after it is bounded (before the bound, 64 of 1,000 samples of an RNADE trained 5 epochs
on image-patches were inf or NaN). Data within the range (all of image-patches) scores as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from densreg.plugins.continuous.standardized import (CONDITION_RANGE, MAX_LOG_SCALE, MIN_LOG_SCALE,  # noqa: F401
                                                     StandardizedReals)
from densreg.registry import ConfigError, DensityModel, mixture_log_density
from densreg.registry.protocol import step_positions
from densreg.registry.families import GaussianMixture

ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
MAX_HIDDEN, MAX_COMPONENTS = 1 << 16, 1 << 10


class RNADE(StandardizedReals, DensityModel):
    """Real-valued NADE with mixture-of-Gaussians conditionals (Uria et al. 2013)."""

    registry_name = "rnade"
    description = "RNADE: NADE's shared hidden layer with a mixture of Gaussians per real value (Uria et al. 2013)"
    families = (GaussianMixture,)

    def __init__(self, event_shape=(1, 1, 63), num_categories: int = 0, ordering: str = "raster",
                 hidden: int = 100, components: int = 10, activation: str = "relu", rescale: bool = False) -> None:
        for key, value, most in (("hidden", hidden, MAX_HIDDEN), ("components", components, MAX_COMPONENTS)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ConfigError(f"{key} must be an integer from 1 to {most}, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not isinstance(rescale, bool):
            raise ConfigError(f"rescale must be true or false, got {rescale!r}")
        super().__init__(event_shape, num_categories, ordering, GaussianMixture(components))
        self.hidden, self.components, self.activation, self.rescale = hidden, components, activation, rescale
        D, H, M = self.num_positions, hidden, components
        self.W = nn.Parameter(torch.randn(D, H) / math.sqrt(max(D, 1)))
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter(torch.randn(D, 3, M, H) * 0.1 / math.sqrt(H))
        bias = torch.zeros(D, 3, M)
        bias[:, 1] = torch.linspace(-1, 1, M) if M > 1 else 0.0  # means spread over [-1, 1]
        bias[:, 2] = math.log(0.5)
        self.b = nn.Parameter(bias)
        if rescale:  # absent otherwise, so checkpoints written before the option load unchanged
            self.rho = nn.Parameter(torch.ones(D))
        self.register_standardization()
        # before[d, j] is True for j < d: the prefix sums of all positions as one matrix product (not saved;
        # bool, so that a conversion to another dtype or a kit drawing random float buffers leaves it alone)
        self.register_buffer("before", torch.ones(D, D, dtype=torch.bool).tril(-1), persistent=False)

    def config(self):
        """The constructor's keys; ``rescale`` only when true, so configs from before the option stay equal."""
        return {**super().config(), "hidden": self.hidden, "components": self.components,
                "activation": self.activation, **({"rescale": True} if self.rescale else {})}

    def free_parameters(self) -> int:
        D, H, M = self.num_positions, self.hidden, self.components
        return D * H + H + 3 * D * M * (H + 1) + (D if self.rescale else 0)

    def act(self, a: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](a)

    def outputs(self, u: torch.Tensor) -> torch.Tensor:
        """Standardized values u (B, D) -> the mixtures of every u_d on the standardized scale, (B, D, 3, M).

        a_d = c + sum_{j<d} u_j W_j for every d at once: (u masked by ``before``, (B, D, D)) @ W, one
        matrix product whose masked terms are exact zeros (so a_d cannot see u_j for j >= d); then one
        product per position with V_d (an einsum, a bmm over d). On one CPU thread this trains faster
        than a cumulative sum over d (a slow strided scan, and its backward flips).
        """
        prefix = torch.where(self.before, self.bounded(u).unsqueeze(1), torch.zeros((), dtype=u.dtype, device=u.device))
        a = torch.matmul(prefix, self.W) + self.c  # (B, D, H)
        if self.rescale:
            a = a * self.rho.unsqueeze(-1)
        return torch.einsum("bdh,dkmh->bdkm", self.act(a), self.V) + self.b

    def conditional_params(self, x):
        """(B, C, H, W) -> MixtureParams of (B, D, M) each, on the data's scale."""
        _, u = self.standardize(x)
        return self._params(self.outputs(u), self.loc, self.log_scale)

    def conditional_log_probs(self, x):
        """log p(x_{o(d)} | x_{o(<d)}) in nats, (B, D): the mixture density of u_d minus log scale_d
        (the change of variables x_d = loc_d + scale_d u_d), fewer (B, D, M) passes than via the data's scale."""
        _, u = self.standardize(x)
        out = self.outputs(u)
        return mixture_log_density(self.standardized_mixture(out), u) - self.log_scale

    def features(self, x):
        """act(c + sum_d u_d W_d): the H hidden units after the whole image (u standardized and bounded as the
        hidden layer reads it, no rho), (B, H)."""
        return self.act(self.bounded(self.standardize(x)[1]) @ self.W + self.c)

    # -- cached O(HM) step ---------------------------------------------------
    def initial_state(self, batch_size):
        """(s,) with s (B, H) = sum of x_j W_j over the positions seen so far (zeros)."""
        return (torch.zeros(batch_size, self.hidden, dtype=self.W.dtype, device=self.W.device),)

    def step(self, value, position, state):
        (s,) = state
        position, previous = step_positions(position, self.W.device)
        w_prev = self.W.index_select(0, previous)  # (1, H)
        loc, log_scale = self.loc.index_select(0, previous), self.log_scale.index_select(0, previous)
        u = self.bounded((value.to(s.dtype) - loc) * torch.exp(-log_scale))  # the previous value, standardized
        s = torch.where(position > 0, s + u.unsqueeze(-1) * w_prev, s)
        a = s + self.c
        h = self.act(a * self.rho.index_select(0, position) if self.rescale else a)  # (B, H)
        V = self.V.index_select(0, position)[0]  # (3, M, H)
        out = torch.einsum("bh,kmh->bkm", h, V) + self.b.index_select(0, position)
        return self._params(out, self.loc.index_select(0, position), self.log_scale.index_select(0, position)), (s,)
