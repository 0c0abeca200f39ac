"""Training speed with 1 and 2 processes (torchrun, DistributedDataParallel) on this machine.

    python benchmarks/distributed.py [--nproc 1 2] [--model nade] [--set hidden=500] [--images 600]
                                     [--epochs 2] [--batch-size 100] [--backend gloo] [--device cpu]
                                     [--data binarized_mnist.npz] [--out benchmarks/results/distributed.md]
    python benchmarks/distributed.py --backend nccl --device cuda --images 20000 \\
                                     --out benchmarks/results/distributed_gpu.md     # on a GPU machine

Each configuration trains MODEL with ``densreg.fit`` on the first --images binarized-MNIST
training images (the 8x8 digits' train split, repeated, when the file is absent) for --epochs
epochs with global batch --batch-size: once in this process without torchrun ("plain"), then under
``torchrun --standalone --nproc-per-node N`` for each N, this script being the worker.
Reported: training images/s of the last epoch (the first warms up), from the run's log
(``images_per_s``: all processes together, validation excluded). On the CPU the cores are
shared out: N processes get cores/N threads each; the plain run is timed with every thread
and with one (the per-core baseline). With NCCL every process needs its own GPU,
so N above the GPU count is skipped. Writes a markdown table to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MNIST_CANDIDATES = [base / "shared" / "data" / "binarized_mnist.npz" for base in (ROOT.parent, ROOT.parents[1])]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to time")
    parser.add_argument("--model", default="nade")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--images", type=int, default=600, help="training images (first of the split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100, help="global batch")
    parser.add_argument("--backend", default=None, help="default: nccl for cuda, else gloo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=None, help="binarized_mnist.npz (default: ../shared)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed.md")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # where rank 0 writes
    return parser.parse_args(argv)


def mnist_path(args) -> Path | None:
    return args.data or next((p for p in MNIST_CANDIDATES if p.is_file()), None)


def training_images(args) -> tuple[torch.Tensor, str]:
    from densreg.registry import load_split

    path = mnist_path(args)
    if path is not None:
        with np.load(path) as data:
            train = torch.from_numpy(data["train"][:args.images].astype(np.int64)).unsqueeze(1)
        return train, f"binarized MNIST ({path.name})"
    digits = load_split("digits", "train")
    copies = -(-args.images // len(digits))  # repeated to --images: the file is not always at hand (a GPU box)
    return digits.repeat(copies, 1, 1, 1)[:args.images], f"the 8x8 digits (train split repeated {copies}x)"


def settings(args) -> dict:
    from densreg.app.cli.common import parse_set_options

    return parse_set_options(args.settings or ["hidden=500"] if args.model == "nade" else args.settings)


def train_once(args) -> dict:
    """Train under whatever process group this process is in; the last epoch's log entry and facts."""
    from densreg.app import distributed
    from densreg.app.training import fit
    from densreg.registry import create_model

    train, source = training_images(args)
    torch.manual_seed(0)
    model = create_model(args.model, tuple(train.shape[1:]), 2, **settings(args))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run.safetensors"
        fit(model, train, None, epochs=args.epochs, batch_size=args.batch_size, device=args.device, out=out,
            name=args.model)
        if not distributed.world().leader:  # rank 0 alone writes the log
            return {}
        log = [json.loads(line) for line in out.with_name("run.log.jsonl").read_text().splitlines()]
    return {**log[-1], "source": source, "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters())}


def worker(args) -> None:
    from densreg.app import distributed

    with distributed.session(args.device, args.backend) as world:
        result = train_once(args)
        if world.leader:
            args.worker.write_text(json.dumps(result))


def launch(args, nproc: int) -> dict:
    """One torchrun job of ``nproc`` processes running this script as the worker."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc-per-node", str(nproc), __file__, *forwarded_options(args), "--worker", str(result)]
        env = dict(os.environ)
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        return {**json.loads(result.read_text()), "wall_s": time.perf_counter() - start}


def forwarded_options(args) -> list[str]:
    """The options a worker needs, as command-line arguments."""
    forwarded = ["--model", args.model, "--images", str(args.images), "--epochs", str(args.epochs),
                 "--batch-size", str(args.batch_size), "--device", args.device]
    for item in args.settings:
        forwarded += ["--set", item]
    if args.backend:
        forwarded += ["--backend", args.backend]
    if args.data:
        forwarded += ["--data", str(args.data)]
    return forwarded


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def table(args, rows: list[tuple[str, dict | str]], backend: str) -> str:
    first = next(r for _, r in rows if isinstance(r, dict))
    lines = [
        "# Training speed with several processes (torchrun, DistributedDataParallel)",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores"
        f"{', ' + torch.cuda.get_device_name() if args.device.startswith('cuda') else ''}; "
        f"load average {os.getloadavg()[0]:.1f} at the end; torch {torch.__version__}; backend {backend}.",
        "",
        f"Command: `{' '.join(['python benchmarks/distributed.py', *sys.argv[1:]])}`",
        "",
        f"{args.model} ({first['parameters']:,} parameters, {' '.join(args.settings) or 'hidden=500'}) on the first "
        f"{args.images} images of {first['source']}, device {args.device}, global batch {args.batch_size}, "
        f"{args.epochs} epochs; images/s of the last epoch (training only, all processes together). "
        "Rows were measured one after the other in one run of this script; compare them as ratios.",
        "",
        "| processes | threads each | images/s | vs plain | train NLL (last epoch, nats) | job wall time |",
        "|---|---|---|---|---|---|",
    ]
    plain = rows[0][1]["images_per_s"]  # one process with every thread
    for label, row in rows:
        if isinstance(row, str):
            lines.append(f"| {label} | | skipped: {row} | | | |")
            continue
        lines.append(f"| {label} | {row['threads']} | {row['images_per_s']:.0f} | {row['images_per_s'] / plain:.2f}x "
                     f"| {row['train_nll']:.3f} | {row.get('wall_s', 0):.1f} s |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    from densreg.app import distributed

    backend = distributed.choose_backend(torch.device(args.device), args.backend)
    all_threads = torch.get_num_threads()
    rows: list[tuple[str, dict | str]] = []
    for threads in [all_threads, 1] if args.device == "cpu" and all_threads > 1 else [all_threads]:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        rows.append(("1, plain (no torchrun)", {**train_once(args), "wall_s": time.perf_counter() - start}))
    torch.set_num_threads(all_threads)
    for nproc in args.nproc:
        if backend == "nccl" and nproc > torch.cuda.device_count():
            rows.append((f"{nproc}, torchrun", f"NCCL needs a GPU per process; {torch.cuda.device_count()} here"))
            continue
        rows.append((f"{nproc}, torchrun", launch(args, nproc)))
        print(f"{nproc} process(es): {rows[-1][1]['images_per_s']:.0f} images/s", file=sys.stderr)
    text = table(args, rows, backend)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
