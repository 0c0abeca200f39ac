"""benchmarks/continuous.py runs end to end on a tiny budget and writes its table."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_continuous_benchmark_writes_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("continuous_benchmark", ROOT / "benchmarks" / "continuous.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "continuous.md"
    module.main(["--train", "300", "--minutes", "0.02", "--iterations", "3", "--components", "1,2", "--hidden", "8",
                 "--maf-hidden", "8",
                 "--out", str(out)])
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "test LL" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] and len(rows) == 4, text
    assert {"rnade (densreg)", "gaussian-mixture (densreg, EM)", "GaussianMixture (scikit-learn)"} <= {
        row.split(" | ")[0].lstrip("| ") for row in rows}
    assert "300 train / 4000 valid / 10000 test patches" in text
    assert "MADE hidden (8, 8)" in text  # --maf-hidden reaches the flow
