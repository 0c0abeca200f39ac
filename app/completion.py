"""Completion: exact samples of the unseen rest of an image given its first values.

The first ``keep`` values in the model's generation order are kept (raster order: the top
rows, then the left part of the next row); the rest is drawn exactly from
p(x_rest | x_kept) by ancestral sampling with the model's cached ``step``, teacher-forcing
the kept values. Works on a torch model and on an ExportedModel (``step.onnx``; no torch).
Given the same uniform noise (n, D) a checkpoint and its export draw the same completions,
and ``keep = 0`` draws what ``model.sample(noise=...)`` draws.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from tqdm import tqdm

from densreg.registry.datasets import levels_to_8bit
from densreg.registry.errors import ConfigError
from densreg.registry.limits import check_memory

from .images import image_grid
from .scoring import is_export

MASK_COLOUR = (70, 110, 200)  # the unseen part in the grid's "kept" column


def keep_for_rows(rows: int, model) -> int:
    """``--keep-rows R`` -> the number of values kept: R whole rows (R * C * W), raster order only."""
    channels, height, width = model.event_shape
    if not 0 <= rows <= height:
        raise ConfigError(f"--keep-rows must lie in 0..{height} (the image height), got {rows}")
    if not np.array_equal(np.asarray(order_of(model)), np.arange(model.num_positions)):
        raise ConfigError("--keep-rows needs a model in raster order; this one generates in another order, so "
                          "give the number of values with --keep")
    return rows * channels * width


def order_of(model) -> np.ndarray:
    """The model's generation order (D,) as numpy."""
    order = model.order
    return order if isinstance(order, np.ndarray) else order.cpu().numpy()


def complete(model, images, keep: int, samples: int = 4, seed: int | None = 0, noise=None,
             progress: bool = False) -> np.ndarray:
    """Completions of int64 images (M, C, H, W) -> int64 (M, samples, C, H, W).

    ``keep``: how many values of each image (the first in generation order) are kept. ``noise``:
    uniform in [0, 1), (M * samples, D), row ``i * samples + j`` for completion j of image i;
    by default ``numpy.random.default_rng(seed)``.
    """
    images = np.asarray(images)
    count, positions = len(images), model.num_positions
    if not 0 <= keep <= positions:
        raise ConfigError(f"keep must lie in 0..{positions} (the values per image), got {keep}")
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}")
    # kept values, noise, drawn values and their reordering (8 bytes each), and the step's work per value
    check_memory(count * samples * positions * 48, f"{samples} completions of each of {count} images of "
                 f"{positions} values", "lower -n (completions per image) or --limit")
    images = model.validate(images)
    images = images if isinstance(images, np.ndarray) else images.cpu().numpy()
    order = order_of(model)
    rows = count * samples
    kept = np.repeat(images.reshape(count, -1)[:, order], samples, axis=0)  # (rows, D), generation order
    noise = np.random.default_rng(seed).random((rows, positions)) if noise is None else np.asarray(noise, np.float64)
    if noise.shape != (rows, positions):
        raise ConfigError(f"noise must have shape ({rows}, {positions}), got {noise.shape}")
    stepper = _ExportSteps(model) if is_export(model) else _TorchSteps(model)
    state = stepper.initial_state(rows)
    value = np.zeros(rows, dtype=np.int64)
    values = np.empty((rows, positions), dtype=np.int64)
    for d in tqdm(range(positions), desc="completing", unit="value", disable=not progress, leave=False):
        logits, state = stepper.step(value, d, state)
        value = kept[:, d] if d < keep else model.family.draw_numpy((logits,), noise[:, d])
        values[:, d] = value
    flat = np.empty_like(values)
    flat[:, order] = values
    return flat.reshape(count, samples, *model.event_shape)


class _ExportSteps:
    def __init__(self, model) -> None:
        self.model = model

    def initial_state(self, n):
        return self.model.initial_state(n)

    def step(self, value, position, state):
        return self.model.step(value, position, state)


class _TorchSteps:
    """The torch model's cached step with numpy values in and float64 logits out."""

    def __init__(self, model) -> None:
        import torch

        self.torch, self.model = torch, model.eval()
        self.device = model.order.device

    def initial_state(self, n):
        return self.model.initial_state(n)

    def step(self, value, position, state):
        with self.torch.no_grad():
            logits, state = self.model.step(self.torch.from_numpy(value).to(self.device), position, state)
        return logits.double().cpu().numpy(), state


def kept_part(images: np.ndarray, keep: int, order: np.ndarray) -> np.ndarray:
    """Boolean (M, C, H, W): True where the value is among the first ``keep`` in ``order``."""
    mask = np.zeros(images.shape[1:], dtype=bool).reshape(-1)
    mask[order[:keep]] = True
    return np.broadcast_to(mask.reshape(images.shape[1:]), images.shape)


def completion_grid(images: np.ndarray, completions: np.ndarray, keep: int, order: np.ndarray,
                    num_categories: int) -> Image.Image:
    """One row per image: the original, its kept part (unseen values in blue), then its completions."""
    images, completions = np.asarray(images), np.asarray(completions)
    count, samples = completions.shape[:2]
    grey = lambda x: np.repeat(x, 3 // x.shape[1], axis=1) if x.shape[1] == 1 else x  # noqa: E731
    original = grey(levels_to_8bit(images, num_categories))
    kept = original.copy()
    unseen = ~kept_part(images, keep, order).any(axis=1)  # (M, H, W): a pixel with any unseen channel
    for channel, colour in enumerate(MASK_COLOUR):
        kept[:, channel][unseen] = colour
    filled = grey(levels_to_8bit(completions.reshape(count * samples, *completions.shape[2:]), num_categories))
    filled = filled.reshape(count, samples, *filled.shape[1:])
    cells = np.concatenate([original[:, None], kept[:, None], filled], axis=1)
    return image_grid(cells.reshape(-1, *cells.shape[2:]), 256, nrow=samples + 2, min_cell=56)
