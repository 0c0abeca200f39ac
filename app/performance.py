"""Speed settings chosen per device and model kind: threads, batch sizes, precision, compilation.

The thread defaults were measured on the project's 2-core CPU, quiet, with ``benchmarks/speed.py``
(its "threads" table in ``benchmarks/results/speed.md``): training and evaluation of every
built-in model ran faster on both cores (1.1x to 1.8x), while sampling, thousands of small
steps, was as fast or faster on one thread for every kind but diagonal-bilstm. (On a machine
shared with other jobs one thread wins everywhere: set ``--threads 1`` or OMP_NUM_THREADS=1.)
On CUDA the thread count hardly matters.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from densreg.registry import ConfigError

# Torch threads for sampling per model kind (registry name), measured with `benchmarks/speed.py`
# (threads table); kinds not listed, and training and evaluation of every kind, use every core.
SAMPLING_THREADS = {"bernoulli": 1, "markov": 1, "nade": 1, "pixelrnn": 1, "row-lstm": 1}
TASKS = ("compute", "sample")
# Evaluation batch per device type: on CPU the cache decides, on a GPU larger batches fill the device.
# Measured with `benchmarks/eval_batch.py` (benchmarks/results/eval_batch.md, binarized-MNIST test
# images, 1 thread, CPU time): on CPU row-lstm and diagonal-bilstm score fastest at 100 (1.2x and 1.6x
# the images/s of batch 500), nade within a few percent of its best from 50 to 200; the plain pixelrnn
# at 25 (1.4x batch 100: its nn.LSTM's input products, (B, D, 4h), leave the cache).
EVAL_BATCH = {"cpu": 100, "cuda": 1024}
CPU_EVAL_BATCH_BY_KIND = {"pixelrnn": 25}  # registry name -> the CPU batch where it differs
PRECISIONS = ("float32", "bf16")

_requested_threads: int | None = None  # set by --threads (CLI) or set_threads (Python)


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """Ask for ``threads`` torch threads in every later fit/evaluate/sample (None: the measured default)."""
    global _requested_threads
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    _requested_threads = threads


def threads_for(model, threads: int | None = None, task: str = "compute") -> int:
    """Threads to use for ``model``: ``threads``, else the one asked for by set_threads, else
    $OMP_NUM_THREADS (a positive integer), else the measured default of the model's kind for
    ``task`` ("compute": training and evaluation; "sample"), capped at the cores available."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    chosen = threads if threads is not None else _requested_threads
    if chosen is not None:
        return int(chosen)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    default = SAMPLING_THREADS.get(getattr(model, "registry_name", None)) if task == "sample" else None
    return min(default or cpu_cores(), cpu_cores())


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch threads (None: the current count), then restore the count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def using_threads(model, threads: int | None = None, task: str = "compute"):
    """Run the block with ``threads_for(model, threads, task)`` torch threads, then restore the count."""
    return torch_threads(threads_for(model, threads, task))


def eval_batch_size(device, model=None) -> int:
    """Images per evaluation pass on ``device`` (a torch.device or a name) for ``model``'s kind (None: any)."""
    kind = torch.device(device).type
    if kind == "cpu" and getattr(model, "registry_name", None) in CPU_EVAL_BATCH_BY_KIND:
        return CPU_EVAL_BATCH_BY_KIND[model.registry_name]
    return EVAL_BATCH.get(kind, EVAL_BATCH["cuda"])


def check_precision(precision: str, device) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast(precision: str, device):
    """A context in which the forward pass runs in ``precision`` (bf16: torch.autocast; float32: nothing)."""
    check_precision(precision, device)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def recurrent(model) -> bool:
    """True for the recurrent PixelRNN models, whose many small kernels a CUDA graph replays cheaply."""
    return getattr(model, "registry_name", "") in ("row-lstm", "diagonal-bilstm", "pixelrnn")


def compiled_log_prob(model, device, log_prob=None):
    """``torch.compile`` of ``log_prob`` (default ``model.log_prob``): mode "reduce-overhead" (CUDA
    graphs) for the recurrent models on CUDA, the default mode otherwise. Compiles on the first call,
    for that call's batch shape only (``FirstShapeCompiled``)."""
    log_prob = log_prob or model.log_prob
    mode = "reduce-overhead" if torch.device(device).type == "cuda" and recurrent(model) else None
    return FirstShapeCompiled(torch.compile(log_prob, mode=mode, dynamic=False), log_prob)


class FirstShapeCompiled:
    """Runs ``compiled`` on batches shaped like the first one it is called with and ``eager`` on any
    other: an epoch's last, smaller batch would otherwise compile a second graph, to be used once per
    epoch (the first graph of a Diagonal BiLSTM training step takes 4 minutes on CPU,
    benchmarks/results/compile.md)."""

    def __init__(self, compiled, eager) -> None:
        self.compiled, self.eager, self.shape = compiled, eager, None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.shape is None:
            self.shape = images.shape
        return (self.compiled if images.shape == self.shape else self.eager)(images)


class CompileTimer:
    """Measures how long the first call of a compiled function takes (compilation plus one run)."""

    def __init__(self, fn) -> None:
        self.fn, self.seconds = fn, None

    def __call__(self, *args, **kwargs):
        if self.seconds is not None:
            return self.fn(*args, **kwargs)
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.seconds = time.perf_counter() - start
        return out
