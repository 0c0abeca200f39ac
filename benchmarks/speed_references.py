"""Straightforward reference implementations that ``benchmarks/speed.py`` compares densreg against.

Each is what a user would write (or copy from a public repository) instead of using
densreg, for binary images (B, 1, H, W), with the same sizes as the densreg model it
stands beside. Random weights: speed does not depend on them.

- ``RunningSumNADE``: NADE as in pytorch-generative: a Python loop over the D positions
  keeping the running pre-activation a (B, H): h = sigmoid(a), logit_d = h . V_d + b_d,
  then a += x_d W_d. Sampling runs the same loop drawing x_d from Bernoulli(sigmoid(logit)).
- ``PerRowConvRowLSTM``: Row LSTM as in public PyTorch PixelRNN code: a masked 7x7 input
  convolution, then per layer and per row a masked 1x3 Conv1d on the row's input and a
  width-3 Conv1d on the previous row's state (both recomputed per row), residual, ReLU and
  1x1 output convolutions. Sampling re-runs the whole network once per pixel.
- ``SkewDiagonalBiLSTM``: Diagonal BiLSTM with skew/unskew done by padding each row and
  stacking, a 1x1 input-to-state convolution, a loop over the skewed columns with a
  kernel-2 Conv1d over the previous column's state, the right-to-left direction on the
  flipped map shifted down one row. Sampling re-runs the whole network once per pixel.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class RunningSumNADE(nn.Module):
    """pytorch-generative-style NADE over D binary values with ``hidden`` units."""

    def __init__(self, num_positions: int, hidden: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(hidden, num_positions) / math.sqrt(num_positions))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(num_positions, hidden) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(num_positions))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) int -> log p(x) in nats (B,)."""
        x = x.reshape(x.shape[0], -1).float()
        a = self.c.expand(x.shape[0], -1)
        logits = []
        for d in range(x.shape[1]):
            h = torch.sigmoid(a)
            logits.append(h @ self.V[d] + self.b[d])
            a = a + x[:, d:d + 1] * self.W[:, d]
        logits = torch.stack(logits, dim=1)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)

    @torch.no_grad()
    def sample(self, n: int, shape) -> torch.Tensor:
        a = self.c.expand(n, -1)
        values = []
        for d in range(self.V.shape[0]):
            p = torch.sigmoid(torch.sigmoid(a) @ self.V[d] + self.b[d])
            x = torch.bernoulli(p)
            values.append(x)
            a = a + x[:, None] * self.W[:, d]
        return torch.stack(values, 1).reshape(n, *shape)


def masked_conv_weight(out_channels: int, in_channels: int, kh: int, kw: int, mask_a: bool) -> torch.Tensor:
    """A random (out, in, kh, kw) weight with the causal mask applied (binary images: no channel groups)."""
    weight = torch.randn(out_channels, in_channels, kh, kw) / math.sqrt(in_channels * kh * kw)
    weight[:, :, kh // 2 + 1:] = 0
    weight[:, :, kh // 2, kw // 2 + (0 if mask_a else 1):] = 0
    return weight


class PixelRNNFrame(nn.Module):
    """Input conv (7x7 mask A), residual recurrent layers, ReLU + 1x1 convs to one logit per pixel."""

    def __init__(self, hidden: int, output_hidden: int) -> None:
        super().__init__()
        self.input_weight = nn.Parameter(masked_conv_weight(hidden, 1, 7, 7, True))
        self.out1 = nn.Conv2d(hidden, output_hidden, 1)
        self.out2 = nn.Conv2d(output_hidden, 1, 1)

    def layers_forward(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> one logit per pixel (B, 1, H, W)."""
        h = F.conv2d(x.float() * 2 - 1, self.input_weight, padding=3)
        return self.out2(F.relu(self.out1(F.relu(self.layers_forward(h)))))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        return -F.binary_cross_entropy_with_logits(logits, x.float(), reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample_steps(self, n: int, shape, positions) -> torch.Tensor:
        """Re-run the network for each of ``positions`` (flat pixel indices), drawing that pixel."""
        x = torch.zeros(n, *shape, device=self.input_weight.device)
        for d in positions:
            i, j = divmod(d, shape[2])
            p = torch.sigmoid(self.logits(x)[:, 0, i, j])
            x[:, 0, i, j] = torch.bernoulli(p)
        return x


class PerRowConvRowLSTM(PixelRNNFrame):
    def __init__(self, hidden: int = 16, layers: int = 5, output_hidden: int = 32) -> None:
        super().__init__(hidden, output_hidden)
        self.is_weights = nn.ParameterList(
            nn.Parameter(masked_conv_weight(4 * hidden, hidden, 1, 3, False)[:, :, 0]) for _ in range(layers))
        self.ss_convs = nn.ModuleList(nn.Conv1d(hidden, 4 * hidden, 3, padding=1) for _ in range(layers))

    def layers_forward(self, x):
        for w_is, ss in zip(self.is_weights, self.ss_convs):
            batch, hidden, height, width = x.shape
            h = c = x.new_zeros(batch, hidden, width)
            rows = []
            for i in range(height):
                gates = F.conv1d(x[:, :, i], w_is, padding=1) + ss(h)
                gi, gf, go, gg = gates.chunk(4, 1)
                c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
                h = torch.sigmoid(go) * torch.tanh(c)
                rows.append(h)
            x = x + torch.stack(rows, 2)
        return x


def skew(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, H+W-1), row i shifted right by i (pad and stack)."""
    height, width = x.shape[2:]
    return torch.stack([F.pad(x[:, :, i], (i, height - 1 - i)) for i in range(height)], 2)


def unskew(y: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([y[:, :, i, i:i + width] for i in range(y.shape[2])], 2)


class SkewDiagonalBiLSTM(PixelRNNFrame):
    def __init__(self, hidden: int = 16, layers: int = 2, output_hidden: int = 32) -> None:
        super().__init__(hidden, output_hidden)
        self.is_convs = nn.ModuleList(nn.Conv2d(hidden, 8 * hidden, 1) for _ in range(layers))
        self.ss_convs = nn.ModuleList(nn.ModuleList(nn.Conv1d(hidden, 4 * hidden, 2, padding=1) for _ in range(2))
                                      for _ in range(layers))

    def direction(self, gates_in: torch.Tensor, ss: nn.Conv1d, width: int) -> torch.Tensor:
        """gates (B, 4h, H, W) -> h (B, h, H, W) of one direction, over skewed columns."""
        skewed = skew(gates_in)
        batch, _, height, columns = skewed.shape
        h = c = gates_in.new_zeros(batch, gates_in.shape[1] // 4, height)
        out = []
        for s in range(columns):
            gates = skewed[..., s] + ss(h)[..., :height]  # kernel 2 over (row above, same row)
            gi, gf, go, gg = gates.chunk(4, 1)
            c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
            h = torch.sigmoid(go) * torch.tanh(c)
            out.append(h)
        return unskew(torch.stack(out, -1), width)

    def layers_forward(self, x):
        width = x.shape[3]
        for conv, (ss_left, ss_right) in zip(self.is_convs, self.ss_convs):
            left, right = conv(x).chunk(2, 1)  # (masks of binary single-group data: 1x1 is unmasked)
            h_left = self.direction(left, ss_left, width)
            h_right = self.direction(right.flip(-1), ss_right, width).flip(-1)
            x = x + h_left + F.pad(h_right, (0, 0, 1, 0))[:, :, :-1]
        return x
