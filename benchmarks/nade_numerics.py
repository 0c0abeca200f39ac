"""Numerics of NADE's eager blocked pass against the vectorised pass it replaced (issue 12, item 8).

The eager pass (``BlockedNADE``: running sums position by position, a backward that
recomputes the activations) and the vectorised pass (``traced_conditional_logits``, the
previous implementation, still what torch.compile and ONNX export trace) on the trained
``models/nade-mnist.safetensors`` and binarized-MNIST test images, in float32 and float64:
max |Δ log_prob| in nats, and the relative difference ‖g_eager - g_vectorised‖ / ‖g_vectorised‖
of the gradient of the mean NLL over all parameters. Each is also compared with the float64
vectorised pass (the closest to exact), so the change can be read against the float32 error
both passes already have. Writes benchmarks/results/nade_numerics.md.

    python benchmarks/nade_numerics.py --data binarized_mnist.npz [--images 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from densreg.registry import load_checkpoint
from densreg.registry.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


def log_prob_and_gradient(model, x, traced: bool):
    model.zero_grad()
    if traced:
        logits = model.traced_conditional_logits(x)
        value = torch.log_softmax(logits, -1).gather(-1, model.to_sequence(x).unsqueeze(-1)).squeeze(-1).sum(-1)
    else:
        value = model.log_prob(x)
    (-value.mean()).backward()
    return value.detach().double(), torch.cat([p.grad.flatten().double() for p in model.parameters()])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="binarized_mnist.npz")
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "nade-mnist.safetensors"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nade_numerics.md"))
    args = parser.parse_args(argv)
    x = torch.from_numpy(np.load(args.data)["test"][:args.images].astype(np.int64))[:, None]
    model, _ = load_checkpoint(args.checkpoint)
    results = {}
    for dtype in (torch.float64, torch.float32):
        model = model.to(dtype)
        for traced in (True, False):
            results[dtype, traced] = log_prob_and_gradient(model, x, traced)
    exact_lp, exact_g = results[torch.float64, True]
    rows = []
    for dtype in (torch.float64, torch.float32):
        (lp_v, g_v), (lp_e, g_e) = results[dtype, True], results[dtype, False]
        rows.append(f"| {str(dtype)[6:]} | {(lp_e - lp_v).abs().max():.3g} | {(g_e - g_v).norm() / g_v.norm():.3g} | "
                    f"{(lp_v - exact_lp).abs().max():.3g} / {(lp_e - exact_lp).abs().max():.3g} | "
                    f"{(g_v - exact_g).norm() / exact_g.norm():.3g} / {(g_e - exact_g).norm() / exact_g.norm():.3g} |")
    text = "\n".join([
        "# NADE: eager blocked pass vs the vectorised pass",
        "",
        f"`python benchmarks/nade_numerics.py --images {args.images}`: `{Path(args.checkpoint).name}`, the first "
        f"{args.images} binarized-MNIST test images; log_prob in nats per image, gradient of the mean NLL over "
        "all parameters.",
        "",
        "| dtype | max abs Δ log_prob (eager vs vectorised) | relative gradient difference | "
        "max abs error vs float64 vectorised (vectorised / eager) | relative gradient error vs float64 (vectorised / eager) |",
        "|---|---|---|---|---|",
        *rows,
    ]) + "\n"
    atomic_write_bytes(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
