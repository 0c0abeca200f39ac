"""Out-of-distribution evaluation: detection metrics, and the perturbed inputs a background model trains on."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from densreg.registry.errors import ConfigError


def perturb_images(images: np.ndarray, rate: float, num_categories: int, seed: int = 0) -> np.ndarray:
    """Ren et al. (2019)'s input perturbation: each value, independently with probability ``rate``,
    is replaced by a value drawn uniformly from 0..K-1 (so it may stay the same). Same shape and
    dtype; one fixed draw from ``numpy.random.default_rng(seed)``."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"perturbation rate must lie in [0, 1], got {rate}")
    images = np.asarray(images)
    rng = np.random.default_rng(seed)
    replace = rng.random(images.shape) < rate
    noise = rng.integers(0, num_categories, size=images.shape)
    return np.where(replace, noise, images).astype(images.dtype)


def detection_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """Separating out-of-distribution inputs (positive) from in-distribution ones by a score that is
    higher for the former: AUROC, AUPR (out-of-distribution positive) and the false positive rate at
    the first threshold that reaches 95% true positives."""
    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    scores = np.concatenate([in_scores, out_scores]).astype(np.float64)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auroc": float(roc_auc_score(labels, scores)), "aupr": float(average_precision_score(labels, scores)),
            "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}


def roc_points(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) of the ROC curve, out-of-distribution positive."""
    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([in_scores, out_scores]).astype(np.float64))
    return fpr, tpr
