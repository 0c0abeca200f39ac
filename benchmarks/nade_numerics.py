"""Numerics of NADE's eager passes against the vectorised pass (issue 12, item 8).

Three passes on the trained ``models/nade-mnist.safetensors`` and binarized-MNIST test
images, in float32 and float64: the vectorised pass (``traced_conditional_logits``, what
torch.compile and ONNX export trace), the blocked pass (``BlockedNADE``: running sums position
by position, a backward that recomputes the activations; the eager pass for binary data until
the pass by states replaced it on CPU) and the pass by states (``StateNADE``: each distinct
running sum once, its logits as one dot product per (image, position), a backward over states).
Reported: max |Δ log_prob| in nats and the relative difference ‖g - g'‖ / ‖g'‖ of the gradient
of the mean NLL over all parameters, for the states against the blocked pass (the change an
existing user sees) and for each pass against the float64 vectorised pass (the closest to
exact), so the change can be read against the float32 error every pass already has. Writes
benchmarks/results/nade_numerics.md.

    python benchmarks/nade_numerics.py --data binarized_mnist.npz [--images 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import densreg.plugins.nade as nade_module
from densreg.registry import load_checkpoint
from densreg.registry.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


def log_prob_and_gradient(model, x, kind: str):
    """log_prob (B,) and the gradient of the mean NLL over all parameters, float64, through ``kind``:
    "vectorised", "blocked" or "states"."""
    model.zero_grad()
    if kind == "vectorised":
        logits = model.traced_conditional_logits(x)
        value = torch.log_softmax(logits, -1).gather(-1, model.to_sequence(x).unsqueeze(-1)).squeeze(-1).sum(-1)
    else:
        saved = nade_module.state_layout
        if kind == "blocked":
            nade_module.state_layout = lambda *args: None
        try:
            value = model.log_prob(x)
        finally:
            nade_module.state_layout = saved
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
    kinds = ("vectorised", "blocked", "states")
    for dtype in (torch.float64, torch.float32):
        model = model.to(dtype)
        for kind in kinds:
            results[dtype, kind] = log_prob_and_gradient(model, x, kind)
    exact_lp, exact_g = results[torch.float64, "vectorised"]
    rows = []
    for dtype in (torch.float64, torch.float32):
        (lp_b, g_b), (lp_s, g_s) = results[dtype, "blocked"], results[dtype, "states"]
        errors = " / ".join(f"{(results[dtype, k][0] - exact_lp).abs().max():.3g}" for k in kinds)
        gradient_errors = " / ".join(f"{(results[dtype, k][1] - exact_g).norm() / exact_g.norm():.3g}" for k in kinds)
        rows.append(f"| {str(dtype)[6:]} | {(lp_s - lp_b).abs().max():.3g} | {(g_s - g_b).norm() / g_b.norm():.3g} | "
                    f"{errors} | {gradient_errors} |")
    text = "\n".join([
        "# NADE: the eager passes (blocked, by states) against the vectorised pass",
        "",
        f"`python benchmarks/nade_numerics.py --images {args.images}`: `{Path(args.checkpoint).name}`, the first "
        f"{args.images} binarized-MNIST test images; log_prob in nats per image, gradient of the mean NLL over "
        "all parameters. The pass by states is what binary data takes on CPU now; the blocked pass is what it took "
        "before (and still takes on other devices and for K > 2).",
        "",
        "| dtype | max abs Δ log_prob, states vs blocked | relative gradient difference, states vs blocked | "
        "max abs error vs float64 vectorised (vectorised / blocked / states) | "
        "relative gradient error vs float64 (vectorised / blocked / states) |",
        "|---|---|---|---|---|",
        *rows,
    ]) + "\n"
    atomic_write_bytes(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
