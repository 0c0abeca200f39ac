"""The exponential moving average of a model's weights (the training option ``ema``).

The average is a list of tensors, one per ``model.parameters()`` in their order and shape; a resume
state stores it as the tensors ``ema.I``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def start_average(model) -> list[torch.Tensor]:
    """A new average: a copy of the model's current weights."""
    return [p.detach().clone() for p in model.parameters()]


def move_average(averaged: list[torch.Tensor], weights: list[torch.Tensor], ema: float) -> None:
    """Move ``averaged`` in place toward ``weights`` (the detached parameters) by (1 - ema)."""
    torch._foreach_lerp_(averaged, weights, 1 - ema)


@contextmanager
def averaged_weights_in(model, averaged: list[torch.Tensor] | None):
    """For the duration, ``model`` holds the averaged weights (nothing changes when ``averaged`` is None)."""
    if averaged is None:
        yield
        return
    params = [p.detach() for p in model.parameters()]
    live = [p.clone() for p in params]
    for param, weight in zip(params, averaged):
        param.copy_(weight)
    try:
        yield
    finally:
        for param, weight in zip(params, live):
            param.copy_(weight)


def average_tensors(averaged: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The average as the resume state's tensors ``ema.I`` (none when there is no average)."""
    return {f"ema.{i}": weight for i, weight in enumerate(averaged or [])}


def average_from_tensors(model, tensors: dict[str, torch.Tensor], device) -> list[torch.Tensor] | None:
    """The average ``ema.I`` of a resume state on ``device``, one per parameter I (None: not averaged);
    ValueError when a shape differs from its parameter's."""
    if "ema.0" not in tensors:
        return None
    averaged = [tensors[f"ema.{i}"].to(device) for i, _ in enumerate(model.parameters())]
    for i, (weight, param) in enumerate(zip(averaged, model.parameters())):
        if weight.shape != param.shape:
            raise ValueError(f"averaged weight ema.{i} has shape {list(weight.shape)}, expected {list(param.shape)}")
    return averaged
