"""Gated PixelCNN (van den Oord et al. 2016b, "Conditional Image Generation with PixelCNN Decoders").

Two stacks per layer, with ``hidden`` = h maps, gated units tanh(a) * sigmoid(b) over 2h pre-activations:

- vertical: a (k//2 + 1) x k convolution over the rows up to and including the current one (the rows
  above padded with zeros, unmasked): v_pre (B, 2h, H, W), v = gate(v_pre);
- horizontal: a 1 x k masked convolution over the current row up to the pixel (mask A in the first
  layer, mask B after, with the channel groups of ``densreg.plugins.pixelrnn.masks`` for R -> G -> B),
  plus a 1x1 conv of v_pre shifted down one row (so it sees only rows above): h_gated = gate(...);
  the layer's output h + 1x1(h_gated) (residual; the first layer has 1x1(h_gated) alone, its input is
  the image) and a skip contribution 1x1(h_gated).

The first layer has k = 7 (its input is the image), the ``layers`` after it k = 3. The skip
contributions are summed and go to the output layers of ``base``. The vertical stack sees a growing
rectangle of rows above and the horizontal stack the row to the left, so there is no blind spot: with
enough layers (3 + layers >= the image's width and height), the last value sees every earlier one.

Cached ``step``: the vertical stack of a row depends on the whole row (it is read only by the rows
below), so it is computed for the finished row at once when a new row starts (an ONNX If node when
exported), for all layers, from the last 4 image rows and each layer's vertical output in the row
before; its contribution to the next row's horizontal stack is cached. Each step then runs the
horizontal stack at the current pixel alone, from the current image row (7 columns) and each layer's
input at the pixel to the left. Per value O(layers * hidden^2), amortised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..pixelrnn.base import INPUT_KERNEL, advance_rows, branch, put, take
from ..pixelrnn.masks import MaskedConv2d
from .base import MaskedConvModel, gate

KERNEL = 3
IMAGE_ROWS = INPUT_KERNEL // 2 + 2  # rows a step keeps: the first vertical conv's 4 over the row above, the current


class GatedLayer(nn.Module):
    """One gated layer: (v (B, v_in, H, W), h (B, h_in, H, W)) -> (v, h, skip), each (B, hidden, H, W)."""

    def __init__(self, v_channels: int, h_groups: torch.Tensor, groups: torch.Tensor, kernel: int,
                 first: bool) -> None:
        super().__init__()
        hidden, self.kernel, self.first = len(groups), kernel, first
        self.vertical = nn.Conv2d(v_channels, 2 * hidden, (kernel // 2 + 1, kernel))
        self.vertical_to_horizontal = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.horizontal = MaskedConv2d(h_groups, groups.repeat(2), (1, kernel), "A" if first else "B")
        self.residual = MaskedConv2d(groups, groups, (1, 1), "B")
        self.skip = MaskedConv2d(groups, groups, (1, 1), "B")

    def forward(self, v: torch.Tensor, h: torch.Tensor):
        pad = self.kernel // 2
        v_pre = self.vertical(F.pad(v, (pad, pad, pad, 0)))
        above = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i sees v_pre of row i - 1 (zeros for row 0)
        gated = gate(self.horizontal(h) + self.vertical_to_horizontal(above))
        residual = self.residual(gated)
        return gate(v_pre), residual if self.first else h + residual, self.skip(gated)

    def horizontal_taps(self) -> torch.Tensor:
        """The horizontal kernel's unmasked taps (2h, h_in, k//2 + 1): the pixels left of the centre and it."""
        return self.horizontal.masked_weight()[:, :, 0, :self.kernel // 2 + 1]


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A (masked) 1x1 convolution on one pixel's maps: (B, in) -> (B, out)."""
    weight = conv.masked_weight() if isinstance(conv, MaskedConv2d) else conv.weight
    return F.linear(x, weight[:, :, 0, 0], conv.bias)


class GatedPixelCNN(MaskedConvModel):
    """Gated PixelCNN: vertical and horizontal stacks without blind spot, gated units, residual and skip
    connections, 1x1 output layers."""

    registry_name = "gated-pixelcnn"
    description = ("Gated PixelCNN (van den Oord et al. 2016b): vertical and horizontal stacks without blind spot, "
                   "gated units")

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 32, layers: int = 5, output_hidden: int = 32, family: str = "categorical",
                 components: int = 10) -> None:
        super().__init__(event_shape, num_categories, ordering, hidden, layers, output_hidden, family, components)
        channels = self.event_shape[0]
        self.gated = nn.ModuleList([GatedLayer(channels, torch.arange(channels), self.groups, INPUT_KERNEL, True)])
        self.gated.extend(GatedLayer(self.hidden, self.groups, self.groups, KERNEL, False)
                          for _ in range(self.num_layers))

    def hidden_maps(self, scaled):
        v, h, skip = scaled, scaled, 0
        for layer in self.gated:
            v, h, s = layer(v, h)
            skip = skip + s
        return skip

    # -- cached step -------------------------------------------------------------
    def initial_state(self, batch_size):
        """(image rows (B, C, 5, W + 6): the last 5 rows of scaled values, 3 zero columns each side;
        vertical (n, B, h, W + 2): each layer's v in the row above the last finished one, one zero column each
        side; to_horizontal (n, B, 2h, W): each layer's 1x1 of the row above's v_pre, what the current row's
        horizontal stack adds (the bias alone in row 0); horizontal (n - 1, B, h, W + 1): the current row's
        inputs of the layers after the first, a zero column on the left), n = layers + 1."""
        channels, _, width = self.event_shape
        n = len(self.gated)
        bias = torch.stack([layer.vertical_to_horizontal.bias for layer in self.gated]).detach()
        return (self.zeros(batch_size, channels, IMAGE_ROWS, width + INPUT_KERNEL - 1),
                self.zeros(n, batch_size, self.hidden, width + 2),
                bias[:, None, :, None].expand(n, batch_size, 2 * self.hidden, width).clone(),
                self.zeros(n - 1, batch_size, self.hidden, width + 1))

    def vertical_row(self, image, vertical, to_horizontal):
        """The vertical stack of the row just finished (image rows 0..3 of ``image``, the 4 the first layer
        reads): new ``vertical`` (n, B, h, W + 2) and ``to_horizontal`` (n, B, 2h, W) (``initial_state``)."""
        v, outs, adds = image[:, :, :IMAGE_ROWS - 1], [], []
        for l, layer in enumerate(self.gated):
            if l:  # the layer's input in the row before (cached) and in this row, one zero column each side
                v = torch.stack([vertical[l - 1], F.pad(v, (1, 1))], 2)
            v_pre = F.conv2d(v, layer.vertical.weight, layer.vertical.bias).squeeze(2)  # (B, 2h, W)
            v = gate(v_pre)
            outs.append(F.pad(v, (1, 1)))
            adds.append(layer.vertical_to_horizontal(v_pre[..., None]).squeeze(-1))
        return torch.stack(outs), torch.stack(adds)

    def step(self, value, position, state):
        """The parameters at ``position``: the horizontal stack at the current pixel (module docstring)."""
        image, vertical, to_horizontal, horizontal = state
        channels, _, width = self.event_shape
        pos = torch.as_tensor(position, dtype=torch.int64, device=image.device)
        col, channel = (pos // channels) % width, pos % channels
        image, new_row = advance_rows(image, self.scale(value), pos)
        vertical, to_horizontal = branch(new_row & (pos > 0), self.vertical_row,
                                         lambda image, v, add: (v.clone(), add.clone()),
                                         (image, vertical, to_horizontal))
        first = self.gated[0]
        row = take(image, 2, image.new_tensor(IMAGE_ROWS - 1, dtype=torch.int64))  # (B, C, W + 6)
        window = row.index_select(2, col + torch.arange(INPUT_KERNEL // 2 + 1, device=image.device))
        skip, inputs, x = 0, [], None
        for l, layer in enumerate(self.gated):
            if l:
                taps = put(horizontal[l - 1], col + 1, x)  # this layer's input row, x written at the pixel
                inputs.append(taps)
                window = taps.index_select(2, col + torch.arange(KERNEL // 2 + 1, device=image.device))
            pre = (torch.einsum("bit,oit->bo", window, layer.horizontal_taps()) + layer.horizontal.bias
                   + take(to_horizontal[l], 2, col))
            gated = gate(pre)
            residual = pointwise(layer.residual, gated)
            x = residual if layer is first else x + residual
            skip = skip + pointwise(layer.skip, gated)
        out = self.head(skip[:, :, None, None]).flatten(1)
        return self.params_at(out, channel), (image, vertical, to_horizontal, torch.stack(inputs))
