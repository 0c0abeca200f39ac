"""Your own data, on data nobody here wrote: writes benchmarks/results/own_data.md.

Tabular (scikit-learn's bundled sets; every feature standardized by the training rows):

- breast cancer: the density is fit on 60% of the benign rows (seeded); the test set is the other
  benign rows and every malignant row (the anomalies);
- wine and iris: each class in turn is "normal" (60% of it to train), the other classes anomalies.

For each, AUROC of the anomaly score (-log p, or each detector's own) and the held-out mean
log-likelihood of the normal test rows (nats per row, in the raw features' units) of densreg's
real-valued models through ``densreg.sklearn`` (``gaussian-mixture``, components chosen on a
validation split; ``rnade``, hidden size chosen likewise, early-stopped) against scikit-learn's
``GaussianMixture`` (components by validation), ``KernelDensity`` (bandwidth by 5-fold CV),
``IsolationForest``, ``LocalOutlierFactor`` (novelty) and ``OneClassSVM``, and PyOD's ECOD and
COPOD when pyod is installed (``pip install 'densreg[benchmarks]'``; each test row scored alone, as
they recompute their ECDFs on what they score). Both Gaussian mixtures choose their components and
covariance regularization on the same grid (MIXTURE_GRID), by validation log-likelihood.

Images: the one-class protocol on scikit-learn's digits (8x8, values 0..16 written as 8-bit PNG
files, round(v * 255 / 16)): for each digit, 60% of its images are written to a folder and trained
through ``densreg train MODEL --images FOLDER`` (binarized by the recorded rule, g >= 128), the test
folder (the other 40% and every image of the other nine digits) is scored by ``densreg score
--images``; AUROC per digit against the same pixel-space baselines on the binarized pixels. densreg's
models there: bernoulli, markov (order 2), nade (32 hidden units, early-stopped) and the mixture of
Bernoullis of the ``densreg-mixture`` example plugin (components among MIXTURE_COMPONENTS by the valid
NLL of a 25% split of the training folder).

    python benchmarks/own_data.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn import datasets
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity, LocalOutlierFactor
from sklearn.svm import OneClassSVM

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED = 0
# (components, covariance regularization on standardized rows): both mixtures choose on the same grid
MIXTURE_COMPONENTS = (5, 10, 20)  # the Bernoulli mixture's (the densreg-mixture example plugin) on digits
MIXTURE_GRID = [(k, reg) for k in (1, 2, 3) for reg in (1e-6, 1e-2, 1e-1, 0.3)]


def split_normal(X, normal, seed=SEED, share=0.6):
    """(train rows, test rows, test labels 1 = anomaly): ``share`` of the normal rows train."""
    rng = np.random.default_rng(seed)
    normal_at = rng.permutation(np.flatnonzero(normal))
    cut = int(round(share * len(normal_at)))
    test_at = np.concatenate([normal_at[cut:], np.flatnonzero(~normal)])
    return X[normal_at[:cut]], X[test_at], (~normal[test_at]).astype(int)


def valid_split(X, seed=SEED, share=0.25):
    at = np.random.default_rng(seed + 1).permutation(len(X))
    cut = int(round(share * len(X)))
    return X[at[cut:]], X[at[:cut]]


def choose(make, grid, X):
    """The grid value whose model, fit on 75% of X, has the best mean log-likelihood on the rest."""
    fit_part, valid_part = valid_split(X)
    scores = {}
    for value in grid:
        try:
            scores[value] = make(value).fit(fit_part).score(valid_part)
        except Exception:  # noqa: BLE001 - a singular fit counts as the worst
            scores[value] = -np.inf
    return max(scores, key=scores.get)


class Standardized:
    """A scikit-learn density on rows standardized by the training rows; log densities in raw units."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X):
        self.mean, self.std = X.mean(0), np.where(X.std(0) > 0, X.std(0), 1.0)
        self.estimator.fit((X - self.mean) / self.std)
        return self

    def score_samples(self, X):
        return self.estimator.score_samples((X - self.mean) / self.std) - np.log(self.std).sum()

    def score(self, X):
        return float(np.mean(self.score_samples(X)))


