"""Masks A and B of PixelRNN (van den Oord et al., 2016, section 3.4), with channel groups.

For C channels generated R, G, B within a pixel, every feature map belongs to one of C
groups: feature f of n is in group ``f * C // n`` (contiguous blocks; image channel c is
in group c). At the centre pixel, an output in group g may read inputs of group < g
(mask A, first layer: R sees no value of its own pixel, G sees R, B sees R and G) or of
group <= g (mask B, later layers). Off the centre, a k x k kernel sees every channel of
the pixels above the centre row and of those to its left, and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def channel_groups(n: int, num_channels: int) -> torch.Tensor:
    """Group of each of ``n`` feature maps, int64 (n,), values 0..C-1 in contiguous blocks."""
    return torch.arange(n) * num_channels // n


def channel_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, mask_type: str) -> torch.Tensor:
    """Allowed centre connections, bool (out, in): in < out for mask 'A', in <= out for 'B'."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    out_g, in_g = out_groups[:, None], in_groups[None, :]
    return in_g < out_g if mask_type == "A" else in_g <= out_g


def spatial_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, kernel: tuple[int, int],
                 mask_type: str) -> torch.Tensor:
    """Mask of a (kh, kw) kernel centred at (kh // 2, kw // 2), bool (out, in, kh, kw).

    Rows above the centre: all True; centre row: True left of the centre, the channel
    mask at the centre, False to the right; rows below: False.
    """
    kh, kw = kernel
    ch, cw = kh // 2, kw // 2
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw, dtype=torch.bool)
    mask[:, :, :ch, :] = True
    mask[:, :, ch, :cw] = True
    mask[:, :, ch, cw] = channel_mask(out_groups, in_groups, mask_type)
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose weight is multiplied by a mask buffer in forward.

    ``out_groups`` / ``in_groups`` give the channel group of every output / input map.
    The mask (bool) is derived from the config, so it is not saved in checkpoints.
    """

    def __init__(self, in_groups: torch.Tensor, out_groups: torch.Tensor, kernel: tuple[int, int],
                 mask_type: str, bias: bool = True) -> None:
        super().__init__(len(in_groups), len(out_groups), kernel, padding=(kernel[0] // 2, kernel[1] // 2),
                         bias=bias)
        self.register_buffer("mask", spatial_mask(out_groups, in_groups, kernel, mask_type), persistent=False)

    def masked_weight(self) -> torch.Tensor:
        """The weight the layer uses, (out, in, kh, kw)."""
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of the kernel below its centre are masked out: the convolution runs on the others
        alone, over the input padded above only (a 3x3 kernel does 6 taps instead of 9, a 7x7 one 28
        instead of 49). A kernel of one row also drops its taps right of the centre (padded on the left
        only)."""
        above, side = self.padding
        weight = self.masked_weight()[:, :, :above + 1]
        if above == 0 and side:
            return F.conv2d(F.pad(x, (side, 0)), weight[..., :side + 1], self.bias)
        if above:
            x = F.pad(x, (0, 0, above, 0))
        return F.conv2d(x, weight, self.bias, padding=(0, side))
