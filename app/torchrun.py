"""`densreg train --nproc N`: torchrun started, and watched, by densreg.

Before launching, the device and backend asked for must exist here (CUDA for ``--device cuda``
or ``--backend nccl``, one GPU per process), so a missing GPU is one line instead of torchrun's
40-line ChildFailedError. While it runs, the workers' output passes through; when a worker fails,
torchrun's own log lines and traceback are replaced by one line that names the rank, how it
ended, and whether the run's last finished epoch is on disk for ``--resume``. ``--debug`` (or
DENSREG_DEBUG=1) passes everything through instead.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from densreg.registry import ConfigError, DensregError

from .launcher import BACKEND_ENV

# torch.distributed.elastic's log lines, and torchrun's OMP_NUM_THREADS banner (between lines of stars)
AGENT_LOG = re.compile(r"^(\[?[IWEF]\d{4} \d\d:\d\d:\d\d|\*+$|\s*$|Setting OMP_NUM_THREADS environment variable)")


class WorkerFailed(DensregError):
    """A torchrun worker failed; the message says which and what is on disk."""


def check_launch(device: str | None, backend: str | None, nproc: int) -> None:
    """ConfigError, before anything starts, when ``nproc`` processes cannot run on ``device`` with ``backend``
    here (None: the defaults, cuda if available and the backend of the device)."""
    import torch

    backend = backend or os.environ.get(BACKEND_ENV)
    cuda = torch.cuda.is_available()
    wants_cuda = str(device).startswith("cuda") if device is not None else cuda
    if (wants_cuda or backend == "nccl") and not cuda:
        what = f"--device {device}" if wants_cuda else "--backend nccl"
        raise ConfigError(f"{what} needs CUDA, which this machine does not have (torch.cuda.is_available() is "
                          "False); train on --device cpu with the gloo backend")
    if backend == "nccl" and not wants_cuda:
        raise ConfigError(f"--backend nccl runs on CUDA devices only, and this run is on --device {device}; "
                          "leave --backend out (gloo for cpu) or give --device cuda")
    if wants_cuda and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} on CUDA needs {nproc} GPUs (one per process); this machine has "
                          f"{torch.cuda.device_count()}")


def run_torchrun(command: list[str], state: Path | None, debug: bool = False) -> None:
    """Run ``command`` (torchrun); return when it succeeds, else raise WorkerFailed (one line). ``state``:
    the run's resume state, which the message says is (or is not) there to continue from."""
    start = time.time()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace")
    errors, agent, in_traceback = [], [], False
    for line in proc.stderr:
        if debug:
            sys.stderr.write(line)
            agent.append(line)
        elif in_traceback or AGENT_LOG.match(line) or line.startswith("Traceback (most recent call last)"):
            in_traceback = in_traceback or line.startswith("Traceback")
            agent.append(line)
        elif line.startswith("Error: "):  # a worker's one line: said once, below
            errors.append(line[len("Error: "):].strip())
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    if proc.wait() != 0:
        raise WorkerFailed(failure_message("".join(agent), errors, state, start))


def failure_message(agent: str, errors: list[str], state: Path | None, start: float) -> str:
    """One line from torchrun's report (``agent``), the workers' error lines and the run's resume state."""
    ranks = re.findall(r"rank\s*:\s*(\d+)", agent)
    rank = f"rank {ranks[0]}" if ranks else "a training process"
    if errors:
        return f"{rank}: {errors[0]}"
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", agent)
    code = int(codes[0]) if codes else None
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"ended with exit code {code}" if code is not None else "failed"
    if state is not None and state.is_file() and state.stat().st_mtime >= start:
        kept = f"the last finished epoch is on disk in {state}: add --resume to the same command to continue"
    elif state is not None:
        kept = "no epoch had finished, so nothing was written"
    else:
        kept = "nothing is kept (no --out)"
    return f"{rank} {how}; {kept}"
