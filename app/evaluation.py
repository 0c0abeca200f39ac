"""Likelihood evaluation: NLL in nats per image and bits per dimension."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm


@torch.no_grad()
def per_image_nll(model, images: torch.Tensor, batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """-log p(x) in nats for each image, (N, C, H, W) -> float64 (N,)."""
    device = model.order.device
    out = []
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False):
        batch = images[start:start + batch_size].to(device)
        out.append(-model.log_prob(batch).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def nll_summary(nll: torch.Tensor, num_positions: int) -> dict:
    """Mean NLL in nats and bits per dim for per-image NLLs (N,) of images with D values."""
    mean = float(nll.mean()) if len(nll) else float("nan")
    return {"nll_nats": mean, "bits_per_dim": mean / (num_positions * math.log(2)), "images": int(len(nll))}


def evaluate(model, images: torch.Tensor, batch_size: int = 500, progress: bool = False) -> dict:
    """Keys ``nll_nats`` (mean over images), ``bits_per_dim``, ``images``."""
    return nll_summary(per_image_nll(model, images, batch_size, progress), model.num_positions)
