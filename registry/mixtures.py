"""Mixture-of-Gaussians conditionals for real-valued data (RNADE-style chain rule).

A continuous model's conditional p(x_d | x_<d) is a mixture of M Gaussians, given per position
by ``MixtureParams``: ``logits`` (unnormalised log weights), ``means`` and ``log_scales`` (log
standard deviations), each (..., M). Densities are in nats.

Sampling is exact and deterministic given uniform noise, three uniforms in [0, 1) per value
(``NOISE_PER_VALUE``): u0 picks the component by the inverse CDF of the weights (exactly
``categorical_from_uniform``), u1 and u2 give a standard normal by Box-Muller,
z = sqrt(-2 log(1 - u1)) cos(2 pi u2), and the value is mean + exp(log_scale) z. Every step
is elementwise (Log, Sqrt, Cos), so it exports to ONNX and is written in numpy for the
runtime (``densreg.export.format.draw_mixture_numpy``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .protocol import categorical_from_uniform

NOISE_PER_VALUE = 3  # (component, Box-Muller radius, Box-Muller angle)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class MixtureParams(NamedTuple):
    """Mixture-of-Gaussians conditionals: ``logits``, ``means``, ``log_scales``, each (..., M)."""

    logits: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor

    def map(self, fn) -> "MixtureParams":
        """The same function applied to the three tensors (e.g. select a position)."""
        return MixtureParams(*(fn(t) for t in self))


def normal_log_density(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)^2) in nats, broadcast."""
    z = (x - means) * torch.exp(-log_scales)
    return -0.5 * z * z - log_scales - LOG_SQRT_2PI


def mixture_log_density(params: MixtureParams, x: torch.Tensor) -> torch.Tensor:
    """log sum_m w_m N(x; mean_m, scale_m^2) in nats: params (..., M), x (...) -> (...).

    Computed as logsumexp(logits + log N) - logsumexp(logits): the same value as with log_softmax
    weights (within float rounding) and about twice as fast to train through on CPU for small M,
    where log_softmax over a short last dimension is slow.
    """
    joint = params.logits + normal_log_density(x.unsqueeze(-1), params.means, params.log_scales)
    return torch.logsumexp(joint, -1) - torch.logsumexp(params.logits, -1)


def mixture_cdf(params: MixtureParams, x: torch.Tensor) -> torch.Tensor:
    """P(X <= x) under the mixture: params (..., M), x (...) -> (...) in [0, 1]."""
    weights = torch.softmax(params.logits, dim=-1)
    z = (x.unsqueeze(-1) - params.means) * torch.exp(-params.log_scales)
    return (weights * 0.5 * torch.erfc(-z / math.sqrt(2))).sum(-1)


def standard_normal_from_uniforms(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Box-Muller: two uniforms in [0, 1) -> a standard normal, sqrt(-2 log(1 - u1)) cos(2 pi u2)."""
    return torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)


def mixture_from_uniform(params: MixtureParams, noise: torch.Tensor) -> torch.Tensor:
    """Draw from the mixtures: params (B, M), noise (B, 3) uniform in [0, 1) -> values (B,).

    Computed in float64 and returned in the dtype of ``params.means``.
    """
    noise = noise.double()
    component = categorical_from_uniform(params.logits, noise[:, 0]).unsqueeze(-1)
    mean = params.means.double().gather(-1, component).squeeze(-1)
    log_scale = params.log_scales.double().gather(-1, component).squeeze(-1)
    z = standard_normal_from_uniforms(noise[:, 1], noise[:, 2])
    return (mean + torch.exp(log_scale) * z).to(params.means.dtype)
