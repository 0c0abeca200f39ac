"""The deployment path against torch eager, side by side: ``ExportedModel.log_prob`` vs ``model.log_prob``
and sampling through the exported graphs vs torch's cached sampling (issue 32, item 1).

    python benchmarks/deploy_speed.py [--models nade,row-lstm] [--threads 1,2] [--batches 100,1000]
                                      [--sample-batch 100] [--reps 3] [--exports DIR] [--out PATH]

Each model is the committed one (``models/<name>-mnist.safetensors``) where there is one, else the
default config with random weights (bernoulli, and the real-valued models on random values), exported
once into ``--exports`` (re-exported when the folder is missing or was written by another densreg
format). Images: the first binarized-MNIST test images (``/work/shared/data`` or beside the clone),
else independent pixels that are 1 with probability 0.13.

For every thread count T (torch.set_num_threads(T); ExportedModel(threads=T), CPU provider) and batch
B, the two sides run interleaved (torch, onnxruntime, torch, ...) after one warm-up each, ``--reps``
times; the table gives the median seconds and the ratio torch / onnxruntime (> 1: the export is
faster). Sampling (thread counts ``--sample-threads``, default 1): ``--sample-batch`` images from the same
noise, torch ``model.sample(noise=...)`` (the model's cached sampler) against the runtime's step loop and
``sample.onnx`` (one call).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from densreg.export import export_model
from densreg.export import format as fmt
from densreg.export.runtime import ExportedModel
from densreg.registry import create_model, load_checkpoint
from densreg.registry.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
MNIST_CANDIDATES = [base / "shared" / "data" / "binarized_mnist.npz" for base in (ROOT.parent, ROOT.parents[1])]
MODELS = ("bernoulli", "markov", "nade", "made", "transformer", "pixelrnn", "row-lstm", "diagonal-bilstm",
          "gaussian-mixture", "rnade")
DENSITY = 0.13  # binarized MNIST's mean pixel, for random images when the test split is absent


def build(name: str):
    """(model, where it came from): the committed checkpoint, else a default model with random weights."""
    path = ROOT / "models" / f"{name}-mnist.safetensors"
    if path.is_file():
        return load_checkpoint(path)[0].eval(), f"models/{path.name}"
    torch.manual_seed(0)
    if name in ("gaussian-mixture", "rnade"):
        return create_model(name, (1, 8, 8), 0).eval(), "random weights, 1x8x8 real values"
    return create_model(name, (1, 28, 28), 2).eval(), "random weights"


def exported(name: str, model, exports: Path) -> Path:
    """The model's export folder under ``exports``, written when absent or of another format."""
    folder = exports / name
    manifest = folder / fmt.MANIFEST
    if manifest.is_file() and f'"{fmt.FORMAT}"' in manifest.read_text():
        return folder
    start = time.perf_counter()
    export_model(model, folder, name=name)
    print(f"exported {name} in {time.perf_counter() - start:.1f} s", flush=True)
    return folder


def images_for(model, count: int) -> np.ndarray:
    if not model.family.discrete:
        return np.random.default_rng(0).standard_normal((count, *model.event_shape)).astype(np.float32)
    for path in MNIST_CANDIDATES:
        if path.is_file() and tuple(model.event_shape) == (1, 28, 28):
            with np.load(path) as data:
                test = data["test"] if "test" in data else data[sorted(data.files)[-1]]
            if len(test) >= count:
                return test[:count].reshape(count, 1, 28, 28).astype(np.int64)
    rng = np.random.default_rng(0)
    return (rng.random((count, *model.event_shape)) < DENSITY).astype(np.int64)


