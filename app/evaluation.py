"""Likelihood evaluation: NLL in nats per image and bits per dimension."""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from . import distributed
from .performance import compiled_log_prob, eval_batch_size, using_threads
from .scoring import nll_summary


def per_image_nll(model, images: torch.Tensor, batch_size: int | None = None, progress: bool = False,
                  across_ranks: bool = False, log_prob=None) -> torch.Tensor:
    """-log p(x) in nats for each image, (N, C, H, W) -> float64 (N,).

    ``batch_size`` None: the device's evaluation batch for the model's kind (``performance.eval_batch_size``).
    ``across_ranks``: every rank of the process group (distributed.py) must call this; each
    scores its shard of the images and all get every result, in the input order.
    ``log_prob``: the function to call instead of ``model.log_prob`` (e.g. a compiled one).
    """
    if across_ranks:
        return distributed.map_shards(lambda part: per_image_nll(model, part, batch_size, progress,
                                                                 log_prob=log_prob), images)
    return _per_image_nll(model, images, batch_size or eval_batch_size(model.order.device, model), progress,
                          log_prob or model.log_prob)


@torch.no_grad()
def _per_image_nll(model, images: torch.Tensor, batch_size: int, progress: bool, log_prob) -> torch.Tensor:
    device = model.order.device
    out = []
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False):
        batch = images[start:start + batch_size].to(device)
        out.append(-log_prob(batch).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def evaluate(model, images: torch.Tensor, batch_size: int | None = None, progress: bool = False,
             across_ranks: bool = False, threads: int | None = None, compile: bool = False) -> dict:
    """Keys ``nll_nats`` (mean over images), ``bits_per_dim``, ``images``; ``across_ranks`` as per_image_nll.

    ``threads``: torch threads (None: performance.threads_for's default); ``compile``: torch.compile
    log_prob first and add ``compile_seconds`` (compilation plus the first batch).
    """
    with using_threads(model, threads):
        if not compile:
            return nll_summary(per_image_nll(model, images, batch_size, progress, across_ranks), model.num_positions,
                               model)
        log_prob = compiled_log_prob(model, model.order.device)
        batch_size = batch_size or eval_batch_size(model.order.device, model)
        start = time.perf_counter()
        log_prob(images[:batch_size].to(model.order.device))  # compiles
        seconds = time.perf_counter() - start
        nll = per_image_nll(model, images, batch_size, progress, across_ranks, log_prob=log_prob)
        return {**nll_summary(nll, model.num_positions, model), "compile_seconds": seconds}
