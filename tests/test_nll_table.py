"""benchmarks/nll_table.py with --from-checkpoint: evaluates a checkpoint, reads its log, keeps other rows."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densreg.registry import create_model, save_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "nll_table.py"


@pytest.mark.slow
def test_from_checkpoint_row(tmp_path, mnist_npz):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "n.safetensors", create_model("nade", hidden=4), "nade", metrics={"best_epoch": 2})
    (tmp_path / "n.log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_nll": 100.0, "valid_nll": 99.0, "seconds": 100.0, "images_per_s": 500.0,
                    "images": 1000}) + "\n"
        for e in (1, 2, 3)))
    (tmp_path / "nll.json").write_text(json.dumps({"machine": {}, "rows": [
        {"label": "bernoulli", "config": {"alpha": 1.0}, "parameters": 784, "epochs": None,
         "budget": "closed form (counting)", "train_seconds": 1.0, "nll_nats": 205.79, "bits_per_dim": 0.3787,
         "reference": 205.8, "source": "x", "train_images_per_s": 1.0, "eval_images_per_s": 1.0}]}))
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(mnist_npz), "--results", str(tmp_path),
                           "--from-checkpoint", f"nade={tmp_path / 'n.safetensors'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {r["label"]: r for r in json.loads((tmp_path / "nll.json").read_text())["rows"]}
    assert set(rows) == {"bernoulli", "nade"}
    nade = rows["nade"]
    assert nade["epochs"] == 3 and nade["best_epoch"] == 2 and nade["train_seconds"] == 300.0
    assert nade["train_images"] == 3000  # epochs of 1000 images (chunks), not passes over the split
    assert nade["parameters"] == 2 * 784 * 4 + 784 + 4 and nade["reference"] == 88.86
    assert nade["nll_nats"] > 88 and abs(nade["bits_per_dim"] - nade["nll_nats"] / (784 * 0.6931471805599453)) < 1e-9
    table = (tmp_path / "nll.md").read_text()
    assert "| nade |" in table and "| bernoulli |" in table and "3 (best 2), 3,000 images (0.06 passes)" in table
