"""Sampling speed of the PixelRNN variants (or, with ``--only``, other models such as ``pixelcnn`` and
``gated-pixelcnn``): cached ``step`` vs re-running the full network per value.

For each variant (default config, random weights: the cost does not depend on them),
times ``model.sample(64)`` for 1x28x28 images with the cached step, and the naive
sampler (``recompute_step``: the full ``conditional_logits`` for every one of the 784
positions). The naive step costs the same at every position, so it is timed on
``--naive-steps`` positions spread over the image and extrapolated to 784 (the table
says so). Writes benchmarks/results/sampling_pixelrnn.md (``--out``: another file of that folder).

    python benchmarks/sampling_pixelrnn.py [--naive-steps 12] [--threads 1] [--only a,b --out NAME.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from densreg.registry import DensityModel, create_model
from densreg.registry.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ["row-lstm", "diagonal-bilstm", "pixelrnn"]


@torch.no_grad()
def time_naive_steps(model, n: int, steps: int) -> float:
    """Mean seconds of one naive step (full re-run) for a batch of n, over ``steps`` positions."""
    state = DensityModel.initial_state(model, n)
    value = torch.zeros(n, dtype=torch.int64)
    positions = torch.linspace(0, model.num_positions - 1, steps).round().long().tolist()
    model.recompute_step(value, positions[0], state)  # warm-up
    start = time.perf_counter()
    for d in positions:
        model.recompute_step(value, d, state)
    return (time.perf_counter() - start) / len(positions)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=64, help="images per sample call")
    parser.add_argument("--naive-steps", type=int, default=12, help="naive positions timed (then extrapolated)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=",".join(VARIANTS), help="models, comma-separated")
    parser.add_argument("--out", default="sampling_pixelrnn.md", help="file name in benchmarks/results/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.only.split(","):
        torch.manual_seed(0)
        model = create_model(name, (1, 28, 28), 2).eval()
        start = time.perf_counter()
        model.sample(args.num, generator=torch.Generator().manual_seed(0))
        cached = time.perf_counter() - start
        per_step = time_naive_steps(model, args.num, args.naive_steps)
        naive = per_step * model.num_positions
        rows.append({"model": name, "config": {k: v for k, v in model.config().items()
                                                if k not in ("event_shape", "num_categories")},
                     "cached_s": cached, "cached_ms_per_step": 1000 * cached / model.num_positions,
                     "naive_ms_per_step": 1000 * per_step, "naive_s_extrapolated": naive,
                     "speedup": naive / cached})
        print(json.dumps(rows[-1]), flush=True)

    load = os.getloadavg()[0]
    lines = [
        f"# {'PixelRNN' if args.only == ','.join(VARIANTS) else args.only.replace(',', ', ')} sampling: "
        "cached step vs full re-run",
        "",
        f"Written by `benchmarks/sampling_pixelrnn.py --naive-steps {args.naive_steps} --threads {args.threads}"
        f"{'' if args.only == ','.join(VARIANTS) else f' --only {args.only} --out {args.out}'}` "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {args.num} images of 1x28x28 (784 positions), "
        f"{platform.machine()} CPU, {args.threads} torch thread(s), a machine shared with other jobs "
        f"(load average {load:.1f} on {os.cpu_count()} cores), so absolute times are inflated; both "
        "columns were measured under the same load. The naive sampler re-runs the full network for "
        f"every position; it was timed on {args.naive_steps} positions spread over the image and "
        "extrapolated to 784 (its cost does not depend on the position).",
        "",
        f"| model | config | cached: sample {args.num} (s) | cached ms/step | naive ms/step | naive: 784 steps (s, extrapolated) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | `{json.dumps(r['config'])}` | {r['cached_s']:.1f} | "
                     f"{r['cached_ms_per_step']:.1f} | {r['naive_ms_per_step']:.0f} | "
                     f"{r['naive_s_extrapolated']:.0f} | {r['speedup']:.0f}x |")
    atomic_write_bytes(RESULTS / Path(args.out).name, ("\n".join(lines) + "\n").encode())
    return rows


if __name__ == "__main__":
    main()
