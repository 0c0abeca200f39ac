"""Hidden representations of images for downstream tasks (``DensityModel.features``).

Works on a torch model and on an export folder opened in onnxruntime (``ExportedModel``,
through its ``features.onnx``); with an export nothing here imports torch.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from densreg.registry.errors import ConfigError


def extract_features(model, images, batch_size: int = 500, progress: bool = False) -> np.ndarray:
    """``model.features`` over int64 images (N, C, H, W) in batches -> float32 (N, F).

    ``model``: a DensityModel (``images`` a tensor or an array) or an ExportedModel (an array).
    Raises ConfigError when the model has no learned features (e.g. the counting baselines,
    or an export without features.onnx).
    """
    from densreg.app.scoring import is_export

    if is_export(model):
        model.require_features()  # no features: its one-line error before any work
        chunks = (model.features(np.asarray(images[start:start + batch_size]))
                  for start in _batches(len(images), batch_size, progress))
    else:
        chunks = _torch_features(model, images, batch_size, progress)
    out = list(chunks)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _batches(total: int, batch_size: int, progress: bool):
    return tqdm(range(0, total, batch_size), desc="features", unit="batch", disable=not progress, leave=False)


def _torch_features(model, images, batch_size: int, progress: bool):
    import torch

    model.eval()
    device = model.order.device
    images = torch.as_tensor(images)
    with torch.no_grad():
        for start in _batches(len(images), batch_size, progress):
            try:
                yield model.features(images[start:start + batch_size].to(device)).float().cpu().numpy()
            except NotImplementedError as exc:
                raise ConfigError(f"{exc}; features need a model with hidden units, such as nade") from exc
