"""Fitting a model: closed form where the model has one, gradient training otherwise."""

from __future__ import annotations

import time

import torch

from .errors import ConfigError
from .evaluation import evaluate


def fit(model, train: torch.Tensor, valid: torch.Tensor | None = None, **options) -> dict:
    """Fit ``model`` to int64 images (N, C, H, W); return metrics (NLL in nats)."""
    start = time.perf_counter()
    if model.closed_form:
        if options:
            raise ConfigError(f"{type(model).__name__} fits in closed form; it takes no training "
                              f"options ({', '.join(sorted(options))})")
        metrics = dict(model.fit_closed_form(train))
    else:
        raise ConfigError(f"{type(model).__name__} has no closed-form fit and gradient training is not "
                          "available in this version")
    if valid is not None and len(valid):
        metrics["valid_nll_nats"] = evaluate(model, valid)["nll_nats"]
    metrics["seconds"] = time.perf_counter() - start
    return metrics
