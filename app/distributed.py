"""Several processes, one job: PyTorch's own engine (torchrun, process groups, DDP).

torchrun starts one worker per process with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in its environment. ``session`` joins that process group (gloo for CPU
devices, NCCL for CUDA; ``--backend`` or ``$DENSREG_BACKEND`` overrides); everything else
reads the group it finds (``world()``), so ``fit`` and the commands run unchanged, as one
process, when nothing was launched. Rank 0 is the leader: the one process that writes files
and prints. Work is split by rank: training by DistributedDataParallel over disjoint parts of
every global batch (``split_batch``), scoring by contiguous shards gathered back in the input
order (``map_shards``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from densreg.registry import CheckpointError, ConfigError

from .launcher import BACKEND_ENV, BACKENDS, launched  # noqa: F401 - torch-free, re-exported



@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` in 0..size-1 (size 1, rank 0 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank among this machine's processes (picks the GPU)

    @property
    def leader(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def world() -> World:
    """The process group this process has joined, or a world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def choose_backend(device: torch.device, backend: str | None = None) -> str:
    """``backend``, else ``$DENSREG_BACKEND``, else NCCL for a CUDA device and gloo otherwise."""
    chosen = backend or os.environ.get(BACKEND_ENV) or ("nccl" if device.type == "cuda" else "gloo")
    if chosen not in BACKENDS:
        raise ConfigError(f"unknown distributed backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
    return chosen


def rank_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """The device of this rank: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``; ConfigError for a device
    this machine does not have (``training_options.usable_device``)."""
    from .training_options import usable_device

    device = usable_device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"process {local_rank} of this machine needs cuda:{local_rank}, but it has {count} "
                          "GPU(s); start at most that many processes per machine (--nproc-per-node)")
    return torch.device("cuda", local_rank)


@contextmanager
def session(device: str | None = None, backend: str | None = None) -> Iterator[World]:
    """Join torchrun's process group for the ``with`` block (nothing when not launched by it).

    ``device``: the torch device the command computes on (None: cpu), which picks the
    backend. The group is left when the block ends normally.
    """
    if not launched() or dist.is_initialized():
        yield world()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = rank_device(device or "cpu", local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group(choose_backend(target, backend))
    yield world()
    dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(*values: float) -> list[float]:
    """Each value summed over every rank (float64); the values themselves in a world of one."""
    if world().size == 1:
        return [float(v) for v in values]
    total = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total)
    return total.tolist()


def leader_decides(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (decisions that hang on a clock must agree)."""
    if world().size == 1:
        return bool(flag)
    value = torch.tensor([int(flag)], device=_comm_device())
    dist.broadcast(value, 0)
    return bool(value.item())


def _broadcast_bytes(data: bytes | None, missing: int) -> bytes | int:
    """Rank 0's bytes on every rank, or its status code ``missing`` (< 0) when it has none."""
    size = torch.tensor([len(data) if data is not None else missing], dtype=torch.int64, device=_comm_device())
    dist.broadcast(size, 0)
    if size.item() <= 0:
        return int(size.item()) if size.item() < 0 else b""
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data is not None \
        else torch.empty(int(size.item()), dtype=torch.uint8)
    buffer = buffer.to(_comm_device())
    dist.broadcast(buffer, 0)
    return data if data is not None else buffer.cpu().numpy().tobytes()


@contextmanager
def leader_file(path: Path) -> Iterator[Path]:
    """A readable copy of rank 0's file ``path`` on every rank (rank 0 gets ``path`` itself).

    Other ranks receive the bytes through the process group and read a private temporary
    copy, so several machines need no shared folder. Raises CheckpointError on every rank
    when rank 0 has no such file.
    """
    path = Path(path)
    if world().size == 1:
        yield path
        return
    absent, unreadable = -1, -2
    if world().leader:
        data, code = None, absent
        try:
            data = path.read_bytes() if path.is_file() else None
        except OSError:
            code = unreadable
        _broadcast_bytes(data, code)
        yield path
        return
    received = _broadcast_bytes(None, absent)
    if received == absent:
        yield path  # the reader raises its own "no such file" error, as rank 0 does
        return
    if received == unreadable:
        raise CheckpointError(f"rank 0 could not read {path}")
    with tempfile.TemporaryDirectory(prefix="densreg-rank-") as folder:
        copy = Path(folder) / path.name
        copy.write_bytes(received)
        yield copy


def shard(count: int, where: World | None = None) -> slice:
    """This rank's contiguous part of ``count`` items (sizes differ by at most one)."""
    where = where or world()
    return slice(where.rank * count // where.size, (where.rank + 1) * count // where.size)


def split_batch(batch: torch.Tensor, where: World | None = None) -> torch.Tensor:
    """This rank's part of a global batch of indices: every ``size``-th one from ``rank``.

    The parts are disjoint and together are the whole batch, so the global batch size is
    the batch's length whatever the number of processes.
    """
    where = where or world()
    return batch[where.rank::where.size]


def gather_in_order(part: torch.Tensor, count: int) -> torch.Tensor:
    """Every rank's ``part`` (its ``shard(count)`` of per-item results, (n, ...)) joined in rank order.

    Returns the (count, ...) results on every rank, in the order of the items.
    """
    here = world()
    if here.size == 1:
        return part
    sizes = [shard(count, World(r, here.size)).stop - shard(count, World(r, here.size)).start
             for r in range(here.size)]
    padded = torch.zeros((max(sizes), *part.shape[1:]), dtype=part.dtype, device=_comm_device())
    padded[:len(part)] = part.to(padded.device)
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)]).to(part.device)


def map_shards(score: Callable[[torch.Tensor], torch.Tensor], items: torch.Tensor) -> torch.Tensor:
    """``score(items)`` computed across ranks: each scores its ``shard``; all get the results in input order.

    ``score`` maps (n, ...) items to per-item results (n, ...) on the CPU; every rank must call this.
    """
    return gather_in_order(score(items[shard(len(items))]), len(items))


class _LogProb(torch.nn.Module):
    """``model.log_prob`` as a module's forward, which is what DistributedDataParallel wraps."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.log_prob(x)


def log_prob_function(model: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.log_prob`` (images (B, C, H, W) -> nats (B,)), through DDP when in a process group.

    DDP broadcasts rank 0's weights now and averages the gradients of every backward
    pass over the ranks.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return model.log_prob
    ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(_LogProb(model), device_ids=ids)


@contextmanager
def leader_first() -> Iterator[None]:
    """Rank 0 runs the block before the others (e.g. a download into a shared cache)."""
    here = world()
    if here.size > 1 and not here.leader:
        dist.barrier()
    yield
    if here.size > 1 and here.leader:
        dist.barrier()


def torchrun_command(nproc: int, arguments: list[str]) -> list[str]:
    """The torchrun command line that runs ``densreg ARGUMENTS`` as ``nproc`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "-m", "densreg", *arguments]


def without_option(arguments: list[str], name: str) -> list[str]:
    """``arguments`` less the option ``name`` and its value (``--name V`` or ``--name=V``)."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == name:
            skip = True
        elif not argument.startswith(name + "="):
            kept.append(argument)
    return kept