def tabular_methods(quick: bool):
    """name -> (fit(train) -> object with score_samples (higher = more normal), is a density)."""
    from densreg.sklearn import DensityEstimator

    def densreg_gm(X):
        def make(setting):
            return DensityEstimator("gaussian-mixture", config={"components": setting[0], "reg": setting[1]},
                                    valid_fraction=0)
        return make(choose(make, MIXTURE_GRID, X)).fit(X)

    def densreg_rnade(X):
        epochs = 30 if quick else 200

        def make(hidden):
            return DensityEstimator("rnade", config={"hidden": hidden, "components": 2}, epochs=epochs,
                                    batch_size=32, lr=5e-3, patience=10, valid_fraction=0.2)
        return make(choose(make, (8, 32), X)).fit(X)

    def sk_gm(X):
        def make(setting):
            return Standardized(GaussianMixture(setting[0], reg_covar=setting[1], random_state=SEED))
        return make(choose(make, MIXTURE_GRID, X)).fit(X)

    def sk_kde(X):
        search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1, 1, 15)}, cv=5)
        mean, std = X.mean(0), np.where(X.std(0) > 0, X.std(0), 1.0)
        search.fit((X - mean) / std)
        return Standardized(KernelDensity(bandwidth=search.best_params_["bandwidth"])).fit(X)

    methods = {
        "densreg gaussian-mixture": (densreg_gm, True),
        "densreg rnade": (densreg_rnade, True),
        "sklearn GaussianMixture": (sk_gm, True),
        "sklearn KernelDensity": (sk_kde, True),
        "sklearn IsolationForest": (lambda X: Standardized(IsolationForest(random_state=SEED)).fit(X), False),
        "sklearn LocalOutlierFactor": (lambda X: Standardized(LocalOutlierFactor(novelty=True)).fit(X), False),
        "sklearn OneClassSVM": (lambda X: Standardized(OneClassSVM(gamma="scale", nu=0.1)).fit(X), False),
    }
    try:
        from pyod.models.copod import COPOD
        from pyod.models.ecod import ECOD

        class PyOD:
            def __init__(self, detector):
                self.detector = detector

            def fit(self, X):
                self.detector.fit(X)
                return self

            def score_samples(self, X):
                # one row at a time: ECOD and COPOD recompute their ECDFs on the training rows plus the rows
                # scored, so a batch of mostly anomalies would move the normal rows' scores
                return -np.array([self.detector.decision_function(row[None])[0] for row in X])

        methods["PyOD ECOD"] = (lambda X: PyOD(ECOD()).fit(X), False)
        methods["PyOD COPOD"] = (lambda X: PyOD(COPOD()).fit(X), False)
    except ImportError:
        pass
    return methods


def tabular_tasks():
    """(name, X, normal mask) per task."""
    tasks = []
    cancer = datasets.load_breast_cancer()
    tasks.append(("breast cancer (benign normal)", cancer.data, cancer.target == 1))
    for name, loader in (("wine", datasets.load_wine), ("iris", datasets.load_iris)):
        data = loader()
        for label in np.unique(data.target):
            tasks.append((f"{name} class {label}", data.data, data.target == label))
    return tasks


