"""What PixelCNN and Gated PixelCNN share: the scaled input, the output layers, the family's parameters.

    x (B, C, H, W) in 0..K-1
      -> scaled to [-1, 1] (2x/(K-1) - 1; zero is the padding value)
      -> the variant's masked convolutions -> maps (B, hidden, H, W)
      -> ReLU, 1x1 mask-B conv to ``output_hidden`` maps, ReLU, 1x1 mask-B conv to C * n * P maps
      -> per channel c, the n parameter tensors of P values each of the family (``family``):
         "categorical": n = 1, P = K logits; "logistic-mixture": n = 3 (logits, means, log_scales),
         P = ``components`` (PixelCNN++'s discretized logistic mixture).

Generation order: raster over pixels, channels R, G, B within a pixel (the masks of
``densreg.plugins.pixelrnn.masks``: every feature map is in one channel group, mask A at the input,
mask B after), so the core's ``raster`` ordering is the only one these models take.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F

from densreg.registry import ConfigError, DensityModel
from densreg.registry.families import Categorical, LogisticMixture, levels_family

from ..pixelrnn.base import check_sizes, take
from ..pixelrnn.masks import MaskedConv2d, channel_groups


def gate(pre: torch.Tensor) -> torch.Tensor:
    """Gated unit tanh(a) * sigmoid(b) of the two halves of dim 1: (B, 2h, ...) -> (B, h, ...)."""
    a, b = pre.chunk(2, 1)
    return torch.tanh(a) * torch.sigmoid(b)


class MaskedConvModel(DensityModel):
    """Base of ``pixelcnn`` and ``gated-pixelcnn``; subclasses build their layers and give ``hidden_maps``
    (teacher-forced) and ``step`` (cached)."""

    families = (Categorical, LogisticMixture)

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 32, layers: int = 4, output_hidden: int = 32, family: str = "categorical",
                 components: int = 10) -> None:
        super().__init__(event_shape, num_categories, ordering, levels_family(family, num_categories, components))
        if self.ordering != "raster":
            raise ConfigError(f"{self.registry_name} generates in raster order (channels R, G, B within a pixel) "
                              f"only; got ordering {ordering!r}")
        channels = self.event_shape[0]
        for key, value in (("hidden", hidden), ("output_hidden", output_hidden)):
            if int(value) < self.min_maps * channels:
                raise ConfigError(f"{key} must be at least {self.min_maps} x the number of channels "
                                  f"({self.min_maps * channels}) so that every channel group has feature maps, "
                                  f"got {value}")
        check_sizes(hidden=hidden, output_hidden=output_hidden, layers=layers)
        if int(layers) < 1:
            raise ConfigError(f"layers must be at least 1, got {layers}")
        self.hidden, self.num_layers, self.output_hidden = int(hidden), int(layers), int(output_hidden)
        self.components = int(components)
        self.maps_per_channel = len(self.family.param_names) * self.family.param_size  # n * P
        self.groups = channel_groups(self.hidden, channels)
        out_groups = channel_groups(self.output_hidden, channels)
        self.output_hidden_conv = MaskedConv2d(self.groups, out_groups, (1, 1), "B")
        param_groups = torch.arange(channels * self.maps_per_channel) // self.maps_per_channel
        self.output_conv = MaskedConv2d(out_groups, param_groups, (1, 1), "B")

    min_maps = 1  # feature maps per channel group the layers need at least (hidden >= min_maps * C)

    def config(self):
        return {**super().config(), "hidden": self.hidden, "layers": self.num_layers,
                "output_hidden": self.output_hidden, "family": self.family.name, "components": self.components}

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Values 0..K-1 -> float in [-1, 1]."""
        return x.to(self.output_conv.weight.dtype) * (2.0 / (self.num_categories - 1)) - 1.0

    def hidden_maps(self, scaled: torch.Tensor) -> torch.Tensor:
        """Scaled images (B, C, H, W) -> the output layers' input (B, hidden, H, W)."""
        raise NotImplementedError

    def head(self, maps: torch.Tensor) -> torch.Tensor:
        """Output layers: (B, hidden, X, Y) -> (B, C * n * P, X, Y)."""
        return self.output_conv(F.relu(self.output_hidden_conv(F.relu(maps))))

    def pixel_params(self, out: torch.Tensor) -> torch.Tensor:
        """(B, C * n * P) of one pixel -> (B, C, n, P)."""
        return out.reshape(out.shape[0], self.event_shape[0], len(self.family.param_names), -1)

    def conditional_params(self, x):
        """The family's parameters, each (B, D, P), in raster order with channels within a pixel."""
        x = self.validate(x)
        out = self.head(self.hidden_maps(self.scale(x)))  # (B, C * n * P, H, W)
        batch, (channels, height, width) = x.shape[0], self.event_shape
        out = out.view(batch, channels, len(self.family.param_names), -1, height, width)
        out = out.permute(2, 0, 4, 5, 1, 3).reshape(len(self.family.param_names), batch, self.num_positions, -1)
        return self.family.pack(tuple(out.unbind(0)))

    def params_at(self, out: torch.Tensor, channel: torch.Tensor):
        """A step's parameters: one pixel's output (B, C * n * P) and its 0-dim channel -> pack((B, P) each)."""
        return self.family.pack(tuple(take(self.pixel_params(out), 1, channel).unbind(1)))

    def features(self, x):
        """The output layers' input, flattened: (B, C, H, W) -> (B, hidden*H*W); map m at pixel (i, j) is
        feature m*H*W + i*W + j, a summary of the values before the pixel in raster order."""
        with contextlib.nullcontext() if torch.compiler.is_exporting() else torch.no_grad():
            return self.hidden_maps(self.scale(self.validate(x))).flatten(1)

    def zeros(self, *shape: int) -> torch.Tensor:
        """A zero tensor on the model's device, in its float dtype (a state's initial value)."""
        return torch.zeros(*shape, device=self.order.device, dtype=self.output_conv.weight.dtype)
