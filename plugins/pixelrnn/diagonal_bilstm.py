"""Diagonal BiLSTM (van den Oord et al., 2016, section 3.2): LSTMs along the image's diagonals.

The input map is skewed (row i shifted right by i) so that the diagonals i + j = s
become columns s; the LSTM then runs over the columns. In the original coordinates,
for the left-to-right direction:

    gates(i, j) = K_is x(i, j) + K_ss [h(i-1, j), h(i, j-1)]
    c(i, j) = sigmoid(f) . c(i, j-1) + sigmoid(i) . tanh(g),   h = sigmoid(o) . tanh(c)

K_is: 1 x 1 convolution with mask B; K_ss: the 2 x 1 convolution over the previous
skewed column (the pixel above and the one to the left). The right-to-left direction
is the same on the mirrored map (own weights); its output is shifted down one row
before the two are added, so that no pixel sees itself or a later one:

    out(i, j) = h_left(i, j) + h_right(i-1, j).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import SpatialPixelRNN, branch, eager_inference, lstm_cell, put, recur, take
from .masks import MaskedConv2d


def skew(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H, H+W-1): row i shifted right by i, zeros elsewhere."""
    height, width = x.shape[-2:]
    j = torch.arange(height + width - 1, device=x.device) - torch.arange(height, device=x.device)[:, None]
    index = j.clamp(0, width - 1).expand(*x.shape[:-1], -1)
    return torch.gather(x, -1, index) * ((j >= 0) & (j < width))


