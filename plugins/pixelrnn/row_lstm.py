"""Row LSTM (van den Oord et al., 2016, section 3.1): an LSTM that runs down the image a row at a time.

For row i, with maps of ``hidden`` channels:

    gates_i = K_is * x_i  +  K_ss * h_{i-1}      (4 * hidden gate maps: input, forget, output, cell)
    c_i = sigmoid(f) . c_{i-1} + sigmoid(i) . tanh(g),    h_i = sigmoid(o) . tanh(c_i)

K_is: 1 x 3 convolution along the row with mask B (the left neighbour, and the pixel
itself in channel groups <= the output's); K_ss: a width-3 1-D convolution over the row
above's hidden state. Both are computed as one GEMM per row over their five unmasked taps. The receptive field
is the triangle above the pixel plus the row to its left (through the input layer).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import SpatialPixelRNN, eager_inference, lstm_cell, put, recur, take
from .masks import MaskedConv2d

KERNEL = 3
ROWS_LAYOUT = (2, 1, 0, 3)  # (B, h, H, W) <-> (H, h, B, W); the permutation is its own inverse


class RowLSTMLayer(nn.Module):
    """(B, hidden, H, W) -> hidden states (B, hidden, H, W); channels grouped by ``groups``."""

    def __init__(self, groups: torch.Tensor) -> None:
        super().__init__()
        hidden = len(groups)
        self.input_to_state = MaskedConv2d(groups, groups.repeat(4), (1, KERNEL), "B")
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, KERNEL, padding=KERNEL // 2, bias=False)

    def row_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's whole gate product as one matrix (4h, 5h) over [left neighbour, the pixel,
        above-left, above, above-right] (the 1x3 mask-B kernel's two unmasked taps, then the
        width-3 state kernel's three), and the bias (4h,)."""
        w_in = self.input_to_state.masked_weight()[:, :, 0]  # (4h, h, 3); the right tap is all zeros
        w_ss = self.state_to_state.weight  # (4h, h, 3)
        return torch.cat([w_in[..., 0], w_in[..., 1], *w_ss.unbind(-1)], dim=1), self.input_to_state.bias

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(H, h, B, W) rows first, channels second -> hidden states (H, h, B, W).

        Each row is one GEMM (4h, 5h) x (5h, B*W) over its input taps and the row above's
        state taps; in this layout every gate is a contiguous (h, B*W) block, so the LSTM's
        elementwise passes run on contiguous memory. The rows run in ``recur`` (one ONNX Scan when
        exported).
        """
        if eager_inference(x.device):
            return self.evaluate_rows(x)
        height, hidden, batch, width = x.shape
        weight, bias = self.row_weights()
        bias = bias[:, None]
        left = F.pad(x, (1, 0))[..., :width]  # each pixel's left neighbour (zeros in column 0)

        def row(carry, inputs):  # one row: (h, c) (h, B*W) of the row above, its inputs (h, B, W) -> (h, c), h
            (h, c), (x_left, x_row) = carry, inputs
            above = h.view(hidden, -1, width)
            padded = F.pad(above, (1, 1))
            taps = torch.cat([x_left, x_row, padded[..., :width], above, padded[..., 2:]]).view(5 * hidden, -1)
            h, c = lstm_cell(torch.addmm(bias, weight, taps), c, dim=0)
            return (h, c), h

        zeros = x.new_zeros(hidden, batch * width)
        rows = recur(row, (zeros, torch.zeros_like(zeros)), (left, x))[1]  # eager: unbind, one stack in backward
        return rows.view(height, hidden, batch, width)

    def evaluate_rows(self, x: torch.Tensor, residual: bool = False) -> torch.Tensor:
        """``forward_rows`` without autograd (eager inference): (H, h, B, W) -> (H, h, B, W);
        ``residual``: x + forward_rows(x) instead, written into ``x`` (returned).

        The same GEMM per row, on one taps buffer (5h + 1, B, W) kept across rows: its zero
        padding columns are written once, the bias is its last row of ones (a column of the
        weight), each row's inputs are copied in, the LSTM runs in place on the gates and writes
        h into the buffer's "above" taps (then shifted into the other two) for the next row.
        """
        height, hidden, batch, width = x.shape
        weight, bias = self.row_weights()
        weight = torch.cat([weight, bias[:, None]], dim=1)  # (4h, 5h + 1)
        taps = x.new_zeros(5 * hidden + 1, batch, width)  # left, pixel, above-left, above, above-right, ones
        taps[-1] = 1
        left, pixel, above_left, above, above_right = taps[:-1].split(hidden)
        out = x if residual else x.new_empty(height, hidden, batch, width)
        gates = x.new_empty(4 * hidden, batch * width)
        c, tanh_c = x.new_zeros(hidden, batch * width), x.new_empty(hidden, batch * width)
        for i in range(height):
            left[..., 1:] = x[i, :, :, :-1]
            pixel.copy_(x[i])
            torch.mm(weight, taps.view(5 * hidden + 1, -1), out=gates)
            in_gate, forget, output = gates[:3 * hidden].sigmoid_().chunk(3)
            c.mul_(forget).addcmul_(in_gate, gates[3 * hidden:].tanh_())
            torch.mul(output, torch.tanh(c, out=tanh_c), out=above.view(hidden, -1))  # this row's h
            out[i].add_(above) if residual else out[i].copy_(above)
            above_left[..., 1:] = above[..., :-1]
            above_right[..., :-1] = above[..., 1:]
        return out

    def add_rows_(self, x: torch.Tensor) -> torch.Tensor:
        """x + forward_rows(x) written into ``x`` (H, h, B, W) (eager inference: no autograd)."""
        return self.evaluate_rows(x, residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, hidden, H, W) -> hidden states (B, hidden, H, W) (``forward_rows`` in the image layout)."""
        return self.forward_rows(x.permute(*ROWS_LAYOUT).contiguous()).permute(*ROWS_LAYOUT)


