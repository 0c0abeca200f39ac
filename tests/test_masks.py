"""PixelRNN masks A and B (plugins/pixelrnn/masks.py) entry by entry: channel groups, the centre
connections of each mask type, the spatial layout around the centre, and the masked convolution.
The models' receptive fields as a whole are tested by gradients in test_pixelrnn.py."""

import pytest
import torch
from torch.nn import functional as F

from densreg.plugins.pixelrnn.masks import MaskedConv2d, channel_groups, channel_mask, spatial_mask


@pytest.mark.parametrize("n, channels, groups", [
    (6, 3, [0, 0, 1, 1, 2, 2]), (4, 3, [0, 0, 1, 2]), (3, 3, [0, 1, 2]), (5, 1, [0, 0, 0, 0, 0]), (7, 2, [0] * 4 + [1] * 3),
])
def test_channel_groups_are_contiguous_blocks(n, channels, groups):
    assert channel_groups(n, channels).tolist() == groups


RGB = channel_groups(3, 3)  # one map per channel: R, G, B
CENTRE = {"A": [[0, 0, 0], [1, 0, 0], [1, 1, 0]],  # R sees nothing of its pixel, G sees R, B sees R and G
          "B": [[1, 0, 0], [1, 1, 0], [1, 1, 1]]}  # each also sees its own group


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_channel_mask_at_the_centre(mask_type):
    assert channel_mask(RGB, RGB, mask_type).int().tolist() == CENTRE[mask_type]


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("kernel", [(3, 5), (7, 7), (1, 3), (2, 1)])
def test_spatial_mask_sees_the_rows_above_and_the_left_of_the_centre_row(mask_type, kernel):
    kh, kw = kernel
    mask = spatial_mask(RGB, RGB, kernel, mask_type).int()
    assert mask.shape == (3, 3, kh, kw)
    centre_row, centre_col = kh // 2, kw // 2
    for i in range(kh):
        for j in range(kw):
            if i < centre_row or (i == centre_row and j < centre_col):
                expected = [[1] * 3] * 3
            elif (i, j) == (centre_row, centre_col):
                expected = CENTRE[mask_type]
            else:
                expected = [[0] * 3] * 3
            assert mask[:, :, i, j].tolist() == expected, (i, j)


def test_unknown_mask_type_is_refused():
    with pytest.raises(ValueError, match="mask_type"):
        channel_mask(RGB, RGB, "C")


@pytest.mark.parametrize("kernel, padding", [((3, 3), (1, 1)), ((5, 3), (2, 1)), ((1, 7), (0, 3))])
def test_masked_convolution_applies_the_mask_and_keeps_the_size(kernel, padding):
    torch.manual_seed(0)
    conv = MaskedConv2d(RGB, channel_groups(6, 3), kernel, "A")
    assert conv.bias is not None and conv.bias.shape == (6,)  # a bias unless bias=False
    assert MaskedConv2d(RGB, RGB, kernel, "B", bias=False).bias is None
    x = torch.randn(2, 3, 4, 5)
    out = conv(x)
    assert out.shape == (2, 6, 4, 5)
    torch.testing.assert_close(out, F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=padding), rtol=0, atol=0)
    assert torch.equal(conv.masked_weight(), conv.weight * conv.mask)
    assert "mask" not in conv.state_dict()  # derived from the config, never saved
    # an output at (h, w) does not move when the input at or after (h, w) in raster order changes,
    # except through the earlier channels at the centre (mask A: R's output sees no input at its pixel)
    later = x.clone()
    later[:, :, 2, 3:] += 1.0
    later[:, :, 3:] += 1.0
    torch.testing.assert_close(conv(later)[:, :2, 2, 3], out[:, :2, 2, 3], rtol=0, atol=0)
    assert not torch.equal(conv(later)[:, 2:, 2, 3], out[:, 2:, 2, 3])  # G and B see R at their pixel
