"""What ``--compile`` pays: eager against ``torch.compile`` of log_prob, training and evaluation, side by side.

For each model (the sizes of ``benchmarks/speed.py``): the compile time of the training step
(forward and backward of the compiled log_prob, first call) and of evaluation (log_prob under
no_grad, a separate graph), then training images/s (forward, backward, an Adam step) and
log_prob images/s, eager and compiled interleaved in one process (medians of ``--reps``), and
the break-even: how many images a run must process before compiling has paid for itself
(compile seconds / (1/eager rate - 1/compiled rate); "never" when compiled is not faster).
This is exactly what ``densreg train/eval --compile`` run (``densreg.app.performance.compiled_log_prob``).
Compiled and eager are compared on the same batch and weights: log_prob (max |difference|, nats)
and the training loss's gradient (cosine, and the largest difference over the largest entry).

Compile times are cold: the inductor cache is a fresh temporary folder unless ``--warm-cache``
(a second run with the same shapes reads its compiled kernels from ``TORCHINDUCTOR_CACHE_DIR``, and
compiles several times faster). Results are written model by model (a long compile must not lose the rest).

    python benchmarks/compile.py [--models nade,row-lstm] [--reps 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import MODELS, load_average, log_prob_fn, measure, train_step_fn  # noqa: E402

from densreg.app.performance import compiled_log_prob  # noqa: E402
from densreg.registry import create_model  # noqa: E402
from densreg.registry.atomic import atomic_write_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("nade", "row-lstm", "diagonal-bilstm")


class Compiled(torch.nn.Module):
    """A model whose ``log_prob`` is the compiled one (for the shared workload functions of speed.py)."""

    def __init__(self, model, device) -> None:
        super().__init__()
        self.model, self.closed_form = model, False
        self.log_prob = compiled_log_prob(model, device)


def first_call_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def break_even(compile_s: float, eager: float, compiled: float) -> str:
    """Images after which compiling has paid for itself, from the compile time and the two rates (images/s)."""
    saved_per_image = 1 / eager - 1 / compiled
    return "never" if saved_per_image <= 0 else f"{compile_s / saved_per_image:,.0f}"


def gradient_agreement(model, compiled, images) -> tuple[float, float]:
    """Cosine and max |difference| / max |eager entry| between the gradients of the mean NLL, eager
    and compiled (all parameters flattened into one vector)."""
    grads = []
    for log_prob in (model.log_prob, compiled.log_prob):
        model.zero_grad(set_to_none=True)
        (-log_prob(images).mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double())
    model.zero_grad(set_to_none=True)
    eager, other = grads
    cosine = torch.nn.functional.cosine_similarity(eager, other, dim=0).item()
    return cosine, ((eager - other).abs().max() / eager.abs().max()).item()


def bench_model(name: str, args) -> list[dict]:
    cfg, _, train_batch = MODELS[name]
    shape = (1, args.size, args.size)
    torch.manual_seed(0)
    model = create_model(name, shape, 2, **cfg).to(args.device)
    images = torch.randint(0, 2, (max(train_batch, args.eval_batch), *shape), device=args.device)
    train_x, eval_x = images[:train_batch], images[:args.eval_batch]
    rows = []
    for metric, unit, make in (("train", train_batch, lambda m: train_step_fn(m.train(), train_x, False)),
                               ("log_prob", args.eval_batch, lambda m: log_prob_fn(m.eval(), eval_x))):
        compiled = Compiled(model, args.device)  # one per metric: it compiles for its first batch shape only
        fns = {"eager": make(model), "compiled": make(compiled)}
        compile_s = first_call_seconds(fns["compiled"])  # compiles (the graph of this grad mode and batch)
        print(f"{name} {metric}: compiled in {compile_s:.1f} s (load {load_average()})", flush=True)
        seconds = measure(fns, args.reps, args.device)
        row = {"model": name, "metric": metric, "batch": unit, "compile_s": compile_s,
               "eager": unit / seconds["eager"], "compiled": unit / seconds["compiled"]}
        if metric == "train":
            row["grad_cosine"], row["grad_max_rel"] = gradient_agreement(model.train(), compiled, train_x)
        else:
            with torch.no_grad():
                row["max_diff"] = (compiled.log_prob(eval_x) - model.log_prob(eval_x)).abs().max().item()
        rows.append(row)
        print(f"{name:16s} {metric:9s} eager {row['eager']:9.1f}/s  compiled {row['compiled']:9.1f}/s  "
              f"ratio {row['compiled'] / row['eager']:.2f}", flush=True)
    return rows


def markdown(rows, args, loads, seconds: float) -> str:
    lines = [
        "# --compile: eager against torch.compile of log_prob",
        "",
        f"Written by `python benchmarks/compile.py {' '.join(args.argv)}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s); "
        f"{seconds:.0f} s in all.",
        f"Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[-1]}.",
        "",
        f"Images/s, median of {args.reps} interleaved repetitions; compiled ÷ eager > 1: compiling is faster "
        "once compiled. Compile s: the first call (compilation and one step). Break-even: images a run must "
        "process before the compile time is paid back. Sizes as in `benchmarks/speed.py`. Compile times "
        f"{'with the usual (warm) inductor cache' if args.warm_cache else 'cold (a fresh inductor cache)'}.",
        "",
        "| model | metric | batch | compile s | eager img/s | compiled img/s | compiled ÷ eager | break-even images | "
        "max \\|Δ log_prob\\| nats | gradient cosine (max \\|Δ\\| / max \\|entry\\|) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else "-"
        grad = f"{r['grad_cosine']:.7f} ({r['grad_max_rel']:.1e})" if "grad_cosine" in r else "-"
        lines.append(f"| {r['model']} | {r['metric']} | {r['batch']} | {r['compile_s']:.1f} | {r['eager']:,.1f} | "
                     f"{r['compiled']:,.1f} | {r['compiled'] / r['eager']:.2f}× | "
                     f"{break_even(r['compile_s'], r['eager'], r['compiled'])} | {diff} | {grad} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated subset of speed.py's models")
    parser.add_argument("--size", type=int, default=28, help="images are 1 x SIZE x SIZE")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument("--eval-batch", type=int, default=100, help="log_prob batch (default 100, the CPU evaluation batch)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile.md"))
    parser.add_argument("--warm-cache", action="store_true",
                        help="use the usual inductor cache (compile times of a repeated run) instead of a fresh one")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    names = args.models.split(",")
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    torch.set_num_threads(1)
    cache = None
    if not args.warm_cache:  # read when the first compile starts
        cache = tempfile.TemporaryDirectory(prefix="densreg-compile-bench-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    start, loads, rows = time.perf_counter(), [load_average()], []
    for name in names:
        try:
            rows += bench_model(name, args)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not lose the others' rows
            print(f"{name}: failed: {type(exc).__name__}: {exc}", flush=True)
            rows.append({"model": name, "metric": f"failed: {type(exc).__name__}", "batch": "-", "compile_s": math.nan,
                         "eager": math.nan, "compiled": math.nan})
        loads.append(load_average())
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, markdown(rows, args, loads, time.perf_counter() - start).encode())
    print(f"wrote {args.out}")
    if cache is not None:
        cache.cleanup()
    return rows


if __name__ == "__main__":
    main()
