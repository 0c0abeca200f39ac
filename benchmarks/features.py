"""Linear probes on learned features: writes benchmarks/results/features.md.

Each model trained on the `digits` dataset (scikit-learn's 8x8 digits, binarized; 1197 train,
300 valid, 300 test images, labels 0..9) encodes every image with ``model.features``; a logistic
regression (scikit-learn, lbfgs, features standardised on the train split) predicts the digit.
Its inverse regularization C is chosen once per representation on the valid split (grid
0.001..100, trained on the whole train split) and then kept fixed. Baselines: the raw 64 pixels, and
PCA of the pixels with as many components as the model has features (at most 64, the pixel count).
Sample efficiency: probes trained on random class-balanced subsets of the train split (5 draws each)
give the mean test accuracy per size, and the smallest size whose mean reaches 90%.

    python benchmarks/features.py [--model NAME=CKPT ...]   # default: models/*-digits.safetensors
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {name: f"models/{name}-digits.safetensors" for name in ("nade", "pixelrnn", "row-lstm", "diagonal-bilstm")}
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
SIZES = (20, 50, 100, 200, 400, 800, 1197)
DRAWS = 5
TARGET = 0.90


def probe(train_x, train_y, test_x, test_y, c: float) -> float:
    """Test accuracy of a logistic regression with inverse regularization ``c`` on standardised features."""
    scaler = StandardScaler().fit(train_x)
    classifier = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(train_x), train_y)
    return float(classifier.score(scaler.transform(test_x), test_y))


def balanced_subset(labels: np.ndarray, size: int, rng) -> np.ndarray:
    """Indices of ``size`` examples, as equal a share of each class as the split allows."""
    if size >= len(labels):
        return np.arange(len(labels))
    per_class = [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    chosen, i = [], 0
    while len(chosen) < size:
        group = per_class[i % len(per_class)]
        take = i // len(per_class)
        if take < len(group):
            chosen.append(group[take])
        i += 1
    return np.array(chosen)


def evaluate(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """{C, valid, test, curve: {size: mean test accuracy}, needed: smallest size reaching TARGET or None}."""
    (tx, ty), (vx, vy), (sx, sy) = splits["train"], splits["valid"], splits["test"]
    valid = {c: probe(tx, ty, vx, vy, c) for c in C_GRID}
    c = max(C_GRID, key=lambda value: (valid[value], -value))  # ties: the stronger regularization
    rng = np.random.default_rng(0)
    curve = {}
    for size in SIZES:
        draws = 1 if size >= len(ty) else DRAWS
        curve[size] = float(np.mean([probe(tx[idx], ty[idx], sx, sy, c)
                                     for idx in (balanced_subset(ty, size, rng) for _ in range(draws))]))
    needed = next((size for size in SIZES if curve[size] >= TARGET), None)
    return {"C": c, "valid": valid[c], "test": curve[max(SIZES)], "curve": curve, "needed": needed}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--out", default=str(RESULTS / "features.md"))
    args = parser.parse_args(argv)

    import torch

    import densreg
    from densreg.app.features import extract_features
    from densreg.plugins.datasets.digits import load_digit_labels

    torch.set_num_threads(1)
    start = time.perf_counter()
    images = {split: densreg.load_split("digits", split) for split in ("train", "valid", "test")}
    labels = {split: load_digit_labels(split) for split in images}
    pixels = {split: images[split].reshape(len(images[split]), -1).numpy().astype(np.float64) for split in images}
    rows = {"raw pixels": (64, evaluate({s: (pixels[s], labels[s]) for s in images}))}
    pca_rows: dict[int, list[str]] = {}  # components -> the models with that many features (capped at 64)
    for name, path in (dict(item.split("=", 1) for item in args.model) or MODELS).items():
        model, info = densreg.load_checkpoint(ROOT / path)
        feats = {s: extract_features(model, images[s]) for s in images}
        dims = feats["train"].shape[1]
        metrics = info.metrics or {}
        trained = f"{metrics.get('epochs', '?')} epochs, valid NLL {metrics.get('valid_nll_nats', float('nan')):.2f}"
        rows[f"{name} (`{path}`: {trained})"] = (dims, evaluate({s: (feats[s], labels[s]) for s in images}))
        k = min(dims, 64)
        pca_rows.setdefault(k, []).append(name)
        print(f"{name}: done", file=sys.stderr)
    for k, names in sorted(pca_rows.items()):
        pca = PCA(n_components=k, random_state=0).fit(pixels["train"])
        rows[f"PCA of pixels, {k} components (as {', '.join(names)})"] = (
            k, evaluate({s: (pca.transform(pixels[s]), labels[s]) for s in images}))
    seconds = time.perf_counter() - start
    lines = ["# Linear probes on digits: learned features against pixels and PCA", "",
             f"Written by `benchmarks/features.py` (rerun it to reproduce); {seconds:.0f} s on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
             "Logistic regression on standardised features; C chosen on the valid split (300 images) from "
             f"{', '.join(map(str, C_GRID))}, then fixed. Test split: 300 images. Subset accuracies are means "
             f"over {DRAWS} class-balanced random draws of the train split.", "",
             "| representation | dims | C | valid acc | test acc (1197 labels) | labels to reach 90% | "
             + " | ".join(f"acc @ {s}" for s in SIZES[:-1]) + " |",
             "|" + "---|" * (6 + len(SIZES) - 1)]
    for name, (dims, r) in rows.items():
        needed = str(r["needed"]) if r["needed"] else f"not reached (≤ {max(SIZES)})"
        lines.append(f"| {name} | {dims} | {r['C']:g} | {r['valid']:.3f} | {r['test']:.3f} | {needed} | "
                     + " | ".join(f"{r['curve'][s]:.3f}" for s in SIZES[:-1]) + " |")
    lines += ["", "Features: NADE, the hidden units after the whole image (H); pixelrnn, every LSTM layer's final "
              "hidden state (layers x hidden); row-lstm and diagonal-bilstm, the last layer's feature maps at every "
              "pixel, flattened (hidden x H x W). PCA cannot exceed the 64 pixels, so it is capped there; with 64 "
              "components it is a rotation of the pixels, and standardising each component magnifies the low-variance "
              "ones, which costs accuracy when labels are few.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
