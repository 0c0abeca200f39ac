"""Real values on a standardized scale, for networks that read and emit them (RNADE, MADE-MoG).

The network works on u_j = (x_j - loc_j) / scale_j: buffers ``loc`` and ``log_scale`` (D,) in generation
order, set from the training data by ``init_from_data`` (which ``fit`` calls before the first epoch; 0 and
0 until then), so its weights see values of order one whatever the data's units. A mixture it outputs
for u_d maps back exactly: means loc_d + scale_d mu, log-scales log sigma + log scale_d. The standardized
log-scales are floored at MIN_LOG_SCALE (-10: a component narrower than e^-10 of its value's spread would
only overflow float32 on the way) and capped at MAX_LOG_SCALE (10); the standardized values the network
reads are clamped to +-CONDITION_RANGE (30 standard deviations of the training data at that position).

Samples stay finite: with bounded inputs the conditionals are bounded, so every draw is finite (without
the bounds, a rare wide component drawn at one position widened the next conditionals until values
overflowed: 64 of 1,000 samples of an RNADE trained 5 epochs on image-patches). The density stays exact:
each conditional remains a function of the values before it (the clamp only changes which function, and
only beyond the range), and the clamp is part of the exported graphs, so the runtime draws the same samples.
"""

from __future__ import annotations

import torch

from densreg.registry import MixtureParams

MIN_LOG_SCALE = -10.0  # floor of the standardized log-scales
MAX_LOG_SCALE = 10.0  # their cap (samples stay finite)
CONDITION_RANGE = 30.0  # |standardized value| a network reads at most


class StandardizedReals:
    """Mixin for a ``DensityModel`` of real values: call ``register_standardization()`` in ``__init__``
    (after ``DensityModel.__init__``); the rest reads ``loc`` and ``log_scale``."""

    def register_standardization(self) -> None:
        """Buffers ``loc`` and ``log_scale`` (D,), zeros (the identity) until ``init_from_data``."""
        self.register_buffer("loc", torch.zeros(self.num_positions))
        self.register_buffer("log_scale", torch.zeros(self.num_positions))

    @torch.no_grad()
    def init_from_data(self, x) -> None:
        """Standardize by the data: ``loc``, ``log_scale`` = each position's mean and log std over ``x``
        (N, C, H, W)."""
        seq = self.to_sequence(self.validate(x)).double()
        self.loc.copy_(seq.mean(0).to(self.loc.dtype))
        self.log_scale.copy_(torch.log(seq.std(0).clamp(min=1e-6)).to(self.loc.dtype) if len(seq) > 1
                             else torch.zeros_like(self.log_scale))

    @staticmethod
    def standardized_mixture(out: torch.Tensor) -> MixtureParams:
        """(..., 3, M) outputs -> the mixture of u_d, MixtureParams of (..., M), log-scales within
        [MIN_LOG_SCALE, MAX_LOG_SCALE] (the floor also keeps a collapsing component from overflowing
        exp(-log_scale) into inf * 0 = NaN gradients)."""
        log_scales = torch.clamp(out[..., 2, :], min=MIN_LOG_SCALE, max=MAX_LOG_SCALE)
        return MixtureParams(out[..., 0, :], out[..., 1, :], log_scales)

    @staticmethod
    def bounded(u: torch.Tensor) -> torch.Tensor:
        """Standardized values as a network reads them: clamped to +-CONDITION_RANGE."""
        return torch.clamp(u, min=-CONDITION_RANGE, max=CONDITION_RANGE)

    def _params(self, out: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> MixtureParams:
        """(..., 3, M) outputs on the standardized scale, and loc, log_scale (...) -> MixtureParams of (..., M)
        on the data's scale."""
        loc, log_scale = loc.unsqueeze(-1), log_scale.unsqueeze(-1)
        mixture = self.standardized_mixture(out)
        return mixture._replace(means=loc + torch.exp(log_scale) * mixture.means,
                                log_scales=mixture.log_scales + log_scale)

    def standardize(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) -> (values (B, D), u (B, D)) in generation order, u = (x - loc) / scale."""
        seq = self.to_sequence(self.validate(x))
        return seq, (seq - self.loc) * torch.exp(-self.log_scale)
