"""Speed of every built-in model against straightforward reference implementations, and the machine's bounds.

For each model: training images/s (forward, backward and an Adam step; the counting
baselines: one closed-form fit), log_prob images/s (no grad) and sampling 64 images,
for densreg and, for nade / row-lstm / diagonal-bilstm / made / transformer, the reference implementation of
``benchmarks/speed_references.py`` (its docstring says what each does) at the same sizes.
The two contenders are interleaved within one process (densreg, reference, densreg, ...),
each measurement repeated ``--reps`` times; the table gives medians and the ratio
densreg / reference (> 1: densreg is faster). One torch thread each on CPU. The load
average is printed before and after, since other jobs on the machine skew absolute figures
(ratios much less).

Machine bounds (same run, same thread count): copy bandwidth (``Tensor.copy_`` of 64 MB,
bytes read + written per second) and GEMM rate (1024^3 float32 matmul). Each trained
model's bound is the smaller of memory traffic / bandwidth and its minimal float ops /
GEMM rate (formulas in the table notes); "of bound" is the measured rate over that bound.

Images: independent pixels that are 1 with binarized MNIST's probability 0.13 (``--density``),
or with ``--data`` the binarized-MNIST test images. NADE's binary pass works once per distinct
running sum (1 + the number of ones per image), so its cost depends on the data: two extra NADE
rows repeat train and log_prob on images with half their pixels on.

A "threads" table times densreg with 1 thread and with every core (the evidence behind
the thread defaults of ``densreg.app.performance``).

    python benchmarks/speed.py [--device cpu|cuda] [--quick] [--density P | --data NPZ] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_references import (ConvImageGPT, PerRowConvRowLSTM, RemaskedMADE, RunningSumNADE,  # noqa: E402
                              SkewDiagonalBiLSTM)

from densreg.app.performance import cpu_cores, eval_batch_size  # noqa: E402
from densreg.registry import create_model  # noqa: E402
from densreg.registry.atomic import atomic_write_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# model -> (densreg config, reference factory or None, training batch)
MODELS = {
    "bernoulli": ({}, None, 1000),
    "markov": ({}, None, 1000),
    "nade": ({"hidden": 500}, lambda shape, cfg: RunningSumNADE(math.prod(shape), cfg["hidden"]), 100),
    "pixelrnn": ({"hidden": 64}, None, 32),
    "row-lstm": ({"hidden": 16, "layers": 5}, lambda shape, cfg: PerRowConvRowLSTM(16, 5, 32), 32),
    "diagonal-bilstm": ({"hidden": 16, "layers": 2}, lambda shape, cfg: SkewDiagonalBiLSTM(16, 2, 32), 32),
    # pytorch-generative's reproduce() sizes (speed_references.py); batch 64 as there
    "made": ({"hidden": 8000}, lambda shape, cfg: RemaskedMADE(math.prod(shape), [cfg["hidden"]]), 64),
    "transformer": ({"width": 64, "layers": 8, "heads": 2},
                    lambda shape, cfg: ConvImageGPT(shape[1], cfg["layers"], cfg["heads"], cfg["width"]), 64),
}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- machine bounds -------------------------------------------------------------
def copy_bandwidth(device, reps: int) -> float:
    """Bytes read + written per second by Tensor.copy_ of 64 MB (float32), median of reps."""
    src = torch.rand(16 * 2**20, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.numel() * 4 / statistics.median(timed(lambda: dst.copy_(src), device) for _ in range(reps))


def gemm_rate(device, reps: int, n: int = 1024) -> float:
    """float32 matmul flops per second (n x n times n x n), median of reps."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    a @ b
    return 2 * n**3 / statistics.median(timed(lambda: a @ b, device) for _ in range(reps))


