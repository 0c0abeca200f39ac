"""Likelihood evaluation: NLL in nats per image and bits per dimension."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from . import distributed


def per_image_nll(model, images: torch.Tensor, batch_size: int = 500, progress: bool = False,
                  across_ranks: bool = False) -> torch.Tensor:
    """-log p(x) in nats for each image, (N, C, H, W) -> float64 (N,).

    ``across_ranks``: every rank of the process group (distributed.py) must call this; each
    scores its shard of the images and all get every result, in the input order.
    """
    if across_ranks:
        return distributed.map_shards(lambda part: per_image_nll(model, part, batch_size, progress), images)
    return _per_image_nll(model, images, batch_size, progress)


@torch.no_grad()
def _per_image_nll(model, images: torch.Tensor, batch_size: int, progress: bool) -> torch.Tensor:
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


def evaluate(model, images: torch.Tensor, batch_size: int = 500, progress: bool = False,
             across_ranks: bool = False) -> dict:
    """Keys ``nll_nats`` (mean over images), ``bits_per_dim``, ``images``; ``across_ranks`` as per_image_nll."""
    return nll_summary(per_image_nll(model, images, batch_size, progress, across_ranks), model.num_positions)