class RowLSTM(SpatialPixelRNN):
    """Row LSTM PixelRNN: 7x7 mask-A input conv, residual Row LSTM layers, 1x1 mask-B outputs."""

    registry_name = "row-lstm"
    description = "PixelRNN Row LSTM (van den Oord et al. 2016): row-by-row LSTM, triangular context"
    rows_layout = ROWS_LAYOUT

    def make_layer(self, groups):
        return RowLSTMLayer(groups)

    def initial_layer_state(self, batch_size):
        """(above_h (L, B, h, W+2), above_c (L, B, h, W), cur_x (L, B, h, W+1), cur_h (L, B, h, W+2),
        cur_c (L, B, h, W)): the row above's LSTM state (h zero-padded one column each side) and
        the current row's layer inputs (one zero column on the left), h and c so far."""
        width = self.event_shape[2]
        return tuple(self.layer_zeros(batch_size, width + extra) for extra in (2, 0, 1, 2, 0))

    def step_layers(self, x, row, col, new_row, layer_state):
        above_h, above_c, cur_x, cur_h, cur_c = layer_state
        # At a row's first position the row just finished becomes the row above.
        above_h = torch.where(new_row, cur_h, above_h)
        above_c = torch.where(new_row, cur_c, above_c)
        taps = col + torch.arange(KERNEL, device=x.device)
        xs, hs, cs = [], [], []
        for l, layer in enumerate(self.rnn):
            w_in = layer.input_to_state.masked_weight()  # (4h, h, 1, 3); the right tap is masked out
            gates = (F.linear(take(cur_x[l], 2, col), w_in[:, :, 0, 0])
                     + F.linear(x, w_in[:, :, 0, 1], layer.input_to_state.bias)
                     + F.conv1d(above_h[l].index_select(2, taps), layer.state_to_state.weight).squeeze(2))
            h, c = lstm_cell(gates, take(above_c[l], 2, col))
            xs.append(put(cur_x[l], col + 1, x))
            hs.append(put(cur_h[l], col + 1, h))
            cs.append(put(cur_c[l], col, c))
            x = x + h
        return x, (above_h, above_c, torch.stack(xs), torch.stack(hs), torch.stack(cs))
