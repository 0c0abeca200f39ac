"""What a launcher (torchrun) tells this process, read without importing torch: whether it
started it, and the process-group backends ``--backend`` accepts (``distributed`` uses them)."""

from __future__ import annotations

import os

BACKEND_ENV = "DENSREG_BACKEND"
BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")


def launched() -> bool:
    """Whether torchrun (or another env:// launcher) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ
