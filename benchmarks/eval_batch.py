"""The evaluation batch on this device: log_prob images/s of every trained built-in model against the batch size.

The evidence behind ``EVAL_BATCH`` in ``densreg.app.performance`` (the batch ``densreg eval``,
validation during training and ``benchmarks/speed.py`` use). For each model (the sizes of
``benchmarks/speed.py``) and each batch size, the same ``--images`` images are scored under
no_grad in batches of that size; the batch sizes are interleaved, each measurement repeated
``--reps`` times, medians. Images/s are given per second of this process's CPU time (what
other jobs on a shared machine skew least) and per second of wall time. One torch thread on
CPU. The load average is printed before and after.

    python benchmarks/eval_batch.py [--device cpu|cuda] [--batches 25,50,100,200,500] [--data NPZ] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import MNIST_DENSITY, MODELS, load_average, sync  # noqa: E402

from densreg.app.performance import eval_batch_size  # noqa: E402
from densreg.registry import create_model, load_split  # noqa: E402
from densreg.registry.atomic import atomic_write_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ("nade", "pixelrnn", "row-lstm", "diagonal-bilstm")


def score_all(model, images: torch.Tensor, batch: int, device) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to score every image in batches of ``batch``."""
    sync(device)
    cpu, wall = time.process_time(), time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model.log_prob(images[i:i + batch])
    sync(device)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(name: str, images: torch.Tensor, batches: list[int], reps: int, device):
    """(batch size -> (images per CPU second, images per wall second), medians of ``reps`` interleaved runs;
    densreg's evaluation batch for the model on ``device``)."""
    torch.manual_seed(0)
    model = create_model(name, images.shape[1:], 2, **MODELS[name][0]).to(device).eval()
    score_all(model, images[:max(batches)], max(batches), device)  # warm-up
    times: dict[int, list[tuple[float, float]]] = {b: [] for b in batches}
    for _ in range(reps):
        for b in batches:
            times[b].append(score_all(model, images, b, device))
    n = len(images)
    rates = {b: (n / statistics.median(t[0] for t in ts), n / statistics.median(t[1] for t in ts))
             for b, ts in times.items()}
    return rates, eval_batch_size(device, model)


def markdown(results, args, loads, seconds) -> str:
    batches = args.batch_sizes
    lines = ["# Evaluation batch: log_prob images/s against the batch size", "",
             f"Written by `python benchmarks/eval_batch.py {' '.join(args.argv)}` on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; device {args.device}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} torch thread(s); {seconds:.0f} s in all.",
             f"Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]}.", "",
             f"{args.images} images ({args.images_note}), scored under no_grad in batches of each size; "
             f"median of {args.reps} interleaved repetitions. Images per second of CPU time (wall time in "
             f"brackets); **bold**: the fastest batch by CPU time. densreg's evaluation batch on {args.device} "
             f"(`performance.eval_batch_size`): "
             + ", ".join(f"{name} {default}" for name, (_, default) in results.items()) + ".", "",
             "| model | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for name, (rates, _) in results.items():
        best = max(batches, key=lambda b: rates[b][0])
        cells = [(f"**{rates[b][0]:,.0f}**" if b == best else f"{rates[b][0]:,.0f}") + f" ({rates[b][1]:,.0f})"
                 for b in batches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", default=",".join(TRAINED), help="comma-separated subset")
    parser.add_argument("--batches", default="25,50,100,200,500", help="comma-separated batch sizes")
    parser.add_argument("--images", type=int, default=500, help="images scored per measurement")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--data", default=None, help="binarized-MNIST .npz (or .amat folder): its test images "
                                                     "instead of random ones with 13%% of pixels on (its mean)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_batch.md"))
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    names = args.models.split(",")
    if set(names) - set(TRAINED):
        parser.error(f"unknown models {sorted(set(names) - set(TRAINED))}; choose from {', '.join(TRAINED)}")
    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if min(args.batch_sizes) < 1 or args.images < 1 or args.reps < 1:
        parser.error("batch sizes, --images and --reps must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    torch.set_num_threads(1)
    if args.data:
        images = load_split("binarized-mnist", "test", data=args.data)[:args.images]
        args.images_note = "binarized-MNIST test images"
    else:
        generator = torch.Generator().manual_seed(0)
        images = (torch.rand(args.images, 1, 28, 28, generator=generator) < MNIST_DENSITY).long()
        args.images_note = f"random 28x28, pixels on with probability {MNIST_DENSITY}"
    args.images = len(images)
    images = images.to(args.device)
    start, loads = time.perf_counter(), [load_average()]
    print(f"load average: {loads[0]}", flush=True)
    results = {}
    for name in names:
        results[name] = measure(name, images, args.batch_sizes, args.reps, args.device)
        print(f"{name:16s} " + "  ".join(f"b{b}: {cpu:,.0f}/s ({wall:,.0f})"
                                         for b, (cpu, wall) in results[name][0].items()), flush=True)
    loads.append(load_average())
    print(f"load average: {loads[1]}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, markdown(results, args, loads, time.perf_counter() - start).encode())
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