def sigmoids_fn(cfg: dict, shape, batch: int, device, block: int = 8):
    """The D*H float32 sigmoids per image that any exact NADE evaluation computes, alone: in place on
    cache-sized (block, B, H) tiles, the cheapest way torch offers (the floor of NADE's log_prob)."""
    d, h = math.prod(shape), cfg["hidden"]
    tile = torch.randn(block, batch, h, device=device)
    blocks = -(-d // block)

    def run():
        for _ in range(blocks):
            torch.sigmoid_(tile)  # its time does not depend on the values
    return run


def bound_images_per_s(name: str, cfg: dict, shape, bandwidth: float, gemm: float) -> tuple[float, str] | None:
    """An upper bound on training images/s for ``name`` and how it is derived."""
    d = math.prod(shape)
    if name == "nade":
        h = cfg["hidden"]
        traffic = 4 * d * h * 4  # write and read the (D, H) pre-activations and hidden units once each, float32
        flops = 6 * 2 * d * h  # forward 2 GEMV-like products per position, backward twice that
        mem, comp = bandwidth / traffic, gemm / flops
        return min(mem, comp), (f"memory {mem:,.0f}/s (4 passes of D·H float32 = {traffic / 1e6:.1f} MB per image, "
                                f"what a position-by-position pass touches at least; the binary pass by states "
                                f"touches about 1 + ones/D of it), compute {comp:,.0f}/s ({flops / 1e6:.1f} MFLOP)")
    if name in ("row-lstm", "diagonal-bilstm"):
        h, layers = cfg["hidden"], cfg["layers"]
        per_pixel = (2 * 2 * h * 4 * h + 2 * 3 * h * 4 * h) if name == "row-lstm" else 2 * (2 * h * 4 * h + 2 * 2 * h * 4 * h)
        flops = 3 * d * layers * per_pixel  # forward + backward (2x) of the gate products
        comp = gemm / flops
        return comp, f"compute {comp:,.0f}/s ({flops / 1e6:.1f} MFLOP of gate products per image, fwd+bwd)"
    return None


# -- workloads ------------------------------------------------------------------
def train_step_fn(model, images, closed_form: bool):
    if closed_form:
        return lambda: model.fit_closed_form(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss = -model.log_prob(images).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def log_prob_fn(model, images):
    def run():
        with torch.no_grad():
            model.log_prob(images)
    return run


def sample_fn(model, n: int, shape, is_reference: bool, positions: int | None):
    """Sampling n images; for a re-running reference only ``positions`` pixels (extrapolated)."""
    if not is_reference:
        return lambda: model.sample(n, generator=torch.Generator().manual_seed(0))
    if isinstance(model, RunningSumNADE):
        return lambda: model.sample(n, shape)
    d = math.prod(shape)
    chosen = torch.linspace(0, d - 1, positions).round().long().tolist()
    return lambda: model.sample_steps(n, shape, chosen)


def measure(contenders: dict, reps: int, device) -> dict[str, float]:
    """Interleave the contenders' functions ``reps`` times (after one warm-up each); median seconds."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(reps):
        for key, fn in contenders.items():
            times[key].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


# Binarized MNIST's mean pixel (training split): the fraction of ones in the default benchmark images.
MNIST_DENSITY = 0.13
DENSE = 0.5  # the extra NADE rows' fraction of ones


def benchmark_images(n: int, shape, args, device, density: float | None = None) -> torch.Tensor:
    """n binary images (n, *shape) int64: the first n binarized-MNIST test images with ``--data``
    (28x28), else independent pixels that are 1 with probability ``density`` (default --density)."""
    if args.data and density is None and shape == (1, 28, 28):
        from densreg.registry import load_split
        return load_split("binarized-mnist", "test", data=args.data)[:n].to(device)
    p = args.density if density is None else density
    return (torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)) < p).long().to(device)


def images_note(args) -> str:
    """How the benchmark's images were made, for the table's header."""
    if args.data and args.size == 28:
        return "the binarized-MNIST test images (`--data`)"
    return (f"independent pixels that are 1 with probability {args.density:g}"
            + (" (binarized MNIST's mean pixel)" if args.density == MNIST_DENSITY else ""))


def bench_model(name: str, args, shape, device, bandwidth: float, gemm: float) -> list[dict]:
    cfg, make_reference, train_batch = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, shape, 2, **cfg).to(device)
    reference = make_reference(shape, cfg).to(device) if make_reference else None
    train_batch = args.train_batch or train_batch
    images = benchmark_images(max(train_batch, args.eval_batch), shape, args, device)
    train_x, eval_x = images[:train_batch], images[:args.eval_batch]
    rows = []
    d = math.prod(shape)
    steps = max(2, args.reference_steps)
    metrics = [("train", train_batch, train_x), ("log_prob", args.eval_batch, eval_x), ("sample", args.sample_n, None)]
    if name == "nade":  # its binary pass works per distinct state: half the pixels on costs more than MNIST's 13%
        dense = benchmark_images(max(train_batch, args.eval_batch), shape, args, device, density=DENSE)
        metrics += [(f"train, {DENSE:g} ones", train_batch, dense[:train_batch]),
                    (f"log_prob, {DENSE:g} ones", args.eval_batch, dense[:args.eval_batch])]
    for metric, unit, x in metrics:
        if metric.startswith("train"):
            fns = {"densreg": train_step_fn(model.train(), x, model.closed_form)}
            if reference is not None:
                fns["reference"] = train_step_fn(reference.train(), x, False)
        elif metric.startswith("log_prob"):
            fns = {"densreg": log_prob_fn(model.eval(), x)}
            if reference is not None:
                fns["reference"] = log_prob_fn(reference.eval(), x)
            if name == "nade" and metric == "log_prob":
                fns["sigmoids"] = sigmoids_fn(cfg, shape, args.eval_batch, device)
        else:
            fns = {"densreg": sample_fn(model.eval(), args.sample_n, shape, False, None)}
            if reference is not None:
                fns["reference"] = sample_fn(reference.eval(), args.sample_n, shape, True, steps)
        seconds = measure(fns, args.reps if metric != "sample" else max(1, args.reps // 2), device)
        if "reference" in seconds and not isinstance(reference, RunningSumNADE) and metric == "sample":
            seconds["reference"] *= d / steps  # re-run per pixel: the same cost at every pixel
        row = {"model": name, "metric": metric, "batch": unit,
               "densreg": unit / seconds["densreg"], "reference": unit / seconds.get("reference", math.nan)}
        if metric.startswith("train"):
            bound = bound_images_per_s(name, cfg, shape, bandwidth, gemm)
            if bound:
                row["bound"] = bound[0]
                if metric == "train":
                    row["bound_note"] = bound[1]
        if "sigmoids" in seconds:
            row["bound"] = unit / seconds["sigmoids"]
            row["bound_note"] = (f"the D·H = {d * cfg['hidden']:,} float32 sigmoids per image that a position-by-position "
                                 f"pass computes, alone: {row['bound']:,.0f}/s = {row['bound'] / row['reference']:.2f}× "
                                 "the reference (torch.sigmoid_ in place on cache-sized (8, B, H) tiles, same run). "
                                 "densreg's binary pass computes them once per distinct state (1 + the image's "
                                 "number of ones), so it can pass this figure")
        rows.append(row)
        print(f"{name:16s} {metric:9s} densreg {row['densreg']:10.1f}/s  reference {row['reference']:10.1f}/s  "
              f"ratio {row['densreg'] / row['reference']:.2f}", flush=True)
    return rows


def threads_probe(names, args, shape, device) -> list[dict]:
    """densreg with 1 thread vs every core, interleaved: train, log_prob, sample (fewer positions)."""
    rows, cores = [], cpu_cores()
    for name in names:
        cfg, _, train_batch = MODELS[name]
        torch.manual_seed(0)
        model = create_model(name, shape, 2, **cfg).to(device)
        train_batch = args.train_batch or train_batch
        x = benchmark_images(max(train_batch, args.eval_batch), shape, args, device)
        for metric, fn, unit in (("train", train_step_fn(model, x[:train_batch], model.closed_form), train_batch),
                                 ("log_prob", log_prob_fn(model, x[:args.eval_batch]), args.eval_batch),
                                 ("sample", lambda: model.sample(16), 16)):
            def with_threads(n, fn=fn):
                def run():
                    torch.set_num_threads(n)
                    fn()
                return run
            seconds = measure({1: with_threads(1), cores: with_threads(cores)}, max(1, args.reps // 2), device)
            torch.set_num_threads(1)
            rows.append({"model": name, "metric": metric, "one": unit / seconds[1], "all": unit / seconds[cores]})
            print(f"threads {name:16s} {metric:9s} 1: {rows[-1]['one']:.1f}/s  {cores}: {rows[-1]['all']:.1f}/s",
                  flush=True)
    return rows


def fmt(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.1f}"


def markdown(rows, threads_rows, args, bounds, loads, seconds) -> str:
    bandwidth, gemm = bounds
    lines = [
        "# Speed: densreg against straightforward reference implementations",
        "",
        f"Written by `python benchmarks/speed.py {' '.join(args.argv)}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
        f"{cpu_cores()} cores, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s); {seconds:.0f} s in all.",
        f"Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]}.",
        "",
        f"Machine bounds (same run): copy bandwidth **{bandwidth / 1e9:.1f} GB/s** (read + write, `copy_` of 64 MB), "
        f"GEMM **{gemm / 1e9:.1f} GFLOP/s** (float32, 1024³).",
        "",
        f"Images/s, median of {args.reps} interleaved repetitions (sampling: {max(1, args.reps // 2)}); "
        f"ratio = densreg ÷ reference (> 1: densreg faster). Shape 1×{args.size}×{args.size}, binary: "
        f"{images_note(args)}.",
        "",
        "| model | metric | batch | densreg img/s | reference img/s | ratio | bound img/s | densreg of bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["densreg"] / r["reference"] if not math.isnan(r["reference"]) else math.nan
        bound = r.get("bound")
        ratio_text = "-" if math.isnan(ratio) else f"{ratio:.2f}×"
        of_bound = f"{100 * r['densreg'] / bound:.0f}%" if bound else "-"
        lines.append(f"| {r['model']} | {r['metric']} | {r['batch']} | {fmt(r['densreg'])} | {fmt(r['reference'])} | "
                     f"{ratio_text} | {fmt(bound) if bound else '-'} | {of_bound} |")
    lines += ["", "Bounds: " + "; ".join(f"{r['model']} {r['metric']}: {r['bound_note']}" for r in rows
                                         if r.get("bound_note")) + ".",
              "", "References (`benchmarks/speed_references.py`):",
              "- nade: pytorch-generative's NADE, a Python loop over positions with the running pre-activation "
              "a += x_d W_d; sampling the same loop.",
              "- row-lstm: masked 7×7 input conv, then per layer and per row a masked 1×3 Conv1d on the row "
              "and a width-3 Conv1d on the previous row's state (recomputed per row); sampling re-runs the "
              "network per pixel (timed on a few pixels, extrapolated to all).",
              "- diagonal-bilstm: skew by padding and stacking rows, 1×1 input-to-state conv, a loop over skewed "
              "columns with a kernel-2 Conv1d on the previous column, the flipped direction shifted down a row; "
              "sampling re-runs the network per pixel (extrapolated).",
              "- bernoulli, markov (closed-form fit: \"train\" is one counting fit), pixelrnn: no reference; "
              "absolute figures only."]
    if threads_rows:
        lines += ["", f"Threads: densreg images/s with 1 thread and with all {cpu_cores()} cores "
                      "(interleaved; the evidence for the thread defaults in `app/performance.py`).", "",
                  "| model | metric | 1 thread | all cores | all ÷ 1 |", "|---|---|---|---|---|"]
        for r in threads_rows:
            lines.append(f"| {r['model']} | {r['metric']} | {fmt(r['one'])} | {fmt(r['all'])} | "
                         f"{r['all'] / r['one']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="few repetitions and small batches (smoke runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.md"))
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--size", type=int, default=28, help="images are 1 x SIZE x SIZE")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 2)")
    parser.add_argument("--eval-batch", type=int, default=None,
                        help="log_prob batch (default: densreg's evaluation batch on the device, 100 on CPU; quick 50)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch of every model (default: 100 for nade, 32 for the PixelRNNs, 1000 for the counting fits)")
    parser.add_argument("--sample-n", type=int, default=64)
    parser.add_argument("--density", type=float, default=MNIST_DENSITY,
                        help="fraction of ones in the random benchmark images (default 0.13, binarized MNIST's mean "
                             "pixel; NADE's cost grows with it)")
    parser.add_argument("--data", default=None,
                        help="binarized-MNIST .npz (or .amat folder): benchmark on its test images instead (28x28)")
    parser.add_argument("--reference-steps", type=int, default=None,
                        help="pixels the re-running reference samplers are timed on (default 8, quick 2)")
    parser.add_argument("--no-threads-probe", action="store_true", help="skip the 1-thread vs all-cores table")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if not 0 <= args.density <= 1:
        parser.error(f"--density must be between 0 and 1, got {args.density}")
    args.reps = args.reps or (2 if args.quick else 3)
    args.eval_batch = args.eval_batch or (50 if args.quick else eval_batch_size(args.device))
    args.reference_steps = args.reference_steps or (2 if args.quick else 8)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    names = args.models.split(",")
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(1)
    start, loads = time.perf_counter(), [load_average()]
    print(f"load average: {loads[0]}", flush=True)
    bounds = (copy_bandwidth(args.device, args.reps * 2), gemm_rate(args.device, args.reps * 2))
    print(f"copy bandwidth {bounds[0] / 1e9:.1f} GB/s, GEMM {bounds[1] / 1e9:.1f} GFLOP/s", flush=True)
    shape = (1, args.size, args.size)
    rows = []
    for name in names:
        try:
            rows += bench_model(name, args, shape, args.device, *bounds)
        except Exception as exc:  # noqa: BLE001 - one model's failure (e.g. on a new device) must not lose the rest
            print(f"{name}: failed: {type(exc).__name__}: {exc}", flush=True)
            rows.append({"model": name, "metric": f"failed: {type(exc).__name__}: {str(exc)[:120]}", "batch": "-",
                         "densreg": math.nan, "reference": math.nan})
    threads_rows = []
    if not args.no_threads_probe and args.device == "cpu" and cpu_cores() > 1:
        threads_rows = threads_probe(names, args, shape, args.device)
    loads.append(load_average())
    print(f"load average: {loads[1]}", flush=True)
    text = markdown(rows, threads_rows, args, bounds, loads, time.perf_counter() - start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, text.encode())
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