def run_tabular(quick: bool) -> tuple[list[str], dict, dict, list[str]]:
    methods = tabular_methods(quick)
    auroc, loglik = {}, {}
    tasks = tabular_tasks()
    for task, X, normal in tasks:
        train, test, anomaly = split_normal(X, normal)
        for name, (make, density) in methods.items():
            start = time.perf_counter()
            fitted = make(train)
            score = fitted.score_samples(test)
            auroc[task, name] = roc_auc_score(anomaly, -score)
            if density:
                loglik[task, name] = float(np.mean(score[anomaly == 0]))
            print(f"{task:32s} {name:28s} AUROC {auroc[task, name]:.3f}"
                  + (f"  held-out log-lik {loglik[task, name]:9.2f}" if density else "")
                  + f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    return [t for t, _, _ in tasks], auroc, loglik, list(methods)


# -- images -------------------------------------------------------------------------------------------
def write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")


def densreg_cli(*args) -> None:
    from densreg.app.cli import cli

    cli.main([str(a) for a in args], standalone_mode=False)


def mixture_components(folder: Path) -> int:
    """The mixture's components, chosen by the valid NLL of a 25% split of the training folder."""
    import densreg

    valid = {}
    for components in MIXTURE_COMPONENTS:
        checkpoint = folder / f"mixture{components}.safetensors"
        densreg_cli("train", "mixture", "--set", f"components={components}", "--images", folder / "train",
                    "--valid-fraction", 0.25, "--seed", SEED, "--out", checkpoint)
        valid[components] = densreg.load_checkpoint(checkpoint)[1].metrics["valid_nll_nats"]
    return min(valid, key=valid.get)


def run_images(quick: bool, work: Path):
    digits = datasets.load_digits()
    pictures = np.round(digits.images * 255 / 16).astype(np.uint8)  # (N, 8, 8) 8-bit
    binary = (pictures >= 128).reshape(len(pictures), -1).astype(float)  # the recorded rule, for baselines
    models = {"densreg bernoulli": ["bernoulli"], "densreg markov": ["markov", "--set", "order=2"],
              "densreg nade": ["nade", "--set", "hidden=32", "--epochs", 20 if quick else 200, "--patience", 15,
                               "--batch-size", 32, "--lr", 0.01, "--seed", SEED],
              "densreg mixture": ["mixture"]}
    baselines = {
        "sklearn GaussianMixture": lambda X: GaussianMixture(
            choose(lambda c: GaussianMixture(c, covariance_type="diag", random_state=SEED), (1, 2, 4, 8), X),
            covariance_type="diag", random_state=SEED).fit(X),
        "sklearn KernelDensity": lambda X: KernelDensity(bandwidth=GridSearchCV(
            KernelDensity(), {"bandwidth": np.logspace(-0.5, 1, 10)}, cv=5).fit(X).best_params_["bandwidth"]).fit(X),
        "sklearn IsolationForest": lambda X: IsolationForest(random_state=SEED).fit(X),
        "sklearn LocalOutlierFactor": lambda X: LocalOutlierFactor(novelty=True).fit(X),
        "sklearn OneClassSVM": lambda X: OneClassSVM(gamma="scale", nu=0.1).fit(X),
    }
    auroc = {}
    classes = range(3) if quick else range(10)
    for digit in classes:
        normal = digits.target == digit
        at = np.arange(len(pictures))
        train_at, test_at, anomaly = split_normal(at, normal)
        folder = work / f"digit{digit}"
        write_pngs(folder / "train", pictures[train_at])
        write_pngs(folder / "test", pictures[test_at])
        for name, args in models.items():
            checkpoint, table = folder / f"{args[0]}.safetensors", folder / f"{args[0]}.csv"
            start = time.perf_counter()
            if args[0] == "mixture":
                args = [*args, "--set", f"components={mixture_components(folder)}"]
            densreg_cli("train", *args, "--images", folder / "train", "--out", checkpoint)
            densreg_cli("score", checkpoint, "--images", folder / "test", "--out", table, "--top", 0)
            score = np.loadtxt(table, delimiter=",", skiprows=1, usecols=2)
            auroc[digit, name] = roc_auc_score(anomaly, score)
            print(f"digit {digit} {name:28s} AUROC {auroc[digit, name]:.3f} ({time.perf_counter() - start:.1f} s)",
                  flush=True)
        for name, make in baselines.items():
            fitted = make(binary[train_at])
            auroc[digit, name] = roc_auc_score(anomaly, -fitted.score_samples(binary[test_at]))
            print(f"digit {digit} {name:28s} AUROC {auroc[digit, name]:.3f}", flush=True)
    return list(classes), auroc, [*models, *baselines]


def table(rows, columns, cell) -> list[str]:
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    return lines + [f"| {row} | " + " | ".join(cell(row, column) for column in columns) + " |" for row in rows]


def best_marked(values: dict, row, column, methods, fmt):
    value = values.get((row, column))
    if value is None:
        return ""
    best = max(values[row, m] for m in methods if (row, m) in values)
    text = fmt.format(value)
    return f"**{text}**" if value == best else text


def shortfalls(rows, values, methods, what) -> list[str]:
    """Rows where densreg's best is below the best other method."""
    notes = []
    for row in rows:
        ours = max((values[row, m], m) for m in methods if m.startswith("densreg") and (row, m) in values)
        theirs = max((values[row, m], m) for m in methods if not m.startswith("densreg") and (row, m) in values)
        if ours[0] < theirs[0] - 5e-4:
            notes.append(f"- {row}: densreg's best {what} {ours[0]:.3f} ({ours[1]}) < {theirs[0]:.3f} ({theirs[1]})")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Short trainings and three digits (a smoke run).")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    tasks, auroc, loglik, methods = run_tabular(args.quick)
    with tempfile.TemporaryDirectory() as work:
        digits, image_auroc, image_methods = run_images(args.quick, Path(work))
    seconds = time.perf_counter() - start
    densities = [m for m in methods if (tasks[0], m) in loglik]
    lines = [
        "# Your own data: densreg against scikit-learn and PyOD (benchmarks/own_data.py)", "",
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python benchmarks/own_data.py"
        f"{' --quick' if args.quick else ''}` in {seconds / 60:.1f} minutes on {platform.machine()} "
        f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}), one torch thread. Protocols in the script's docstring; "
        "best per row in bold.", "",
        "## Tabular: AUROC (anomalies = the other class; higher is better)", "",
        *table(tasks, methods, lambda r, c: best_marked(auroc, r, c, methods, "{:.3f}")), "",
        "## Tabular: held-out mean log-likelihood of normal rows (nats per row, raw units; higher is better)", "",
        *table(tasks, densities, lambda r, c: best_marked(loglik, r, c, densities, "{:.2f}")), "",
        "## Digits, one class normal, trained through `densreg train --images` (AUROC)", "",
        *table([f"digit {d}" for d in digits], image_methods,
               lambda r, c: best_marked({(f"digit {d}", m): v for (d, m), v in image_auroc.items()}, r, c,
                                        image_methods, "{:.3f}")), "",
        "## Where densreg falls short", "",
        *(shortfalls(tasks, auroc, methods, "AUROC") or ["- tabular AUROC: none"]),
        *(shortfalls(tasks, loglik, densities, "log-likelihood") or ["- held-out log-likelihood: none"]),
        *(shortfalls([f"digit {d}" for d in digits], {(f"digit {d}", m): v for (d, m), v in image_auroc.items()},
                     image_methods, "AUROC") or ["- digits AUROC: none"]), "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "own_data.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
