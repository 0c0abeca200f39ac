"""PixelCNN (van den Oord et al. 2016, section 3.5): a stack of masked convolutions, trained in parallel.

    scaled x (B, C, H, W) -> 7x7 mask-A conv to ``hidden`` maps
      -> ``layers`` residual blocks h + [ReLU, 1x1 to hidden/2, ReLU, 3x3 mask B, ReLU, 1x1 to hidden](h)
      -> the output layers of ``base`` (ReLU, 1x1, ReLU, 1x1, all mask B).

Every convolution is masked (``densreg.plugins.pixelrnn.masks``), 1x1 ones included, so for C = 3 the
channel groups keep R -> G -> B within a pixel. The receptive field has PixelCNN's blind spot (the pixels
up and to the right of a growing triangle are never seen); ``gated-pixelcnn`` has none.

Cached ``step`` (Ramachandran et al. 2017): a feature of pixel p in channel group g depends on the values
before p and on p's channels < g only, so the features of every pixel before the current one are final.
A step recomputes the current pixel alone through the layers: the input conv on the 4 x 7 window of the
kept image rows, and in each block the 3x3 conv on the 2 x 3 window of its cached input (the row above and
the current row, each block's input kept for these two rows), caching what it computed. O(layers * hidden^2)
per value instead of the naive re-run's O(D * layers * hidden^2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..pixelrnn.base import INPUT_KERNEL, ROWS_KEPT, advance_rows, one_hot_at
from ..pixelrnn.masks import MaskedConv2d, channel_groups
from .base import MaskedConvModel

BLOCK_KERNEL = 3


def pointwise(conv: MaskedConv2d, x: torch.Tensor) -> torch.Tensor:
    """A masked 1x1 convolution on one pixel's maps: (B, in) -> (B, out)."""
    return F.linear(x, conv.masked_weight()[:, :, 0, 0], conv.bias)


class ResidualBlock(nn.Module):
    """h + [ReLU, 1x1 to h/2, ReLU, 3x3 mask B, ReLU, 1x1 to h](h), all masked: (B, h, H, W) -> (B, h, H, W)."""

    def __init__(self, groups: torch.Tensor, half_groups: torch.Tensor) -> None:
        super().__init__()
        self.reduce = MaskedConv2d(groups, half_groups, (1, 1), "B")
        self.conv = MaskedConv2d(half_groups, half_groups, (BLOCK_KERNEL, BLOCK_KERNEL), "B")
        self.expand = MaskedConv2d(half_groups, groups, (1, 1), "B")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.expand(F.relu(self.conv(F.relu(self.reduce(F.relu(h))))))


class PixelCNN(MaskedConvModel):
    """PixelCNN: 7x7 mask-A input conv, residual blocks with 3x3 mask-B convs, 1x1 output layers."""

    registry_name = "pixelcnn"
    description = "PixelCNN (van den Oord et al. 2016): masked convolutions, residual blocks, parallel training"
    min_maps = 2  # the blocks' middle has hidden / 2 maps, each channel group needs one

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 32, layers: int = 4, output_hidden: int = 32, family: str = "categorical",
                 components: int = 10) -> None:
        super().__init__(event_shape, num_categories, ordering, hidden, layers, output_hidden, family, components)
        channels = self.event_shape[0]
        half_groups = channel_groups(self.hidden // 2, channels)
        self.input_conv = MaskedConv2d(torch.arange(channels), self.groups, (INPUT_KERNEL, INPUT_KERNEL), "A")
        self.blocks = nn.ModuleList(ResidualBlock(self.groups, half_groups) for _ in range(self.num_layers))

    def hidden_maps(self, scaled):
        h = self.input_conv(scaled)
        for block in self.blocks:
            h = block(h)
        return h

    # -- cached step -------------------------------------------------------------
    def initial_state(self, batch_size):
        """(image rows (B, C, 4, W + 6): the last 4 rows of scaled values, 3 zero columns each side;
        block inputs (layers, B, hidden/2, 2, W + 2): each block's 3x3 conv input in the row above and the
        current row, one zero column each side)."""
        channels, _, width = self.event_shape
        pad = INPUT_KERNEL // 2
        return (self.zeros(batch_size, channels, ROWS_KEPT, width + 2 * pad),
                self.zeros(self.num_layers, batch_size, self.hidden // 2, 2, width + 2))

    def step(self, value, position, state):
        """The parameters at ``position`` from the current pixel alone (module docstring); O(layers * hidden^2)."""
        image, cache = state
        channels, _, width = self.event_shape
        pos = torch.as_tensor(position, dtype=torch.int64, device=image.device)
        col, channel = (pos // channels) % width, pos % channels
        image, new_row = advance_rows(image, self.scale(value), pos)
        window = image.index_select(3, col + torch.arange(INPUT_KERNEL, device=image.device))
        x = F.conv2d(window, self.input_conv.masked_weight()[:, :, :ROWS_KEPT], self.input_conv.bias).flatten(1)
        # a new row: the current row of every block's input becomes the row above, the new one is empty
        cache = torch.where(new_row, torch.cat([cache[..., 1:, :], torch.zeros_like(cache[..., :1, :])], -2), cache)
        here = one_hot_at(torch.ones_like(col), 2, image.device)[:, None] & one_hot_at(col + 1, width + 2, image.device)
        taps = col + torch.arange(BLOCK_KERNEL, device=image.device)
        inputs = []
        for l, block in enumerate(self.blocks):
            u = F.relu(pointwise(block.reduce, F.relu(x)))
            rows = torch.where(here, u[:, :, None, None], cache[l])  # (B, hidden/2, 2, W + 2)
            inputs.append(rows)
            weight = block.conv.masked_weight()[:, :, :BLOCK_KERNEL // 2 + 1]
            v = F.conv2d(rows.index_select(3, taps), weight, block.conv.bias).flatten(1)
            x = x + pointwise(block.expand, F.relu(v))
        out = self.head(x[:, :, None, None]).flatten(1)
        return self.params_at(out, channel), (image, torch.stack(inputs))
