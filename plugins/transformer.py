"""An autoregressive Transformer over the value sequence (as ImageGPT; Chen et al. 2020): ``transformer``.

The D values in the model's generation ordering are a sequence; the input at position d is the value at
d - 1 (a learned start vector at d = 0), embedded (a table of K vectors for levels; for real values a linear
map of the value, standardized and bounded as ``continuous.standardized`` says) plus a learned position
embedding (D, width). Then ``layers`` pre-norm blocks, each x + attention(LN(x)) and x + MLP(LN(x)) (causal
multi-head self-attention by torch's scaled_dot_product_attention, ``heads`` heads; MLP width -> 4 width ->
width with GELU), a final LayerNorm and a linear head to the family's parameters per position: K logits, or a
mixture of ``components`` Gaussians on the standardized scale (``GaussianMixture``).

``step`` keeps a key/value cache: the state is, per layer, the keys and the values of every position so far,
two (B, heads, D, width / heads) tensors of fixed size (position d writes slot d; attention reads slots <= d),
so sampling costs one token's pass per value instead of re-running the prefix, and the exported step graph
takes and returns the cache like any other state. In eager torch the step writes slot d in place (the state
it returns is the one it was given, updated); traced for export, the write is functional. Cache memory per sampled image: 2 * layers * D * width
floats (binarized MNIST at width 64 and 4 layers: 1.6 MB in float32).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from densreg.plugins.continuous.standardized import StandardizedReals
from densreg.registry import ConfigError, DensityModel
from densreg.registry.families import Categorical, GaussianMixture
from densreg.registry.protocol import at_position, step_positions

LIMITS = {"layers": 64, "heads": 64, "width": 1 << 14, "components": 1 << 10}


class Block(nn.Module):
    """One pre-norm Transformer block over (B, T, width)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, T, width) -> q, k, v, each (B, heads, T, width / heads)."""
        return tuple(t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(self.norm1(x)).chunk(3, -1))

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The residual around attention (``attended`` (B, heads, T, dh)), then the MLP's."""
        x = x + self.proj(attended.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        return self.finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))


class Transformer(StandardizedReals, DensityModel):
    """Causal Transformer over the values in generation order, with a key/value cache for ``step``."""

    registry_name = "transformer"
    description = "Autoregressive Transformer over the value sequence (as ImageGPT), with a key/value cache"
    families = (Categorical, GaussianMixture)

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 layers: int = 4, heads: int = 4, width: int = 64, components: int = 10) -> None:
        for key, value in (("layers", layers), ("heads", heads), ("width", width), ("components", components)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= LIMITS[key]:
                raise ConfigError(f"{key} must be an integer from 1 to {LIMITS[key]}, got {value!r}")
        if width % heads:
            raise ConfigError(f"width ({width}) must be a multiple of heads ({heads})")
        family = Categorical(num_categories) if num_categories else GaussianMixture(components)
        super().__init__(event_shape, num_categories, ordering, family)
        self.layers, self.heads, self.width, self.components = layers, heads, width, components
        D = self.num_positions
        if num_categories:
            self.embed = nn.Embedding(num_categories, width)
        else:
            self.embed = nn.Linear(1, width)
            self.register_standardization()
        self.start = nn.Parameter(torch.randn(width) * 0.02)
        self.position = nn.Parameter(torch.randn(D, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_categories if num_categories else 3 * components)

    def config(self):
        extra = {} if self.num_categories else {"components": self.components}
        return {**super().config(), "layers": self.layers, "heads": self.heads, "width": self.width, **extra}

    def tokens(self, values: torch.Tensor) -> torch.Tensor:
        """Values (...) in generation order -> their embeddings (..., width) (real values standardized by the
        caller's ``loc``/``log_scale`` already: this embeds u)."""
        if self.num_categories:
            return self.embed(values)
        return self.embed(self.bounded(values).unsqueeze(-1).to(self.start.dtype))

    def params(self, h: torch.Tensor, loc=None, log_scale=None):
        """Final hidden states (..., width) -> the family's parameters (logits, or MixtureParams on the data's
        scale by ``loc``, ``log_scale``: every position's (D,) by default, one position's in ``step``)."""
        out = self.head(self.norm(h))
        if self.num_categories:
            return out
        return self._params(out.unflatten(-1, (3, self.components)), self.loc if loc is None else loc,
                            self.log_scale if log_scale is None else log_scale)

    def conditional_params(self, x):
        """(B, C, H, W) -> logits (B, D, K), or MixtureParams of (B, D, M) each."""
        if self.num_categories:
            seq = self.to_sequence(self.validate(x))
        else:
            _, seq = self.standardize(x)
        shifted = self.tokens(seq[:, :-1])
        h = torch.cat([self.start.expand(seq.shape[0], 1, self.width), shifted], 1) + self.position
        for block in self.blocks:
            h = block(h)
        return self.params(h)

    # -- cached step ----------------------------------------------------------
    def initial_state(self, batch_size: int):
        """Per layer, keys and values of every slot: 2 * layers tensors (B, heads, D, width / heads), zeros."""
        shape = (batch_size, self.heads, self.num_positions, self.width // self.heads)
        return tuple(torch.zeros(shape, dtype=self.start.dtype, device=self.start.device)
                     for _ in range(2 * self.layers))

    def step(self, value, position, state):
        position, previous = step_positions(position, self.start.device)
        if self.num_categories:
            token = self.tokens(value.to(torch.int64).clamp(0, self.num_categories - 1))
        else:
            u = (value.to(self.start.dtype) - self.loc.index_select(0, previous)) \
                * torch.exp(-self.log_scale.index_select(0, previous))
            token = self.tokens(u)
        first = position == 0  # (1,): the start vector instead of a value
        h = (torch.where(first, self.start.expand_as(token), token) + at_position(self.position, position)).unsqueeze(1)
        slots = torch.arange(self.num_positions, device=h.device)
        writes = (slots == position).view(1, 1, -1, 1)  # slot d takes this position's key and value
        visible = (slots <= position).view(1, 1, 1, -1)
        new_state = []
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        for i, block in enumerate(self.blocks):
            q, k, v = block.split(h)
            if tracing:  # a functional write for the exported graph (it takes and returns the cache)
                keys = torch.where(writes, k, state[2 * i])
                values = torch.where(writes, v, state[2 * i + 1])
            else:  # eager: write slot d in place, O(1) per step instead of a copy of the whole cache
                keys = state[2 * i].index_copy_(2, position, k)
                values = state[2 * i + 1].index_copy_(2, position, v)
            h = block.finish(h, F.scaled_dot_product_attention(q, keys, values, attn_mask=visible))
            new_state += [keys, values]
        h = h.squeeze(1)
        if self.num_categories:
            return self.params(h), tuple(new_state)
        return self.params(h, at_position(self.loc, position), at_position(self.log_scale, position)), tuple(new_state)
