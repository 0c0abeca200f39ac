"""Row LSTM (van den Oord et al., 2016, section 3.1): an LSTM that runs down the image a row at a time.

For row i, with maps of ``hidden`` channels:

    gates_i = K_is * x_i  +  K_ss * h_{i-1}      (4 * hidden gate maps: input, forget, output, cell)
    c_i = sigmoid(f) . c_{i-1} + sigmoid(i) . tanh(g),    h_i = sigmoid(o) . tanh(c_i)

K_is: 1 x 3 convolution along the row with mask B (the left neighbour, and the pixel
itself in channel groups <= the output's), computed for the whole image at once;
K_ss: a width-3 1-D convolution over the row above's hidden state. The receptive field
is the triangle above the pixel plus the row to its left (through the input layer).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import SpatialPixelRNN, lstm_cell, put, take
from .masks import MaskedConv2d

KERNEL = 3


class RowLSTMLayer(nn.Module):
    """(B, hidden, H, W) -> hidden states (B, hidden, H, W); channels grouped by ``groups``."""

    def __init__(self, groups: torch.Tensor) -> None:
        super().__init__()
        hidden = len(groups)
        self.input_to_state = MaskedConv2d(groups, groups.repeat(4), (1, KERNEL), "B")
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, KERNEL, padding=KERNEL // 2, bias=False)

    def gate_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's products as plain matrices: input-to-state (2h, 4h) over [left neighbour, the
        pixel] (the 1x3 mask-B kernel's unmasked taps), its bias (4h,), and state-to-state (3h, 4h)
        over [above-left, above, above-right] (the width-3 kernel, tap-major)."""
        weight = self.input_to_state.masked_weight()[:, :, 0]  # (4h, h, 3); the right tap is all zeros
        w_in = torch.cat([weight[..., 0], weight[..., 1]], dim=1).t()
        w_ss = self.state_to_state.weight.permute(2, 1, 0).flatten(0, 1)
        return w_in, self.input_to_state.bias, w_ss

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(H, B, W, h) rows first, channels last -> hidden states (H, B, W, h).

        In this layout the input-to-state convolution of the whole image is one GEMM over the
        unmasked taps, and each row's state-to-state step one GEMM (B*W, 3h) x (3h, 4h) added to
        that row's input gates; no transposes between the steps.
        """
        height, batch, width, hidden = x.shape
        w_in, b_in, w_ss = self.gate_weights()
        left = F.pad(x, (0, 0, 1, 0))[:, :, :width]  # each pixel's left neighbour (zeros in column 0)
        gates_in = torch.addmm(b_in, torch.cat([left, x], dim=-1).view(-1, 2 * hidden), w_in)
        h = c = x.new_zeros(batch, width, hidden)
        rows = []
        for gates in gates_in.view(height, batch * width, 4 * hidden).unbind(0):
            padded = F.pad(h, (0, 0, 1, 1))
            taps = torch.cat([padded[:, :width], h, padded[:, 2:]], dim=-1).view(batch * width, 3 * hidden)
            h, c = lstm_cell(torch.addmm(gates, taps, w_ss).view(batch, width, 4 * hidden), c, dim=-1)
            rows.append(h)
        return torch.stack(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, hidden, H, W) -> hidden states (B, hidden, H, W) (``forward_rows`` in the image layout)."""
        return self.forward_rows(x.permute(2, 0, 3, 1).contiguous()).permute(1, 3, 0, 2)


class RowLSTM(SpatialPixelRNN):
    """Row LSTM PixelRNN: 7x7 mask-A input conv, residual Row LSTM layers, 1x1 mask-B outputs."""

    registry_name = "row-lstm"
    description = "PixelRNN Row LSTM (van den Oord et al. 2016): row-by-row LSTM, triangular context"

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
