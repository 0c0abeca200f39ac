"""benchmarks/features.py: class-balanced subsets, and the probe's accuracy curve on data whose answer is known."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import features  # noqa: E402


def test_balanced_subsets_take_each_class_in_turn():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    chosen = features.balanced_subset(labels, 12, np.random.default_rng(0))
    assert len(set(chosen.tolist())) == 12
    assert np.bincount(labels[chosen]).tolist() == [5, 3, 4]  # class 1 runs out after 3
    assert len(features.balanced_subset(labels, 100, np.random.default_rng(0))) == len(labels)


def test_probe_learns_a_separable_problem_and_fails_on_noise():
    rng = np.random.default_rng(0)

    def split(n, informative):
        y = np.arange(n) % 10
        x = rng.normal(size=(n, 12))
        if informative:
            x[np.arange(n), y] += 8.0  # the class is the feature that lights up
        return x, y

    sizes = {"train": 1197, "valid": 300, "test": 300}
    easy = features.evaluate({s: split(n, True) for s, n in sizes.items()})
    assert easy["test"] == 1.0 and easy["needed"] == features.SIZES[0]
    noise = features.evaluate({s: split(n, False) for s, n in sizes.items()})
    assert noise["test"] < 0.25 and noise["needed"] is None
