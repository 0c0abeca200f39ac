"""Hidden representations of images for downstream tasks (``DensityModel.features``)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from densreg.registry import ConfigError


@torch.no_grad()
def extract_features(model, images: torch.Tensor, batch_size: int = 500, progress: bool = False) -> np.ndarray:
    """``model.features`` over int64 images (N, C, H, W) in batches -> float32 (N, F).

    Raises ConfigError when the model has no learned features (e.g. the counting baselines).
    """
    model.eval()
    device = model.order.device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="features", unit="batch", disable=not progress,
                      leave=False):
        try:
            out.append(model.features(images[start:start + batch_size].to(device)).float().cpu())
        except NotImplementedError as exc:
            raise ConfigError(f"{exc}; features need a model with hidden units, such as nade") from exc
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()
