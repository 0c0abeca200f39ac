"""Export time and folder size of every registered model at its default 1x28x28 config.

    python benchmarks/export.py [--models nade,markov] [--dtype float32] [--out benchmarks/results/export.md]

Per model (random weights, default config): seconds of ``export_model`` (tracing, parity
check over all D positions, golden vectors, writing), the bytes of conditionals.onnx and
step.onnx as the dynamo exporter traced them ("traced": with its per-node debug metadata,
value_info and each graph's own copy of the weights, as exports before format 2 stored them),
and the bytes of every file of the folder written ("now").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from densreg.export import export_model
from densreg.export import format as fmt
from densreg.registry import create_model, list_models

SHAPE = (1, 28, 28)


def kb(n: int) -> str:
    return f"{n / 1e3:,.0f} KB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--dtype", default="float32", choices=fmt.DTYPES)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "export.md"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = create_model(name, SHAPE, 2)
            start = time.perf_counter()
            report = export_model(model, Path(tmp) / name, name=name, dtype=args.dtype)
            seconds = time.perf_counter() - start
            rows.append({"model": name, "seconds": seconds, "traced": report["traced_sizes"],
                         "sizes": report["sizes"], "log_prob_diff": report["log_prob_max_abs_diff"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    lines = [f"# Export time and size at 1x28x28 (default configs, random weights, {args.dtype})", "",
             f"`python benchmarks/export.py --models {args.models} --dtype {args.dtype}`; 2-core shared machine, "
             f"load average {load:.1f} at the end, torch {torch.__version__}.", "",
             "| model | export | traced conditionals + step | now: all files | graphs | weights.bin | "
             "log_prob diff vs torch (nats) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        traced = sum(r["traced"].values())
        graphs = sum(v for k, v in r["sizes"].items() if k.endswith(".onnx"))
        lines.append(f"| {r['model']} | {r['seconds']:.1f} s | {kb(traced)} | {kb(sum(r['sizes'].values()))} | "
                     f"{kb(graphs)} | {kb(r['sizes'][fmt.WEIGHTS])} | {r['log_prob_diff']:.2g} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
