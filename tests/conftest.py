"""Shared fixtures: the shared MNIST file, exhaustive enumeration of tiny image spaces."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

MNIST_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binarized_mnist.npz"


def all_images(event_shape, num_categories: int) -> torch.Tensor:
    """Every image of a tiny space: int64 (K^D, C, H, W)."""
    d = math.prod(event_shape)
    values = list(itertools.product(range(num_categories), repeat=d))
    return torch.tensor(values, dtype=torch.int64).reshape(-1, *event_shape)


@pytest.fixture
def mnist_npz() -> Path:
    if not MNIST_NPZ.is_file():
        pytest.skip(f"{MNIST_NPZ} not present (CI has ../shared beside the clone)")
    return MNIST_NPZ


def randomize_(model, seed: int = 0) -> None:
    """Fill float parameters and buffers with random values (tables renormalised by log_softmax)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
