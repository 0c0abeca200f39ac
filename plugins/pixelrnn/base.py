"""The frame shared by Row LSTM and Diagonal BiLSTM: input layer, residual LSTM stack, output layers.

    x (B, C, H, W) in 0..K-1
      -> scaled to [-1, 1] (2x/(K-1) - 1; zero is the padding value)
      -> 7x7 mask-A convolution to ``hidden`` feature maps
      -> ``layers`` LSTM layers, each added to its input (residual)
      -> ReLU, 1x1 mask-B conv to ``output_hidden`` maps, ReLU, 1x1 mask-B conv to C*K maps
      -> a K-way softmax per channel.

Generation order: raster over pixels, channels R, G, B within a pixel (the core's
``raster`` ordering is this pixel-major order, so ``order`` is the usual buffer).
The paper keeps a residual stream of 2h maps and LSTMs of h units; here both have
``hidden`` maps, so the residual needs no 1x1 projection.

Cached ``step`` (both variants): every feature of pixel (i, j) in channel group g
depends on values of that pixel in channels < g only, so no feature ever depends on the
last channel of its own pixel. Hence, at position d = (row r, column j, channel c),
the features of pixels left of j in row r and of every row above are final; a step
recomputes the current pixel through the layers (its input needs the 4 x 7 window of
the last 4 image rows) and caches what it computed. The image is kept as a buffer of
its last 4 rows, so the state has a fixed size independent of the image height.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from densreg.registry import ConfigError, DensityModel

from .masks import MaskedConv2d, channel_groups

INPUT_KERNEL = 7
ROWS_KEPT = INPUT_KERNEL // 2 + 1  # the rows the mask-A kernel reads: 3 above and the current one


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """LSTM update from pre-activations ``gates`` (4h along ``dim``: input, forget, output, cell).

    Returns (h, c), each ``gates`` with h along ``dim``.
    """
    hidden = gates.shape[dim] // 4
    # split, not two narrows: its backward is one cat, theirs two zero-filled copies of gates and a sum
    sigmoid_gates, cell = gates.split([3 * hidden, hidden], dim)
    i, f, o = torch.sigmoid(sigmoid_gates).chunk(3, dim)  # one pass over the three gates
    c = f * c_prev + i * torch.tanh(cell)
    return o * torch.tanh(c), c


def eager_inference(device: torch.device) -> bool:
    """True in eager mode without autograd or autocast on ``device`` (under no_grad or inference_mode,
    not compiling or exporting): there the evaluation paths may work in place on tensors they own."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.is_autocast_enabled(device.type))


