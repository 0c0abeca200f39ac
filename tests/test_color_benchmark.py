"""benchmarks/color.py: a closed-form row is the model's real test NLL, with its sample grid; a later run of
another subset keeps the earlier rows."""

import json
import math
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import color  # noqa: E402


def test_a_subset_run_writes_its_row_grid_and_keeps_earlier_rows(tmp_path, monkeypatch):
    load_split = color.load_split
    monkeypatch.setattr(color, "load_split", lambda name, split: load_split(name, split)[:400])  # fast
    earlier = {"model": "nade", "config": {"hidden": 1}, "options": {"batch_size": 1, "lr": 1.0}, "parameters": 9,
               "train_minutes": 1.0, "epochs": 2, "best_epoch": 2, "valid_bits_per_dim": 2.0, "test_nll_nats": 1.0,
               "test_bits_per_dim": 2.5, "sample_seconds": 1.0, "samples_png": "color_nade.png"}
    (tmp_path / "color.json").write_text(json.dumps([earlier]))
    [bernoulli, nade] = color.main(["--models", "bernoulli", "--results", str(tmp_path)])
    assert nade == earlier and bernoulli["model"] == "bernoulli"
    assert 2.5 < bernoulli["test_bits_per_dim"] < math.log2(8) + 0.5
    assert abs(bernoulli["test_bits_per_dim"] - bernoulli["test_nll_nats"] / (768 * math.log(2))) < 1e-9
    table = (tmp_path / "color.md").read_text()
    assert table.index("| bernoulli |") < table.index("| nade |")  # the registry's order, not the run's
    assert f"**{bernoulli['test_bits_per_dim']:.3f}**" in table and "closed form" in table
    with Image.open(tmp_path / "color_bernoulli.png") as grid, Image.open(tmp_path / "color_data.png") as data:
        assert grid.mode == data.mode == "RGB" and grid.size == data.size == ((8 * 17 + 1) * 3,) * 2
