"""Shared fixtures. Helpers (every image of a tiny space, random parameters) come from the
package: ``densreg.registry.conformance.all_images`` and ``randomize``."""

from __future__ import annotations

from pathlib import Path

import pytest

MNIST_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binarized_mnist.npz"


@pytest.fixture
def mnist_npz() -> Path:
    if not MNIST_NPZ.is_file():
        pytest.skip(f"{MNIST_NPZ} not present (CI has ../shared beside the clone)")
    return MNIST_NPZ
