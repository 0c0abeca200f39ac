"""benchmarks/ood.py: its out-of-distribution sets are what its docstring says, and its verdicts
against the issue's goals follow the numbers."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ood  # noqa: E402


def test_sets_are_binary_mnist_sized_and_built_as_stated(mnist_npz):
    pytest.importorskip("skimage")
    test_in, sets, reference = ood.build_sets(str(mnist_npz), 40, seed=1)
    with np.load(mnist_npz) as archive:
        test, train = archive["test"].astype(np.int64), archive["train"]
    known = {image.tobytes() for image in test}
    for images in (test_in, reference, *sets.values()):
        assert images.shape == (40, 1, 28, 28) and set(np.unique(images)) <= {0, 1}
    assert all(image[0].tobytes() in known for image in test_in)
    assert all(image[0, ::-1].tobytes() in known for image in sets["flipped"])
    assert all((1 - image[0]).tobytes() in known for image in sets["inverted"])
    assert abs(sets["noise"].mean() - train.mean()) < 0.01
    assert not any(image[0].tobytes() in known for image in sets["photos"])
    assert 0.05 < sets["digits"].mean() < 0.6


def test_goal_verdicts_follow_the_numbers():
    def row(auroc):
        return {"auroc": auroc, "aupr": auroc, "fpr_at_95_tpr": 1 - auroc, "nll_in": 90.0, "nll_out": 100.0}

    results = {"a": {("easy", "nll"): row(0.99), ("easy", "complexity"): row(0.5),
                     ("hard", "nll"): row(0.6), ("hard", "complexity"): row(0.8)},
               "b": {("easy", "nll"): row(0.97), ("easy", "complexity"): row(0.6),
                     ("hard", "nll"): row(0.7), ("hard", "complexity"): row(0.65)}}
    text = ood.write_markdown(results, 10, 1.0, 1, "a")
    assert "- easy: best AUROC 0.990 (a, nll), which reaches 0.95." in text
    assert ("- hard: best AUROC 0.800 (a, complexity), which does NOT reach 0.95. Raw NLL is below 0.9 for a, b; "
            "a corrected score beats it for a, not for b.") in text
    assert "| a | nll | **0.990** | 0.600 |" in text