def interleaved(contenders: dict, reps: int) -> dict[str, float]:
    """Median seconds of each contender, run in turn ``reps`` times after one warm-up each."""
    for fn in contenders.values():
        fn()
    times = {k: [] for k in contenders}
    for _ in range(reps):
        for key, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, args, exports: Path) -> list[dict]:
    model, source = build(name)
    folder = exported(name, model, exports)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runtime = ExportedModel(folder, provider="cpu", threads=threads)
        for batch in args.batches:
            x = images_for(model, batch)
            xt = torch.from_numpy(x)

            def torch_side(xt=xt):
                with torch.no_grad():
                    model.log_prob(xt)
            seconds = interleaved({"torch": torch_side, "ort": lambda x=x: runtime.log_prob(x)}, args.reps)
            rows.append({"model": name, "source": source, "what": "log_prob", "threads": threads, "batch": batch,
                         **seconds})
            print(f"{name:16s} log_prob T={threads} B={batch:5d} torch {seconds['torch']:.4f} s  "
                  f"ort {seconds['ort']:.4f} s  ratio {seconds['torch'] / seconds['ort']:.2f}", flush=True)
        if args.sample_batch and threads in args.sample_threads:
            n = args.sample_batch
            noise = np.random.default_rng(1).random(runtime.noise_shape(n))
            noise_t = torch.from_numpy(noise)
            contenders = {"torch": lambda: model.sample(n, noise=noise_t),
                          "ort": lambda: runtime.sample(n, noise=noise)}
            if runtime.family.has_onnx_draw or (fmt.SAMPLE in runtime.manifest.get("files", {})):
                contenders["graph"] = lambda: runtime.sample(n, noise=noise, engine="graph")
            seconds = interleaved(contenders, max(1, args.reps // 2))
            rows.append({"model": name, "source": source, "what": "sample", "threads": threads, "batch": n,
                         **seconds})
            print(f"{name:16s} sample   T={threads} B={n:5d} " + "  ".join(f"{k} {v:.3f} s" for k, v in seconds.items()),
                  flush=True)
    return rows


def ratio(row: dict, key: str) -> str:
    return f"{row['torch'] / row[key]:.2f}x" if key in row else "-"


def markdown(rows: list[dict], args, argv, loads, seconds: float) -> str:
    sources = {}
    for r in rows:
        sources.setdefault(r["model"], r["source"])
    lines = [
        "# Deployment speed: onnxruntime (the export folder) vs torch eager, CPU",
        "",
        f"`python benchmarks/deploy_speed.py {' '.join(argv)}` on {datetime.now(timezone.utc):%Y-%m-%d at %H:%M} UTC; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}, export format {fmt.FORMAT}; load average "
        f"{loads[0]} at the start, {loads[1]} at the end; {seconds:.0f} s in all.",
        "",
        "Models: " + "; ".join(f"{k}: {v}" for k, v in sources.items()) + ".",
        "",
        f"Median seconds of {args.reps} interleaved repetitions (sampling: {max(1, args.reps // 2)}); ratio = torch "
        "time / onnxruntime time (> 1: the export is faster). `ExportedModel(folder, provider='cpu', threads=T)` "
        "against `model.log_prob` under `torch.no_grad()` with `torch.set_num_threads(T)`.",
        "",
        "## log_prob",
        "",
        "| model | threads | batch | torch | onnxruntime | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["what"] == "log_prob":
            lines.append(f"| {r['model']} | {r['threads']} | {r['batch']} | {r['torch']:.4f} s | {r['ort']:.4f} s | "
                         f"{ratio(r, 'ort')} |")
    lines += ["", "## Sampling (same noise)", "",
              "| model | threads | batch | torch `sample` | step loop | sample.onnx | ratio (steps) | ratio (sample.onnx) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["what"] == "sample":
            graph = f"{r['graph']:.3f} s" if "graph" in r else "-"
            lines.append(f"| {r['model']} | {r['threads']} | {r['batch']} | {r['torch']:.3f} s | {r['ort']:.3f} s | "
                         f"{graph} | {ratio(r, 'ort')} | {ratio(r, 'graph')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    parser.add_argument("--batches", default="100,1000")
    parser.add_argument("--sample-batch", type=int, default=100, help="0: no sampling rows")
    parser.add_argument("--sample-threads", default="1", help="thread counts that time sampling too (torch's "
                        "sampler on every core of a shared machine took minutes)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--exports", default=str(Path(tempfile.gettempdir()) / "densreg-deploy-speed"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "deploy_speed.md"))
    args = parser.parse_args(argv)
    args.threads = sorted({int(t) for t in args.threads.split(",")})
    args.batches = [int(b) for b in args.batches.split(",")]
    args.sample_threads = {int(t) for t in args.sample_threads.split(",")}
    exports = Path(args.exports)
    exports.mkdir(parents=True, exist_ok=True)
    loads, start, rows = [f"{os.getloadavg()[0]:.2f}"], time.perf_counter(), []
    for name in args.models.split(","):
        rows += bench(name, args, exports)
    loads.append(f"{os.getloadavg()[0]:.2f}")
    text = markdown(rows, args, argv, loads, time.perf_counter() - start)
    if args.out:
        atomic_write_bytes(Path(args.out), text.encode())
    print(text)
    return rows


if __name__ == "__main__":
    main()
