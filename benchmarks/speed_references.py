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
- ``RemaskedMADE``: MADE as pytorch-generative publishes it (models/autoregressive/made.py at commit
  0353950): every forward draws the mask set again from a numpy RandomState (a permutation of the inputs,
  then hidden degrees in [least degree below, D - 1)), writes it into each layer's mask buffer and
  multiplies the weights by it in place, then ReLU layers and a sigmoid output (its reproduce() sizes:
  one hidden layer of 8000). Sampling re-runs the whole network once per value.
- ``ConvImageGPT``: ImageGPT as pytorch-generative publishes it (models/autoregressive/image_gpt.py at
  commit 6eb070b): a learned (1, C, H, W) position map added to the image, a 3x3 causal convolution that
  masks the centre into ``channels`` maps, blocks of [LayerNorm over channels, causal multi-head attention
  over the H*W pixels with the current one visible (an explicit masked softmax), 1x1-convolution MLP of 4x
  width with GELU], each block also added to its input (their skip), a final LayerNorm and a 1x1 output
  convolution (its reproduce() sizes: 8 blocks, 2 heads, 64 channels). Sampling re-runs the whole network
  once per pixel.
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


class RemaskedMADE(nn.Module):
    """pytorch-generative-style MADE for D binary values: masks drawn again at every forward."""

    def __init__(self, num_positions: int, hidden: list[int], masks: int = 1) -> None:
        super().__init__()
        self.dims = [num_positions, *hidden, num_positions]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.dims, self.dims[1:]))
        for layer in self.layers:
            layer.register_buffer("mask", torch.ones_like(layer.weight))
        self.masks, self.draws = masks, 0

    def draw_masks(self) -> list[torch.Tensor]:
        import numpy as np

        rng = np.random.RandomState(seed=self.draws % self.masks)
        self.draws += 1
        d = self.dims[0]
        degrees = [rng.permutation(d)]
        for i, width in enumerate(self.dims[1:-1]):
            degrees.append(rng.randint(0 if i == 0 else degrees[-1].min(), d - 1, size=width))
        degrees.append(degrees[0].copy())
        masks = [degrees[i - 1][None, :] <= degrees[i][:, None] for i in range(1, len(degrees) - 1)]
        masks.append(degrees[-2][None, :] < degrees[-1][:, None])
        return [torch.from_numpy(m.astype(np.uint8)) for m in masks]

    def forward_masked(self, x: torch.Tensor, masks) -> torch.Tensor:
        h = x
        for i, (layer, mask) in enumerate(zip(self.layers, masks)):
            layer.mask.copy_(mask)
            layer.weight.data *= layer.mask
            h = layer(h)
            h = torch.relu(h) if i < len(self.layers) - 1 else h  # logits; their sigmoid is inside the loss
        return h

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).float()
        logits = self.forward_masked(flat, self.draw_masks())
        return -F.binary_cross_entropy_with_logits(logits, flat, reduction="none").sum(-1)

    def sample_steps(self, n: int, shape, positions) -> torch.Tensor:
        """Re-run the network for each of ``positions`` (flat indices), drawing that value."""
        x = torch.zeros(n, math.prod(shape), device=self.layers[0].weight.device)
        masks = self.draw_masks()
        for d in positions:
            x[:, d] = torch.bernoulli(torch.sigmoid(self.forward_masked(x, masks)[:, d]))
        return x.reshape(n, *shape)


class ConvImageGPTBlock(nn.Module):
    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.qkv, self.out = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1), nn.GELU(), nn.Conv2d(4 * channels, channels, 1))

    @staticmethod
    def channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3)
                   for t in self.qkv(self.channel_norm(self.norm1, x)).chunk(3, 1))
        scores = q @ k.transpose(2, 3) / math.sqrt(c // self.heads)
        visible = torch.ones(h * w, h * w, dtype=torch.bool, device=x.device).tril()
        attended = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v
        x = x + self.out(attended.transpose(2, 3).reshape(b, c, h, w))
        return x + self.mlp(self.channel_norm(self.norm2, x))


class ConvImageGPT(nn.Module):
    """pytorch-generative-style ImageGPT over binary images (B, 1, H, W)."""

    def __init__(self, size: int = 28, blocks: int = 8, heads: int = 2, channels: int = 64) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, 1, size, size))
        self.input_weight = nn.Parameter(masked_conv_weight(channels, 1, 3, 3, True))
        self.blocks = nn.ModuleList(ConvImageGPTBlock(channels, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(channels)
        self.output = nn.Conv2d(channels, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x.float() + self.position, self.input_weight, padding=1)
        for block in self.blocks:
            h = h + block(h)
        return self.output(ConvImageGPTBlock.channel_norm(self.norm, h))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return -F.binary_cross_entropy_with_logits(self.logits(x), x, reduction="none").flatten(1).sum(-1)

    def sample_steps(self, n: int, shape, positions) -> torch.Tensor:
        x = torch.zeros(n, *shape, device=self.position.device)
        for d in positions:
            i, j = divmod(d, shape[2])
            x[:, 0, i, j] = torch.bernoulli(torch.sigmoid(self.logits(x)[:, 0, i, j]))
        return x
