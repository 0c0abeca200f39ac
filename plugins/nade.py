"""NADE (Larochelle & Murray, 2011): registered as ``nade``.

All weights are indexed by generation position d (position d models x_{o(d)}):

    a_d = c + sum_{j<d} W_j[x_j]          (H,)   running pre-activation
    h_d = act(a_d)                        (H,)
    binary:  logit p(x_d = 1) = V_d . h_d + b_d          V (D, H), b (D,)
    K > 2:   logits of x_d    = V_d h_d + b_d            V (D, K, H), b (D, K)

The input weights W have shape (D, K-1, H): value k > 0 at position j adds
W[j, k-1] to every later pre-activation, value 0 adds nothing (for binary data this
is the usual W x with W of D*H entries). Free parameters: 2DH + D + H for K = 2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from densreg.registry import ConfigError, DensityModel, hookimpl

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


def block_size(d: int) -> int:
    """The divisor of d closest to sqrt(d) (block length of the blocked running sum)."""
    return min((t for t in range(1, d + 1) if d % t == 0), key=lambda t: abs(t - math.sqrt(d)))


class NADE(DensityModel):
    """Neural autoregressive distribution estimator with one hidden layer of ``hidden`` units."""

    registry_name = "nade"
    description = "NADE (Larochelle & Murray 2011): one hidden layer with weights shared across positions"

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 500, activation: str = "sigmoid") -> None:
        super().__init__(event_shape, num_categories, ordering)
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"hidden must be a positive integer, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.hidden = hidden
        self.activation = activation
        D, K, H = self.num_positions, self.num_categories, hidden
        out = () if K == 2 else (K,)
        self.W = nn.Parameter(torch.randn(D, K - 1, H) / math.sqrt(D))
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter(torch.randn(D, *out, H) / math.sqrt(H))
        self.b = nn.Parameter(torch.zeros(D, *out))
        self.block = block_size(D)
        mask = torch.ones(self.block, self.block, dtype=torch.bool).tril(-1).repeat_interleave(K - 1, dim=1)
        self.register_buffer("block_mask", mask, persistent=False)  # bool (T, T*(K-1)): s < t

    def config(self):
        return {**super().config(), "hidden": self.hidden, "activation": self.activation}

    def free_parameters(self) -> int:
        """2DH + D + H for binary data; for K > 2 the K-way softmax is invariant to a
        shift shared by the K rows of (V_d, b_d), so D(H+1) entries are not free."""
        D, K, H = self.num_positions, self.num_categories, self.hidden
        if K == 2:
            return 2 * D * H + D + H
        return D * (K - 1) * H + H + D * (K - 1) * (H + 1)

    def act(self, a: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](a)

    def input_codes(self, seq: torch.Tensor) -> torch.Tensor:
        """Values in generation order (B, D) int64 -> one-hot of levels 1..K-1, float (B, D, K-1)."""
        if self.num_categories == 2:
            return seq.unsqueeze(-1).to(self.W.dtype)
        return nn.functional.one_hot(seq, self.num_categories)[..., 1:].to(self.W.dtype)

    def preactivations(self, seq: torch.Tensor) -> torch.Tensor:
        """a_d = c + sum_{j<d} W_j[x_j] for every position, (B, D) -> (D, B, H).

        Blocked running sum: positions are cut into blocks of T (T divides D, close to
        sqrt(D)); inside a block a strictly-lower-triangular mask and one batched matmul
        give the partial sums, across blocks an exclusive cumsum of block totals. Same
        O(B D H) result as a cumsum over d, with fewer passes over the (D, B, H) tensor.
        """
        B, D, H = seq.shape[0], self.num_positions, self.hidden
        T, J = self.block, self.num_categories - 1
        nb = D // T
        codes = self.input_codes(seq).reshape(B, nb, T * J).transpose(0, 1)  # (nb, B, T*J)
        weights = self.W.reshape(nb, T * J, H)
        masked = (self.block_mask.to(codes.dtype)[None, :, None, :] * codes[:, None]).reshape(nb, T * B, T * J)
        inside = torch.bmm(masked, weights).reshape(nb, T, B, H)
        totals = torch.bmm(codes, weights)  # (nb, B, H)
        # exclusive running sum (not cumsum - totals, whose rounding would let a block see itself)
        before = torch.cat([torch.zeros_like(totals[:1]), torch.cumsum(totals[:-1], 0)]) + self.c
        return (inside + before[:, None]).reshape(D, B, H)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """h_d for every position under teacher forcing, (B, C, H, W) -> (D, B, H)."""
        return self.act(self.preactivations(self.to_sequence(self.validate(x))))

    def conditional_logits(self, x):
        h = self.hidden_states(x)  # (D, B, H)
        if self.num_categories == 2:
            logit = torch.bmm(h, self.V.unsqueeze(-1)).squeeze(-1) + self.b[:, None]  # (D, B)
            return torch.stack([torch.zeros_like(logit), logit], dim=-1).transpose(0, 1)
        return (torch.bmm(h, self.V.transpose(1, 2)) + self.b[:, None]).transpose(0, 1)

    def features(self, x):
        """act(c + sum_d W_d[x_d]): the H hidden units after seeing the whole image, (B, H) float.

        This is the hidden layer NADE would compute for a (D+1)-th position: an encoder
        of the full image that shares every input weight with the density model.
        """
        seq = self.to_sequence(self.validate(x))
        codes = self.input_codes(seq).reshape(seq.shape[0], -1)
        return self.act(codes @ self.W.reshape(-1, self.hidden) + self.c)

    def output_logits(self, h: torch.Tensor, V: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of one position from its hidden units h (B, H) and its V, b."""
        if self.num_categories == 2:
            logit = h @ V + b
            return torch.stack([torch.zeros_like(logit), logit], dim=-1)
        return h @ V.t() + b

    # -- cached O(H) step ---------------------------------------------------
    def initial_state(self, batch_size):
        """(s,) with s (B, H) = sum of W_j[x_j] over the positions seen so far (zeros)."""
        return (torch.zeros(batch_size, self.hidden, dtype=self.W.dtype, device=self.W.device),)

    def step(self, value, position, state):
        (s,) = state
        position = torch.as_tensor(position, dtype=torch.int64, device=self.W.device).reshape(1)
        previous = torch.clamp(position - 1, min=0)
        w_prev = self.W.index_select(0, previous)[0]  # (K-1, H)
        onehot = nn.functional.one_hot(value, self.num_categories)[:, 1:].to(s.dtype)  # (B, K-1)
        s = torch.where(position > 0, s + onehot @ w_prev, s)
        h = self.act(s + self.c)
        V = self.V.index_select(0, position)[0]
        b = self.b.index_select(0, position)[0]
        return self.output_logits(h, V, b), (s,)


@hookimpl
def register_models(register):
    register(NADE)