def rows_product(bias: torch.Tensor, weight: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """bias + weight @ maps[n] for every n: (out,), (out, in), (N, in, M) -> (N, out, M), one
    batched GEMM writing its output in place (``torch.matmul`` would fold N into M through two copies)."""
    return torch.baddbmm(bias[:, None], weight.expand(maps.shape[0], *weight.shape), maps)


def branch(pred: torch.Tensor, true_fn, false_fn, operands: tuple[torch.Tensor, ...]):
    """``true_fn(*operands)`` if the 0-dim bool ``pred`` else ``false_fn(*operands)``.

    Traced (torch.export, hence the dynamo ONNX exporter) it is ``torch.cond``, an ONNX
    If node, so only the taken branch runs there too; in eager mode a plain Python
    branch (eager ``torch.cond`` would compile its branches with dynamo).
    """
    if torch.compiler.is_compiling():
        return torch.cond(pred, true_fn, false_fn, operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def recur(body, init: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...], reverse: bool = False,
          dims: tuple[int, ...] | None = None):
    """Run ``body(carry, x) -> (carry, y)`` along dim 0 of ``xs`` (or along ``dims``, one per x);
    returns (last carry, ys stacked on dim 0).

    In eager mode the gradient of each x is stacked along its own dim: stepping along dim 1 of a
    tensor laid out (N, steps, ...) spares the copy that a transposed view (steps, N, ...) would
    cost its producer's backward.

    ``carry``, ``x`` and ``y`` are tuples of tensors (``y`` may be one tensor). Exported
    (torch.export, hence the dynamo ONNX exporter) it is torch's ``scan``, an ONNX Scan
    node: the body is traced once instead of once per step (28 rows or 55 skewed columns
    per layer at 28x28). ``body`` must then not bake in the batch size (reshape with -1).
    Otherwise a plain Python loop (eager ``scan`` would compile its body with dynamo, and
    ``torch.compile`` unrolls the loop as before).
    """
    dims = dims or (0,) * len(xs)
    if torch.compiler.is_exporting():
        from torch._higher_order_ops.scan import scan

        xs = tuple(x.movedim(dim, 0) for x, dim in zip(xs, dims))

        def traced(carry, x):  # scan's outputs may not alias each other: y gets its own copy
            carry, y = body(carry, x)
            return carry, tuple(t.clone() for t in y) if isinstance(y, tuple) else y.clone()

        return scan(traced, init, xs, reverse=reverse)
    carry, ys = init, []
    steps = zip(*(x.unbind(dim) for x, dim in zip(xs, dims)))
    for x in (reversed(list(steps)) if reverse else steps):
        carry, y = body(carry, x)
        ys.append(y)
    if reverse:
        ys.reverse()
    if isinstance(ys[0], tuple):
        return carry, tuple(torch.stack(column) for column in zip(*ys))
    return carry, torch.stack(ys)


def one_hot_at(index: torch.Tensor, size: int, device) -> torch.Tensor:
    """Boolean (size,) that is True at the 0-dim ``index`` only (a write mask export can trace)."""
    return torch.arange(size, device=device) == index


def take(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``t`` at the 0-dim tensor ``index`` along ``dim`` (the dim is dropped); traceable."""
    return t.index_select(dim, index.reshape(1)).squeeze(dim)


def put(t: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` (..., N) with ``value`` (...) written at the 0-dim ``index`` of the last dim."""
    return torch.where(one_hot_at(index, t.shape[-1], t.device), value.unsqueeze(-1), t)


def advance_rows(image: torch.Tensor, scaled: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image rows a cached step keeps, moved on to generation position ``pos`` (0-dim int64, raster order
    with channels within a pixel): ``image`` (B, C, R, W + 6) holds the last R rows of scaled values with
    INPUT_KERNEL // 2 columns of zero padding each side, the current row last; ``scaled`` (B,) is the value at
    ``pos - 1``. At a row's first position (also d = 0) the rows shift up and the new current row is empty
    (zeros); then the value is written (at the end of the row above when a row has just started).

    Returns (image, new_row), new_row a 0-dim bool."""
    channels, rows, padded = image.shape[1], image.shape[2], image.shape[3]
    pad = INPUT_KERNEL // 2
    width = padded - 2 * pad
    new_row = pos % (width * channels) == 0
    shifted = torch.cat([image[:, :, 1:], torch.zeros_like(image[:, :, :1])], dim=2)
    image = torch.where(new_row, shifted, image)
    prev = pos - 1
    write = (one_hot_at(prev % channels, channels, image.device)[:, None, None]
             & one_hot_at(torch.where(new_row, rows - 2, rows - 1), rows, image.device)[:, None]
             & one_hot_at((prev // channels) % width + pad, padded, image.device)
             & (pos > 0))
    return torch.where(write, scaled[:, None, None, None], image), new_row


class RowsOf(nn.Module):
    """A layer whose ``forward`` is its ``forward_rows`` (for ``torch.func.functional_call``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.forward_rows(x)


MAX_UNITS = 1 << 16  # feature maps or LSTM units per layer
MAX_LAYERS = 1 << 10


def check_sizes(**sizes) -> None:
    """ConfigError for a size beyond MAX_UNITS (MAX_LAYERS for ``layers``), checked before anything
    is built: a hostile ``hidden=2**31`` would otherwise allocate its channel groups (16 GiB) first."""
    for key, value in sizes.items():
        limit = MAX_LAYERS if key == "layers" else MAX_UNITS
        if int(value) > limit:
            raise ConfigError(f"{key} must be at most {limit}, got {value}")


class SpatialPixelRNN(DensityModel):
    """Base of ``row-lstm`` and ``diagonal-bilstm``; subclasses give the LSTM layer and its cached step."""

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 16, layers: int = 3, output_hidden: int = 32) -> None:
        super().__init__(event_shape, num_categories, ordering)
        if self.ordering != "raster":
            raise ConfigError(f"{self.registry_name} generates in raster order (channels R, G, B within a pixel) "
                              f"only; got ordering {ordering!r} (the plain 'pixelrnn' takes any ordering)")
        channels = self.event_shape[0]
        for key, value in (("hidden", hidden), ("output_hidden", output_hidden)):
            if int(value) < channels:
                raise ConfigError(f"{key} must be at least the number of channels ({channels}) so that every "
                                  f"channel group has feature maps, got {value}")
        check_sizes(hidden=hidden, output_hidden=output_hidden, layers=layers)
        if int(layers) < 1:
            raise ConfigError(f"layers must be at least 1, got {layers}")
        self.hidden, self.num_layers, self.output_hidden = int(hidden), int(layers), int(output_hidden)
        groups = channel_groups(self.hidden, channels)
        self.input_conv = MaskedConv2d(torch.arange(channels), groups, (INPUT_KERNEL, INPUT_KERNEL), "A")
        self.rnn = nn.ModuleList(self.make_layer(groups) for _ in range(self.num_layers))
        out_groups = channel_groups(self.output_hidden, channels)
        self.output_hidden_conv = MaskedConv2d(groups, out_groups, (1, 1), "B")
        logit_groups = torch.arange(channels * self.num_categories) // self.num_categories
        self.output_conv = MaskedConv2d(out_groups, logit_groups, (1, 1), "B")

    # The layout of the maps the layers' ``forward_rows`` take and return, as a permutation of
    # (B, hidden, H, W): rows first, channels last (H, B, W, hidden) unless a variant says otherwise.
    rows_layout: tuple[int, int, int, int] = (2, 0, 3, 1)

    def make_layer(self, groups: torch.Tensor) -> nn.Module:
        """One LSTM layer on (B, hidden, H, W) maps whose channels are in ``groups``."""
        raise NotImplementedError

    def config(self):
        return {**super().config(), "hidden": self.hidden, "layers": self.num_layers,
                "output_hidden": self.output_hidden}

    # -- teacher-forced pass ---------------------------------------------------
    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Values 0..K-1 -> float in [-1, 1]."""
        return x.to(self.input_conv.weight.dtype) * (2.0 / (self.num_categories - 1)) - 1.0

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Output layers: maps (N, hidden, X, Y) -> logits (N, C*K, X, Y).

        On contiguous maps each 1x1 layer is one batched product (out, in) x (N, in, X*Y) (2-3x
        faster than the convolution on this CPU); on other strides (a channels-last view) the
        convolution, which reads them in place. Under ``eager_inference`` the second ReLU runs in
        place on the first layer's output (no 10 MB temporary per batch of 100 at 28x28).
        """
        in_place = eager_inference(h.device)
        if not h.is_contiguous():
            return self.output_conv(F.relu(self.output_hidden_conv(F.relu(h)), inplace=in_place))
        maps = F.relu(h).flatten(2)
        for i, conv in enumerate((self.output_hidden_conv, self.output_conv)):
            maps = rows_product(conv.bias, conv.masked_weight()[:, :, 0, 0], F.relu(maps, inplace=in_place) if i else maps)
        return maps.view(h.shape[0], -1, *h.shape[2:])

    def hidden_rows(self, scaled: torch.Tensor) -> torch.Tensor:
        """Scaled images (B, C, H, W) float -> the last layer's residual stream in ``rows_layout``.

        One layout change on the way in instead of one per layer.
        """
        h = self.input_conv(scaled).permute(*self.rows_layout).contiguous()
        if torch.compiler.is_exporting() and len(self.rnn) > 1:
            return self.stacked_layers(h)
        in_place = eager_inference(h.device)  # h is this pass's own tensor
        for layer in self.rnn:
            if not in_place:
                h = h + layer.forward_rows(h)
            elif hasattr(layer, "add_rows_"):  # the residual added row by row, while each row is in cache
                h = layer.add_rows_(h)
            else:
                h = h.add_(layer.forward_rows(h))
        return h

    def stacked_layers(self, h: torch.Tensor) -> torch.Tensor:
        """The residual layers on ``h`` (in ``rows_layout``) as one ``recur`` over their stacked weights.

        Traced, the layers are one Scan whose body is one layer (itself a Scan over rows or
        diagonals), instead of one traced copy per layer: each copy cost seconds of export.
        The layers' masks are buffers equal in every layer (same channel groups), taken from
        the first.
        """
        per_layer = [dict(RowsOf(layer).named_parameters()) for layer in self.rnn]
        names = list(per_layer[0])
        weights = tuple(torch.stack([params[name] for params in per_layer]) for name in names)
        rows = RowsOf(self.rnn[0])

        def layer(carry, params):  # one residual layer with the weights ``params`` (names as ``names``)
            return (carry[0] + torch.func.functional_call(rows, dict(zip(names, params)), (carry[0],)),), ()

        return recur(layer, (h,), weights)[0][0]

    def hidden_maps(self, scaled: torch.Tensor) -> torch.Tensor:
        """Scaled images (B, C, H, W) float -> the last layer's residual stream (B, hidden, H, W) (a view)."""
        return self.hidden_rows(scaled).permute(*sorted(range(4), key=self.rows_layout.__getitem__))

    def pixel_major_logits(self, scaled: torch.Tensor) -> torch.Tensor:
        """Scaled float images (B, C, H, W) -> logits (H, C, K, B, W), the output layers' own layout.

        The 1x1 output layers see the rows as a batch of H images (H, hidden, B, W) (a view of
        either layout that the convolution reads in place).
        """
        rows = self.hidden_rows(scaled)
        logits = self.head(rows.permute(*(self.rows_layout.index(d) for d in (2, 1, 0, 3))))
        batch, (channels, height, width) = scaled.shape[0], self.event_shape
        return logits.view(height, channels, self.num_categories, batch, width)

    def logits_from_scaled(self, scaled: torch.Tensor) -> torch.Tensor:
        """``conditional_logits`` of scaled float images (B, C, H, W) -> (B, D, K); differentiable
        in the input (the causality tests take gradients through it).

        Read pixel-major from ``pixel_major_logits``: the raster generation order (channels
        within a pixel) without a gather.
        """
        logits = self.pixel_major_logits(scaled).permute(3, 0, 4, 1, 2)  # (B, H, W, C, K)
        return logits.reshape(scaled.shape[0], self.num_positions, self.num_categories)

    def conditional_logits(self, x):
        return self.logits_from_scaled(self.scale(self.validate(x)))

    def conditional_log_probs(self, x):
        """log p(x_d | x_<d) in nats, (B, D) in generation order: the softmax over K taken in the
        output layers' layout (H, C, K, B, W), where it runs along contiguous rows of B*W values,
        instead of over the last dim of size K of (B, D, K) after a copy (several times faster at K = 2)."""
        x = self.validate(x)
        log_p = torch.log_softmax(self.pixel_major_logits(self.scale(x)), dim=2)  # (H, C, K, B, W)
        log_p = log_p.gather(2, x.permute(2, 1, 0, 3).unsqueeze(2)).squeeze(2)  # (H, C, B, W)
        return log_p.permute(2, 0, 3, 1).reshape(x.shape[0], self.num_positions)  # (B, H, W, C)

    def features(self, x):
        """The last layer's feature maps, flattened: (B, C, H, W) -> (B, hidden*H*W).

        Feature m*H*W + i*W + j is map m at pixel (i, j), a summary of the values before that
        pixel in raster order (it never sees the pixel itself): the input of the output layers.
        """
        # Exported (under no_grad already), a no_grad block would put the layers' nested Scans in a
        # submodule that torch.export cannot resolve ("no attribute 'scan_combine_graph_0'").
        with contextlib.nullcontext() if torch.compiler.is_exporting() else torch.no_grad():
            return self.hidden_maps(self.scale(self.validate(x))).flatten(1)

    # -- cached step -------------------------------------------------------------
    def initial_state(self, batch_size):
        channels, _, width = self.event_shape
        pad = INPUT_KERNEL // 2
        image = torch.zeros(batch_size, channels, ROWS_KEPT, width + 2 * pad, device=self.order.device,
                            dtype=self.input_conv.weight.dtype)
        return (image, *self.initial_layer_state(batch_size))

    def initial_layer_state(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def layer_zeros(self, batch_size: int, width: int) -> torch.Tensor:
        """A zero cache for every layer: (layers, B, hidden, width) on the model's device and dtype."""
        return torch.zeros(self.num_layers, batch_size, self.hidden, width, device=self.order.device,
                           dtype=self.input_conv.weight.dtype)

    def step(self, value, position, state):
        """Logits (B, K) at ``position`` (int or 0-dim int64 tensor); cost O(layers * hidden^2).

        State: (image rows (B, C, 4, W + 6), scaled values with 3 columns of zero padding
        each side, the current row last; then the variant's layer caches).
        """
        image, *layer_state = state
        channels, _, width = self.event_shape
        per_row = width * channels
        pos = torch.as_tensor(position, dtype=torch.int64, device=image.device)
        col, ch = (pos // channels) % width, pos % channels
        image, new_row = advance_rows(image, self.scale(value), pos)
        # Input layer at the current pixel: the 4 x 7 window of kept rows around column col.
        window = image.index_select(3, col + torch.arange(INPUT_KERNEL, device=image.device))
        weight = self.input_conv.masked_weight()[:, :, :ROWS_KEPT]
        x = F.conv2d(window, weight, self.input_conv.bias).flatten(1)
        x, layer_state = self.step_layers(x, pos // per_row, col, new_row, tuple(layer_state))
        logits = self.head(x[:, :, None, None]).reshape(x.shape[0], channels, self.num_categories)
        return take(logits, 1, ch), (image, *layer_state)

    def step_layers(self, x, row, col, new_row, layer_state):
        """Run the current pixel's input features x (B, hidden) through the layers.

        ``row``, ``col``: 0-dim int64; ``new_row``: 0-dim bool, True at a row's first
        position. Returns the last residual stream (B, hidden) and the new layer caches.
        """
        raise NotImplementedError
