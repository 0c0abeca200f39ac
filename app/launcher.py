"""What a launcher (torchrun) tells this process, read without importing torch: whether it
started it, and the process-group backends ``--backend`` accepts (``distributed`` uses them)."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

BACKEND_ENV = "DENSREG_BACKEND"
BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")


def launched() -> bool:
    """Whether torchrun (or another env:// launcher) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def run_then_exit(command: Callable[[], object]) -> NoReturn:
    """Run a launched process's ``command``, flush its output and end the process with its exit
    code, skipping interpreter shutdown. Gloo's worker threads may still be releasing the last
    collective's tensors when the command returns; released during shutdown they abort the
    process ("terminate called without an active exception": 1 eval in 10-15 under torchrun on
    the loaded 2-core machine), and torchrun reports the finished job as failed."""
    try:
        command()
        code = 0
    except SystemExit as exc:  # click ends every command this way
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
