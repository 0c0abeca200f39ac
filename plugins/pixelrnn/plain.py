"""The plain Pixel RNN: a stacked LSTM over the flattened sequence of values, in any ordering.

Input at position d: an embedding of the previous value x_{o(d-1)} (a start token at
d = 0) plus, optionally, a learned embedding of the position d itself (it tells the
LSTM where in the image, and which channel, it is). Output: a linear map of the top
layer's h to K logits. The cached step carries (h, c) of every layer: O(layers *
hidden^2) per position.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from densreg.registry import ConfigError, DensityModel

from .base import check_sizes


class PlainPixelRNN(DensityModel):
    """LSTM over the pixel sequence in the chosen ordering (stacked layers, K-way softmax)."""

    registry_name = "pixelrnn"
    description = "Plain Pixel RNN: stacked LSTM over the flattened value sequence, any ordering"

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 64, layers: int = 1, position_embedding: bool = True) -> None:
        super().__init__(event_shape, num_categories, ordering)
        if int(hidden) < 1 or int(layers) < 1:
            raise ConfigError(f"hidden and layers must be at least 1, got hidden={hidden}, layers={layers}")
        check_sizes(hidden=hidden, layers=layers)
        self.hidden, self.num_layers = int(hidden), int(layers)
        self.use_position = bool(position_embedding)
        self.value_embedding = nn.Embedding(self.num_categories + 1, self.hidden)  # index K: start token
        self.position_embedding = nn.Embedding(self.num_positions, self.hidden) if self.use_position else None
        self.lstm = nn.LSTM(self.hidden, self.hidden, self.num_layers, batch_first=True)
        self.output = nn.Linear(self.hidden, self.num_categories)

    def config(self):
        return {**super().config(), "hidden": self.hidden, "layers": self.num_layers,
                "position_embedding": self.use_position}

    def inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """Values in generation order (B, D) -> LSTM inputs (B, D, hidden)."""
        start = torch.full_like(seq[:, :1], self.num_categories)
        inp = self.value_embedding(torch.cat([start, seq[:, :-1]], dim=1))
        if self.position_embedding is not None:
            inp = inp + self.position_embedding.weight
        return inp

    def logits_from_inputs(self, inp: torch.Tensor) -> torch.Tensor:
        """LSTM inputs (B, D, hidden) -> logits (B, D, K); slot d holds x_{o(d-1)} (for gradients)."""
        out, _ = self.lstm(inp)
        return self.output(out)

    def conditional_logits(self, x):
        return self.logits_from_inputs(self.inputs(self.to_sequence(self.validate(x))))

    def features(self, x):
        """Every layer's LSTM output h after the last position, (B, C, H, W) -> (B, layers*hidden).

        Feature l*hidden + j is unit j of layer l: the state the cached ``step`` holds after
        position D-1, a summary of every value but the last in generation order.
        """
        with torch.no_grad():
            _, (h, _) = self.lstm(self.inputs(self.to_sequence(self.validate(x))))
        return h.permute(1, 0, 2).flatten(1)

    def initial_state(self, batch_size):
        """(h, c), each (layers, B, hidden), zero."""
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden, device=self.order.device,
                            dtype=self.value_embedding.weight.dtype)
        return zeros, zeros.clone()

    def step(self, value, position, state):
        h, c = state
        pos = torch.as_tensor(position, dtype=torch.int64, device=h.device)
        token = torch.where(pos == 0, self.num_categories, value)
        inp = self.value_embedding(token)
        if self.position_embedding is not None:
            inp = inp + self.position_embedding(pos.reshape(1))
        hs, cs = [], []
        for l in range(self.num_layers):
            gates = (F.linear(inp, getattr(self.lstm, f"weight_ih_l{l}"), getattr(self.lstm, f"bias_ih_l{l}"))
                     + F.linear(h[l], getattr(self.lstm, f"weight_hh_l{l}"), getattr(self.lstm, f"bias_hh_l{l}")))
            i, f, g, o = gates.chunk(4, dim=1)  # torch's LSTM gate order
            c_l = torch.sigmoid(f) * c[l] + torch.sigmoid(i) * torch.tanh(g)
            inp = torch.sigmoid(o) * torch.tanh(c_l)
            hs.append(inp)
            cs.append(c_l)
        return self.output(inp), (torch.stack(hs), torch.stack(cs))