def unskew(y: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of ``skew``: (..., H, H+W-1) -> (..., H, W)."""
    height = y.shape[-2]
    index = torch.arange(height, device=y.device)[:, None] + torch.arange(width, device=y.device)
    return torch.gather(y, -1, index.expand(*y.shape[:-1], -1))


def skew_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows-first maps (H, B, W, h) -> skewed columns (H+W-1, B, H, h): column s holds x[i, :, s - i]
    for every row i (zeros outside the image). A strided view of the zero-padded input."""
    height, batch, width, hidden = x.shape
    padded = F.pad(x, (0, 0, height - 1, height - 1)).contiguous()  # (H, B, W + 2H - 2, h), a new tensor
    image = (width + 2 * height - 2) * hidden  # its strides from its shape (traceable inside a Scan body)
    row = batch * image
    return padded.as_strided((height + width - 1, batch, height, hidden), (hidden, image, row - hidden, 1),
                             (height - 1) * hidden)


def unskew_rows(y: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of ``skew_rows``: (H+W-1, B, H, h) -> (H, B, W, h), out[i, :, j] = y[i + j, :, i]."""
    columns, batch, height, hidden = y.shape
    image = height * hidden  # the strides of y.contiguous(), from its shape (traceable inside a Scan body)
    column = batch * image
    return y.contiguous().as_strided((height, batch, width, hidden), (column + hidden, image, column, 1), 0)


class DiagonalBiLSTMLayer(nn.Module):
    """(B, hidden, H, W) -> out (B, hidden, H, W), both directions; channels grouped by ``groups``."""

    def __init__(self, groups: torch.Tensor) -> None:
        super().__init__()
        hidden = len(groups)
        # Gates of both directions: the first 4h maps run left to right, the next 4h right to left.
        self.input_to_state = MaskedConv2d(groups, groups.repeat(8), (1, 1), "B")
        # state_to_state[direction]: (4h, 2h), acting on [h above, h beside] (beside: left, or right).
        self.state_to_state = nn.Parameter(torch.empty(2, 4 * hidden, 2 * hidden))
        nn.init.uniform_(self.state_to_state, -(2 * hidden) ** -0.5, (2 * hidden) ** -0.5)

    def input_gates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked 1x1 input-to-state weight (2, 4h, h) and bias (2, 4h), left-to-right first."""
        hidden = self.state_to_state.shape[2] // 2
        return (self.input_to_state.masked_weight().reshape(2, 4 * hidden, hidden),
                self.input_to_state.bias.reshape(2, 4 * hidden))

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(H, B, W, h) rows first, channels last -> out (H, B, W, h), both directions.

        The input is skewed (a strided view, ``skew_rows``) before the 1x1 input-to-state product,
        so the gates of each direction come out of one GEMM, (2, S, B*H, 4h), read column by column; each
        skewed column's state step is then one batched GEMM (2, B*H, 2h) x (2, 2h, 4h). The columns
        run in ``recur`` (one ONNX Scan when exported).
        """
        if eager_inference(x.device):
            return self.evaluate_rows(x)
        height, batch, width, hidden = x.shape
        w_in, b_in = self.input_gates()  # (2, 4h, h), (2, 4h)
        columns = torch.stack([skew_rows(x), skew_rows(x.flip(2))])  # (2, S, B, H, h)
        # the bias inside the GEMM: added to the product, its backward is a strided reduction over S and
        # B*H (training steps about 1.3x slower at 28x28)
        gates_in = torch.baddbmm(b_in[:, None], columns.view(2, -1, hidden), w_in.transpose(1, 2))
        gates_in = gates_in.view(2, -1, batch * height, 4 * hidden)
        inside = skew(x.new_ones(height, width)).t()[:, :, None]  # (S, H, 1): 1 inside the image
        w_ss = self.state_to_state.transpose(1, 2)  # (2, 2h, 4h) over [h above, h beside]

        def column(carry, inputs):  # skewed column s: (h, c) (2, B, H, h) of column s-1, its gates -> (h, c), h
            (h, c), (gates, valid) = carry, inputs
            above = F.pad(h, (0, 0, 1, 0))[:, :, :height]  # row i gets h(i-1) of the previous column
            taps = torch.cat([above, h], dim=-1).view(2, -1, 2 * hidden)
            h, c = lstm_cell(torch.baddbmm(gates, taps, w_ss).view(2, -1, height, 4 * hidden), c, dim=-1)
            h, c = h * valid, c * valid
            return (h, c), h

        zeros = x.new_zeros(2, batch, height, hidden)
        # (S, 2, B, H, h); the gates stepped along their dim 1, so their gradient is stacked in place
        states = recur(column, (zeros, torch.zeros_like(zeros)), (gates_in, inside), dims=(1, 0))[1]
        left, right = unskew_rows(states[:, 0], width), unskew_rows(states[:, 1], width).flip(2)
        return left + F.pad(right, (0, 0, 0, 0, 0, 0, 1, 0))[:height]  # right-to-left shifted down a row

    def evaluate_rows(self, x: torch.Tensor, residual: bool = False) -> torch.Tensor:
        """``forward_rows`` without autograd (eager inference): (H, B, W, h) -> (H, B, W, h);
        ``residual``: x + forward_rows(x) instead, written into ``x`` (returned).

        No gate tensor of the whole skewed image (S * 2 * B*H * 4h floats, 79 MB at batch 100 and
        28x28): each column's gates, input-to-state and state-to-state, come from one batched GEMM
        (2, 4h, 3h + 1) x (2, 3h + 1, B*H) over a taps buffer kept across columns, [x, h above,
        h beside, 1] per pixel (the bias as a row of ones; stored pixel-major, read transposed by
        the GEMM), so that every gate comes out as a contiguous block and the LSTM runs in place
        on it at full vector width; each column's h goes into the next column's taps and into the
        (S, B, H, h) states of its direction.
        """
        height, batch, width, hidden = x.shape
        w_in, b_in = self.input_gates()  # (2, 4h, h), (2, 4h)
        weight = torch.cat([w_in, self.state_to_state, b_in[..., None]], dim=2)  # (2, 4h, 3h + 1)
        columns = (skew_rows(x), skew_rows(x.flip(2)))  # (S, B, H, h) each, views of padded copies
        inside = skew(x.new_ones(height, width)).t()  # (S, H): 1 inside the image
        taps = x.new_zeros(2, batch, height, 3 * hidden + 1)  # [x, h above, h beside, 1] per pixel
        taps[..., -1] = 1
        x_tap, above, beside = taps[..., :-1].split(hidden, dim=-1)
        states = [x.new_empty(len(inside), batch, height, hidden) for _ in range(2)]  # (S, B, H, h) per direction
        gates = x.new_empty(2, 4 * hidden, batch, height)
        c, tanh_c = x.new_zeros(2, hidden, batch, height), x.new_empty(2, hidden, batch, height)
        for s, valid in enumerate(inside):
            for direction in (0, 1):
                x_tap[direction].copy_(columns[direction][s])
            torch.bmm(weight, taps.view(2, -1, 3 * hidden + 1).transpose(1, 2), out=gates.view(2, 4 * hidden, -1))
            in_gate, forget, output = gates[:, :3 * hidden].sigmoid_().chunk(3, dim=1)
            c.mul_(forget).addcmul_(in_gate, gates[:, 3 * hidden:].tanh_()).mul_(valid)  # zero outside the image
            # h into the taps (outside the image o * tanh(0) = 0)
            torch.mul(output, torch.tanh(c, out=tanh_c), out=beside.permute(0, 3, 1, 2))
            above[:, :, 1:] = beside[:, :, :-1]  # row i gets h(i-1) of this column
            for direction in (0, 1):
                states[direction][s] = beside[direction]
        left, right = unskew_rows(states[0], width), unskew_rows(states[1], width)
        out = x if residual else left.clone(memory_format=torch.contiguous_format)
        if residual:
            out.add_(left)
        out[1:].add_(right[:-1].flip(2))  # right-to-left, mirrored back, shifted down a row
        return out

    def add_rows_(self, x: torch.Tensor) -> torch.Tensor:
        """x + forward_rows(x) written into ``x`` (H, B, W, h) (eager inference: no autograd)."""
        return self.evaluate_rows(x, residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, hidden, H, W) -> out (B, hidden, H, W) (``forward_rows`` in the image layout)."""
        return self.forward_rows(x.permute(2, 0, 3, 1).contiguous()).permute(1, 3, 0, 2)


class DiagonalBiLSTM(SpatialPixelRNN):
    """Diagonal BiLSTM PixelRNN: 7x7 mask-A input conv, residual Diagonal BiLSTM layers, 1x1 mask-B outputs."""

    registry_name = "diagonal-bilstm"
    description = "PixelRNN Diagonal BiLSTM (van den Oord et al. 2016): LSTMs along diagonals in both directions"

    def make_layer(self, groups):
        return DiagonalBiLSTMLayer(groups)

    def initial_layer_state(self, batch_size):
        """(left_above (L, B, h, W), left_h (L, B, h, W+1), left_c (L, B, h, W+1), right_above (L, B, h, W),
        cur_x (L, B, h, W)): the left-to-right h of the row above, h and c of the current row so
        far (one zero column on the left), the right-to-left h of the row above (the shifted
        output for this row), and the current row's layer inputs."""
        width = self.event_shape[2]
        return tuple(self.layer_zeros(batch_size, width + extra) for extra in (0, 1, 1, 0, 0))

    def right_to_left(self, cur_x: torch.Tensor, right_above: torch.Tensor) -> torch.Tensor:
        """Right-to-left h of a finished row, every layer at once: (L, B, h, W) x 2 -> (L, B, h, W).

        ``cur_x``: the row's layer inputs; ``right_above``: right-to-left h of the row above it.
        """
        gates = [layer.input_gates() for layer in self.rnn]  # each masks its weight once
        w_in = torch.stack([weight[1] for weight, _ in gates])  # (L, 4h, h)
        b_in = torch.stack([bias[1] for _, bias in gates])  # (L, 4h)
        w_ss = torch.stack([layer.state_to_state[1] for layer in self.rnn])  # (L, 4h, 2h)
        w_above, w_beside = w_ss.chunk(2, dim=2)
        gates_in = (torch.einsum("loh,lbhw->lbow", w_in, cur_x) + b_in[:, None, :, None]
                    + torch.einsum("loh,lbhw->lbow", w_above, right_above))
        w_beside = w_beside.transpose(1, 2)  # (L, h, 4h)

        def column(carry, gates):  # column j: (h, c) (L, B, h) of column j+1, gates (L, B, 4h) -> (h, c), h
            h, c = lstm_cell(gates[0] + torch.matmul(carry[0], w_beside), carry[1], dim=2)
            return (h, c), h

        zeros = cur_x.new_zeros(cur_x.shape[:3])
        columns = recur(column, (zeros, torch.zeros_like(zeros)), (gates_in.movedim(-1, 0),), reverse=True)[1]
        return columns.movedim(0, -1).contiguous()  # (L, B, h, W), as the If node's other branch

    def step_layers(self, x, row, col, new_row, layer_state):
        left_above, left_h, left_c, right_above, cur_x = layer_state
        # At a row's first position: the finished row's right-to-left pass (only then: an If
        # node in ONNX), and its left-to-right h becomes the row above.
        right_above = branch(new_row, self.right_to_left, lambda cur, above: above.clone(), (cur_x, right_above))
        right_above = torch.where(row > 0, right_above, torch.zeros_like(right_above))
        left_above = torch.where(new_row, left_h[..., 1:], left_above)
        hs, cs, xs = [], [], []
        for l, layer in enumerate(self.rnn):
            w_in, b_in = layer.input_gates()
            w_above, w_beside = layer.state_to_state[0].chunk(2, dim=1)
            gates = (F.linear(x, w_in[0], b_in[0]) + F.linear(take(left_above[l], 2, col), w_above)
                     + F.linear(take(left_h[l], 2, col), w_beside))
            h, c = lstm_cell(gates, take(left_c[l], 2, col))
            hs.append(put(left_h[l], col + 1, h))
            cs.append(put(left_c[l], col + 1, c))
            xs.append(put(cur_x[l], col, x))
            x = x + h + take(right_above[l], 2, col)
        return x, (left_above, torch.stack(hs), torch.stack(cs), right_above, torch.stack(xs))
