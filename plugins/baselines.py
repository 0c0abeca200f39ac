"""Baselines with closed-form maximum-likelihood fits: independent Bernoulli and Markov (AR-k).

Both fit by counting with additive (Laplace) smoothing ``alpha`` (1 = add-one) and
sample by table look-ups.
"""

from __future__ import annotations

import math

import torch

from densreg.registry import ConfigError, DensityModel
from densreg.registry.protocol import at_position

MAX_TABLE_ENTRIES = 50_000_000


def table_fits(num_positions: int, num_categories: int, order: int) -> bool:
    """Whether a Markov table of D * K^order * K entries (positions, contexts, levels) is within
    MAX_TABLE_ENTRIES, decided exactly in whole numbers, one order at a time: a hostile order stops
    at the first product over the limit (within 26 steps), K ** order itself is never computed."""
    entries = num_positions * num_categories
    for _ in range(order):
        entries *= num_categories
        if entries > MAX_TABLE_ENTRIES:
            return False
    return True


def _log_normalized(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    smoothed = counts.double() + alpha
    return (smoothed / smoothed.sum(-1, keepdim=True)).log().float()


class Bernoulli(DensityModel):
    """Independent categorical per value (Bernoulli for K=2): p(x_d) only."""

    registry_name = "bernoulli"
    description = "Independent Bernoulli/categorical per value, fit by counting (add-alpha smoothing)"
    closed_form = True

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 alpha: float = 1.0) -> None:
        super().__init__(event_shape, num_categories, ordering)
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        # log p(x_{o(d)} = k), in generation order: (D, K)
        self.register_buffer("log_probs", torch.full((self.num_positions, self.num_categories),
                                                     -math.log(self.num_categories)))

    def config(self):
        return {**super().config(), "alpha": self.alpha}

    def free_parameters(self) -> int:
        return self.num_positions * (self.num_categories - 1)

    def fit_closed_form(self, x):
        seq = self.to_sequence(self.validate(x))
        counts = torch.nn.functional.one_hot(seq, self.num_categories).sum(0)
        self.log_probs.copy_(_log_normalized(counts, self.alpha))
        return {"train_nll_nats": float(-self.log_prob(x).mean())}

    def conditional_logits(self, x):
        x = self.validate(x)
        return self.log_probs.unsqueeze(0).expand(x.shape[0], -1, -1)

    def initial_state(self, batch_size):
        return ()

    def step(self, value, position, state):
        return at_position(self.log_probs, position).unsqueeze(0).expand(value.shape[0], -1), state


class Markov(DensityModel):
    """Markov chain of order k in the ordering: p(x_d | the previous k values), a table per position.

    The context of position d is c_d = sum_{j=1..k} x_{d-j} K^{j-1} (missing values
    count as 0), so c_{d+1} = x_d + K * (c_d mod K^{k-1}) and a step is a look-up.
    """

    registry_name = "markov"
    description = "Markov chain of order k along the ordering (AR-k table), fit by counting"
    closed_form = True

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 order: int = 1, alpha: float = 1.0) -> None:
        super().__init__(event_shape, num_categories, ordering)
        if order < 1:
            raise ConfigError(f"order must be >= 1 (order 0 is the bernoulli model), got {order}")
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        if not table_fits(self.num_positions, self.num_categories, order):
            raise ConfigError(f"order {order} needs a table of {self.num_positions}x{self.num_categories}^{order}x"
                              f"{self.num_categories} entries, over the limit of {MAX_TABLE_ENTRIES}")
        contexts = self.num_categories ** order
        self.markov_order = int(order)
        self.alpha = float(alpha)
        self.num_contexts = contexts
        self.register_buffer("log_probs", torch.full((self.num_positions, contexts, self.num_categories),
                                                     -math.log(self.num_categories)))

    def config(self):
        return {**super().config(), "order": self.markov_order, "alpha": self.alpha}

    def free_parameters(self) -> int:
        k, K = self.markov_order, self.num_categories
        return sum(K ** min(d, k) * (K - 1) for d in range(self.num_positions))

    def contexts(self, seq: torch.Tensor) -> torch.Tensor:
        """Values in generation order (B, D) -> context index of every position (B, D)."""
        ctx = torch.zeros_like(seq)
        for j in range(1, min(self.markov_order, seq.shape[1]) + 1):  # shifted copies, no in-place slices
            ctx = ctx + torch.nn.functional.pad(seq[:, :-j], (j, 0)) * self.num_categories ** (j - 1)
        return ctx

    def fit_closed_form(self, x):
        seq = self.to_sequence(self.validate(x))
        flat = (torch.arange(self.num_positions, device=seq.device) * self.num_contexts + self.contexts(seq)) * self.num_categories + seq
        counts = torch.bincount(flat.reshape(-1), minlength=self.log_probs.numel()).reshape(self.log_probs.shape)
        self.log_probs.copy_(_log_normalized(counts, self.alpha))
        return {"train_nll_nats": float(-self.log_prob(x).mean())}

    def conditional_logits(self, x):
        seq = self.to_sequence(self.validate(x))
        positions = torch.arange(self.num_positions, device=seq.device)
        table = self.log_probs.reshape(-1, self.num_categories)  # (D * contexts, K): one gather
        return table[positions * self.num_contexts + self.contexts(seq)]

    def initial_state(self, batch_size):
        return (torch.zeros(batch_size, dtype=torch.int64, device=self.log_probs.device),)

    def step(self, value, position, state):
        (ctx,) = state
        ctx = value + self.num_categories * (ctx % (self.num_contexts // self.num_categories))
        return at_position(self.log_probs, position)[ctx], (ctx,)
