"""Write models/catalog.json, the pretrained catalog (densreg.registry.pretrained), from the records.

Per entry, every figure is read, not typed: the checkpoint's sha256, size and parameter count from
the file in models/ (parameters: the model's free parameters, as `densreg info` counts them), the test NLL (nats per image, test split, image count), epochs and training
seconds from the row of benchmarks/results/nll.json that measured it (its config must equal the
checkpoint's), the data's sha256 from the binarized-MNIST reader's published split checksums. What
only a person can state (license, intended use, limitations) is written here, per entry.
Run: python tools/pretrained_catalog.py (then check `git diff models/catalog.json`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from densreg.plugins.datasets.mnist import MNIST_SHA256
from densreg.registry import api
from densreg.registry.checkpoint import load_checkpoint
from densreg.registry.pretrained import file_sha256

ROOT = Path(__file__).resolve().parent.parent
MODELS, NLL = ROOT / "models", ROOT / "benchmarks" / "results" / "nll.json"
LICENSE = "MIT (densreg's license; the weights ship in the densreg package)"
DATASET = "binarized-mnist"
# catalog name -> (checkpoint in models/, the label of its row in nll.json)
ENTRIES = {
    "nade/binarized-mnist": ("nade-mnist.safetensors", "nade"),
    "row-lstm/binarized-mnist": ("row-lstm7w32-mnist.safetensors", "row-lstm-7w32"),
    "diagonal-bilstm/binarized-mnist": ("diagonal-bilstm4-mnist.safetensors", "diagonal-bilstm-4"),
    "pixelrnn/binarized-mnist": ("pixelrnn-mnist.safetensors", "pixelrnn"),
    "markov/binarized-mnist": ("markov-mnist.safetensors", "markov-1"),
}
INTENDED_USE = ("research, teaching and testing of exact-likelihood density models: log-likelihoods (nats per "
                "image) and samples of 28x28 binarized MNIST digits, and a worked example of a densreg export")


def limitations(row: dict) -> str:
    reference = (f" (published for this kind of model: {row['reference']:.2f} nats, {row['source']})"
                 if row.get("reference") else "")
    return (f"trained only on binarized MNIST (Larochelle & Murray 2011), on CPU: its test NLL is "
            f"{row['nll_nats']:.2f} nats{reference}; likelihoods of images unlike binarized MNIST digits are not "
            "calibrated (out-of-distribution images can score high: see densreg score --method likelihood-ratio); "
            "not meant for decisions about people")


def entry(name: str, filename: str, row: dict) -> dict:
    path = MODELS / filename
    model, info = load_checkpoint(path)
    if info.config != row["config"]:
        sys.exit(f"{filename}: config {info.config} is not the one nll.json measured ({row['config']})")
    parameters = int(model.free_parameters())
    evaluation = {"test_nll_nats": row["nll_nats"], "split": "test", "images": row["images"],
                  "measured_by": "benchmarks/nll_table.py (benchmarks/results/nll.json)"}
    seconds = row.get("train_seconds")
    return {
        "name": name, "file": filename, "model": info.qualified_name, "dataset": DATASET,
        "test_nll_nats": row["nll_nats"], "test_split": "test", "test_images": row["images"],
        "parameters": parameters, "bytes": path.stat().st_size, "sha256": file_sha256(path), "license": LICENSE,
        "card": {
            "dataset": {"name": DATASET, "preprocessing": api.get_dataset(DATASET).description,
                        "sha256": dict(MNIST_SHA256)},
            "evaluation": evaluation,
            "training": {"epochs": row["epochs"] if row["epochs"] is not None else "closed form (counting)",
                         "seconds": seconds if seconds is not None else "unknown"},
            "license": LICENSE, "intended_use": INTENDED_USE, "limitations": limitations(row),
        },
    }


def main() -> None:
    rows = {row["label"]: row for row in json.loads(NLL.read_text())["rows"]}
    catalog = {"format": "densreg-pretrained/1",
               "models": [entry(name, filename, rows[label]) for name, (filename, label) in ENTRIES.items()]}
    (MODELS / "catalog.json").write_text(json.dumps(catalog, indent=1) + "\n")
    print(f"wrote {MODELS / 'catalog.json'} ({len(catalog['models'])} models)")


if __name__ == "__main__":
    main()
