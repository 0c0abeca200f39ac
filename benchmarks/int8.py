"""int8 through onnxruntime's quantize_dynamic: does an export keep its NLL and its samples?

    python benchmarks/int8.py EXPORT_DIR [EXPORT_DIR ...] [--data binarized_mnist.npz] [--images 200] [--samples 16]

For each export folder: conditionals.onnx and step.onnx quantized with
``onnxruntime.quantization.quantize_dynamic`` (weights int8, activations quantized per call),
then on the first ``--images`` test images the largest and mean change of log p(x) in nats per
image, and for ``--samples`` images drawn from the same noise (seed 0) by the float32 and the
int8 step graphs the fraction of identical images and of identical values. Prints a markdown
table (torch is not imported).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from densreg.export import format as fmt
from densreg.export.runtime import ExportedModel, step_loop


def quantized_session(folder: Path, graph: str, tmp: Path) -> ort.InferenceSession | str:
    """The int8 session of ``graph``, or the one-line reason it does not build or load."""
    from onnxruntime.quantization import quantize_dynamic

    target = tmp / f"{folder.name}-{graph}"
    try:
        quantize_dynamic(folder / graph, target)
        return ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}"


def measure(folder: Path, images: np.ndarray, n_samples: int, tmp: Path) -> dict:
    model = ExportedModel(folder, provider="cpu")
    row = {"model": model.info.model, "folder": folder.name,
           "weights": (folder / fmt.WEIGHTS).stat().st_size if (folder / fmt.WEIGHTS).exists() else 0}
    conditionals = quantized_session(folder, fmt.CONDITIONALS, tmp)
    if isinstance(conditionals, str):
        row["nll_error"] = conditionals
    else:
        full = model.log_prob(images).astype(np.float64)
        quant = conditionals.run(["log_prob"], {"images": images.astype(np.int64)})[0].astype(np.float64)
        change = np.abs(quant - full)
        row.update(max_change=float(change.max()), mean_change=float(change.mean()), nll=float(-full.mean()))
    step = quantized_session(folder, fmt.STEP, tmp)
    if isinstance(step, str):
        row["sample_error"] = step
    else:
        noise = np.random.default_rng(0).random((n_samples, model.num_positions))
        ours = model.sample(n_samples, noise=noise).reshape(n_samples, -1)[:, model.order]
        theirs = step_loop(step, model.family, model.state_specs, model._initial, noise)
        row.update(same_images=float((ours == theirs).all(1).mean()), same_values=float((ours == theirs).mean()))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--data", default="/work/shared/data/binarized_mnist.npz")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args(argv)
    with np.load(args.data) as archive:
        images = archive["test"][: args.images, None].astype(np.int64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.folders:
            rows.append(measure(folder, images, args.samples, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print("| export | test NLL (float32) | max / mean abs change of log p(x), int8 | identical samples (images, values) |")
    print("|---|---|---|---|")
    for r in rows:
        nll = (f"{r['max_change']:.3g} / {r['mean_change']:.3g} nats" if "max_change" in r
               else f"fails: {r['nll_error']}")
        samples = (f"{r['same_images']:.0%}, {r['same_values']:.2%}" if "same_images" in r
                   else f"fails: {r['sample_error']}")
        print(f"| {r['folder']} ({r['model']}) | {r.get('nll', float('nan')):.2f} | {nll} | {samples} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
