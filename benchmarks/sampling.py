"""Sampling and log_prob speed: onnxruntime (the export) vs torch, per registered model.

    python benchmarks/sampling.py [--models nade,markov] [--batch 64]
                                  [--checkpoint nade=nade.safetensors] [--out benchmarks/results/sampling.md]

For each model at 1x28x28 (random weights, or trained ones with --checkpoint):
  * ORT sampling: the step.onnx loop of densreg.export.runtime (batch --batch), and the
    whole loop in one call of sample.onnx (an ONNX Loop; ``sample(..., engine="graph")``);
  * torch sampling: DensityModel.sample with the model's cached ``step``;
  * naive torch sampling: the full conditional network re-run for every pixel
    (``recompute_step``); when that would take long, a prefix of pixels is timed and
    the time extrapolated linearly (each naive step costs the same), marked "~";
  * log_prob throughput on the 10000 binarized-MNIST test images (random images if
    the file is absent), ORT vs torch, batches of 500; a slow model is scored for
    about LOGPROB_BUDGET_S per engine and its images/s taken from the batches done.
Sampling runs with 1 thread and with all cores for each engine, and the faster is
reported (with its thread count): on a shared machine extra threads can slow tiny ops
down a lot. The log_prob pass gives both engines --logprob-threads threads.
Same uniform noise for every sampler. Writes a markdown table to --out.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from densreg.export import export_model
from densreg.export.runtime import ExportedModel
from densreg.registry import DensityModel, categorical_from_uniform, create_model, list_models, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the clone (CI), or beside the folder of worktrees
MNIST_CANDIDATES = [base / "shared" / "data" / "binarized_mnist.npz" for base in (ROOT.parent, ROOT.parents[1])]
SHAPE = (1, 28, 28)
NAIVE_BUDGET_S = 10.0  # time at most about this much of naive sampling, extrapolate the rest
LOGPROB_BUDGET_S = 30.0  # score at most about this long per engine; images/s from the batches done


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(fn, repeats: int = 2) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def best_over_threads(fn, threads_options, set_threads, repeats=2):
    """(seconds, threads) of the fastest thread setting."""
    results = []
    for t in threads_options:
        set_threads(t)
        results.append((timed(fn, repeats), t))
    return min(results)


@torch.no_grad()
def naive_sampling_seconds(model: DensityModel, noise: torch.Tensor) -> tuple[float, bool]:
    """Seconds for naive sampling of len(noise) images (extrapolated: True if a prefix was timed)."""
    n, D = noise.shape
    state = DensityModel.initial_state(model, n)
    value = torch.zeros(n, dtype=torch.int64)
    start = time.perf_counter()
    for d in range(D):
        logits, state = model.recompute_step(value, d, state)
        value = categorical_from_uniform(logits, noise[:, d])
        elapsed = time.perf_counter() - start
        if elapsed > NAIVE_BUDGET_S and d + 1 < D:
            return elapsed * D / (d + 1), True
    return time.perf_counter() - start, False


def load_test_images(count: int, path: str | None) -> tuple[np.ndarray, str]:
    for candidate in ([Path(path)] if path else MNIST_CANDIDATES):
        if candidate.is_file():
            with np.load(candidate) as data:
                images = data["test"][:count].reshape(-1, *SHAPE).astype(np.int64)
            return images, f"binarized MNIST test images ({candidate.name})"
    rng = np.random.default_rng(0)
    return rng.integers(0, 2, (count, *SHAPE)), "random binary images (binarized_mnist.npz not found)"


def build(name: str, checkpoints: dict[str, str]) -> tuple[DensityModel, str]:
    if name in checkpoints:
        model, _ = load_checkpoint(checkpoints[name])
        return model, f"trained ({Path(checkpoints[name]).name})"
    torch.manual_seed(0)
    return create_model(name, SHAPE, 2).eval(), "random init, default config"


def bench_model(name, checkpoints, batch, images, threads_options, logprob_threads, workdir,
                sampling_only=False) -> dict:
    model, weights = build(name, checkpoints)
    if tuple(model.event_shape) != SHAPE:
        raise SystemExit(f"{name}: the benchmark is for {SHAPE} models, got {model.event_shape}")
    row = {"model": name, "weights": weights, "config": model.config(),
           "parameters": int(model.free_parameters())}
    start = time.perf_counter()
    report = export_model(model, workdir / name, name=name)
    row["export_s"] = time.perf_counter() - start
    row["parity"] = report["max_abs_diff"]
    noise_np = np.random.default_rng(0).random((batch, model.num_positions))
    noise = torch.from_numpy(noise_np)

    sessions = {t: ExportedModel(workdir / name, provider="cpu", threads=t) for t in threads_options}
    current = {}
    row["ort_sample_s"], row["ort_sample_threads"] = best_over_threads(
        lambda: sessions[current["t"]].sample(batch, noise=noise_np), threads_options,
        lambda t: current.update(t=t))
    with torch.no_grad():
        row["torch_sample_s"], row["torch_sample_threads"] = best_over_threads(
            lambda: model.sample(batch, noise=noise), threads_options, torch.set_num_threads)
        same = np.array_equal(model.sample(batch, noise=noise).numpy(), sessions[1].sample(batch, noise=noise_np))
    row["graph_sample_s"], row["graph_sample_threads"] = best_over_threads(
        lambda: sessions[current["t"]].sample(batch, noise=noise_np, engine="graph"), threads_options,
        lambda t: current.update(t=t))
    same = same and np.array_equal(sessions[1].sample(batch, noise=noise_np, engine="graph"),
                                   sessions[1].sample(batch, noise=noise_np))
    row["same_samples"] = same
    if sampling_only:
        return row
    torch.set_num_threads(row["torch_sample_threads"])  # naive sampling: torch's best setting for sampling
    row["naive_s"], row["naive_extrapolated"] = naive_sampling_seconds(model, noise)
    row["naive_threads"] = row["torch_sample_threads"]

    x = torch.from_numpy(images)

    @torch.no_grad()
    def torch_log_prob(batch):
        model.log_prob(batch)
    # log_prob: one pass each over the images, both engines with the same thread count
    torch.set_num_threads(logprob_threads)
    row["torch_logprob_s"], row["torch_logprob_images"] = throughput(torch_log_prob, x)
    row["ort_logprob_s"], row["ort_logprob_images"] = throughput(sessions[logprob_threads].log_prob, images)
    row["torch_logprob_threads"] = row["ort_logprob_threads"] = logprob_threads
    return row


def throughput(fn, images, batch: int = 500) -> tuple[float, int]:
    """(seconds, images scored) for ``fn`` over ``images`` in batches; stops after LOGPROB_BUDGET_S."""
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        fn(images[i:i + batch])
        if time.perf_counter() - start > LOGPROB_BUDGET_S:
            return time.perf_counter() - start, min(i + batch, len(images))
    return time.perf_counter() - start, len(images)


def fmt_s(seconds: float, approx: bool = False) -> str:
    return ("~" if approx else "") + (f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s")


def table(rows, batch, images_label, n_images) -> list[str]:
    lines = [
        f"Sampling {batch} images of 1x28x28 (784 steps); times are the best of 2 runs, threads in brackets.",
        "",
        "| model | params | ORT step loop | ORT sample.onnx | sample.onnx / loop (time) | torch step | naive torch | "
        "ORT vs torch | ORT vs naive | same samples | export | parity (max abs diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        naive = "naive_s" in r
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {fmt_s(r['ort_sample_s'])} [{r['ort_sample_threads']}] | "
            f"{fmt_s(r['graph_sample_s'])} [{r['graph_sample_threads']}] | "
            f"{r['graph_sample_s'] / r['ort_sample_s']:.2f}x | "
            f"{fmt_s(r['torch_sample_s'])} [{r['torch_sample_threads']}] | "
            + (f"{fmt_s(r['naive_s'], r['naive_extrapolated'])} [{r['naive_threads']}] | " if naive else "- | ")
            + f"{r['torch_sample_s'] / r['ort_sample_s']:.2f}x | "
            + (f"{r['naive_s'] / r['ort_sample_s']:.0f}x | " if naive else "- | ")
            + f"{'yes' if r['same_samples'] else 'no'} | {r['export_s']:.1f} s | {r['parity']:.2g} |")
    rows = [r for r in rows if "ort_logprob_s" in r]
    if not rows:
        return lines
    lines += [
        "",
        f"log_prob on the first of {n_images} {images_label}, batches of 500, about "
        f"{LOGPROB_BUDGET_S:.0f} s per engine at most (images per second; images scored and time in brackets):",
        "",
        "| model | ORT | torch | ORT vs torch |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ort_rate = r["ort_logprob_images"] / r["ort_logprob_s"]
        torch_rate = r["torch_logprob_images"] / r["torch_logprob_s"]
        lines.append(f"| {r['model']} | {ort_rate:,.0f} ({r['ort_logprob_images']} in {fmt_s(r['ort_logprob_s'])}) "
                     f"[{r['ort_logprob_threads']}] | {torch_rate:,.0f} ({r['torch_logprob_images']} in "
                     f"{fmt_s(r['torch_logprob_s'])}) [{r['torch_logprob_threads']}] | {ort_rate / torch_rate:.2f}x |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="Comma-separated model names (default: every registered one).")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="Trained weights for a model (repeatable); random init otherwise.")
    parser.add_argument("--images", type=int, default=10000, help="Test images for log_prob.")
    parser.add_argument("--logprob-threads", type=int, default=1,
                        help="Threads for both engines in the log_prob pass (default 1: a shared 2-core machine).")
    parser.add_argument("--data", default=None, help="binarized_mnist.npz (default: ../shared/data/ if present).")
    parser.add_argument("--sampling-only", action="store_true",
                        help="Time only the step loop, sample.onnx and torch's step (no naive sampling, no log_prob).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampling.md"))
    args = parser.parse_args(argv)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    names = args.models.split(",") if args.models else list_models()
    cores = os.cpu_count() or 1
    threads_options = sorted({1, cores, args.logprob_threads})
    images, images_label = load_test_images(args.images, args.data)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            rows.append(bench_model(name, checkpoints, args.batch, images, threads_options, args.logprob_threads,
                                    Path(tmp), sampling_only=args.sampling_only))
            write_report(args, argv, rows, images_label, len(images), cores, load)  # after every model
    print(write_report(args, argv, rows, images_label, len(images), cores, load))
    print(f"wrote {args.out}", file=sys.stderr)


def write_report(args, argv, rows, images_label, n_images, cores, load) -> str:
    machine = (f"{cpu_name()}, {cores} cores (shared with other jobs; load average {load:.1f} at the start), "
               f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__} "
               "(CPUExecutionProvider)")
    lines = ["# Sampling and log_prob speed: onnxruntime export vs torch", "",
             f"Machine: {machine}.", "",
             f"Command: `python benchmarks/sampling.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip()
             + "", "",
             *table(rows, args.batch, images_label, n_images), "",
             "Weights: " + "; ".join(f"{r['model']}: {r['weights']}" for r in rows) + ".",
             "\"~\": naive sampling timed on a prefix of the pixels and extrapolated to 784 (each naive step "
             "re-runs the whole network, so its cost is the same at every pixel).",
             "", "## GPU (CUDA provider, IOBinding)", "",
             "No GPU was lent to this task, so the CUDA/IOBinding table was not run. The IOBinding sampling "
             "loop (state kept as device OrtValues, the draw in draw.onnx on the device, only the drawn values "
             "copied to the host) is exercised on CPU by tests/test_runtime.py and is what "
             "`ExportedModel(dir, provider=\"cuda\")` uses.", ""]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
