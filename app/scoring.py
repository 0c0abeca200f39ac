"""Anomaly and out-of-distribution scores from an exact density: higher = more anomalous.

Works on a torch model and on an export folder opened in onnxruntime (``ExportedModel``);
with an export nothing here imports torch. Methods (``METHODS``; every score in nats):

- ``nll``: -log p(x). Raw likelihood is known to rank some simpler out-of-distribution
  data as more likely than the training data (Nalisnick et al. 2019, "Do deep generative
  models know what they don't know?", ICLR).
- ``likelihood-ratio``: -log p(x) + log p_bg(x), where p_bg is a background model trained
  on perturbed inputs (``densreg train ... --perturb RATE``), which captures the population
  statistics both share (Ren et al. 2019, "Likelihood ratios for out-of-distribution
  detection", NeurIPS).
- ``complexity``: -log p(x) - L(x) ln 2, where L(x) is the code length in bits of x under a
  generic lossless compressor: here PNG (Pillow, deflate level 9; 1 bit per pixel for K = 2,
  8 bits per value otherwise), file size included (Serrà et al. 2020, "Input complexity and
  out-of-distribution detection with likelihood-based generative models", ICLR).
- ``typicality``: |-log p(x) - mean of -log p over reference (training) images|, the typicality
  test of Nalisnick et al. 2019 ("Detecting out-of-distribution inputs to deep generative models
  using typicality", arXiv:1906.02994) for one input at a time; ``p_value`` is the share of
  reference images at least as far from that mean.
- ``dose``: a density of states (Morningstar et al. 2021, "Density of states estimation for
  out-of-distribution detection", AISTATS): the image's statistics under the model, its NLL in
  each of a 3 x 3 grid of regions (nats, summed over channels) and its PNG code length (as in
  ``complexity``, in nats), are compared with those of reference (training) images through a
  Gaussian fit on the reference statistics; the score is -log N(statistics; mean, covariance)
  in nats, ``mahalanobis`` the squared Mahalanobis distance. Where in the image the likelihood
  is spent, and how compressible the image is, both enter.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from densreg.registry import returns
from densreg.registry.errors import ConfigError, DataError

METHODS = {
    "nll": "-log p(x) in nats (Nalisnick et al. 2019 show its failure modes)",
    "likelihood-ratio": "-log p(x) + log p_bg(x), p_bg trained on perturbed inputs (Ren et al. 2019); needs a "
                        "background model",
    "complexity": "-log p(x) minus the PNG code length of x in nats (Serrà et al. 2020)",
    "typicality": "|-log p(x) - mean reference NLL| in nats (Nalisnick et al. 2019, typicality test); needs "
                  "reference images",
    "dose": "-log density in nats of the image's region NLLs (3 x 3 grid) and PNG code length under a Gaussian "
            "fit on reference images (Morningstar et al. 2021, density of states); needs reference images",
}
REFERENCE_METHODS = ("typicality", "dose")  # the methods that compare with reference (training) images
DOSE_GRID = 3  # regions per image side for ``dose`` (chosen among 2, 3, 4, 7 on benchmarks/ood.py's sets)


def is_export(model) -> bool:
    """Whether ``model`` is an export folder opened in onnxruntime (numpy in and out)."""
    from densreg.export.runtime import ExportedModel

    return isinstance(model, ExportedModel)


def pixel_nll(model, images: np.ndarray, batch_size: int = 500, progress: bool = False) -> np.ndarray:
    """-log p(x_i | x_<i) in nats laid out as the images: int64 (N, C, H, W) -> float64 (N, C, H, W).

    Summed over (C, H, W) it is the image's NLL, which must be finite and >= 0 (ModelOutputError otherwise:
    ``returns.likelihoods``).
    """
    images = np.asarray(images)
    parts = []
    bar = tqdm(range(0, len(images), batch_size), desc="scoring", unit="batch", disable=not progress, leave=False)
    for start in bar:
        batch = images[start:start + batch_size]
        parts.append(_export_pixel_nll(model, batch) if is_export(model) else _torch_pixel_nll(model, batch))
    pixels = np.concatenate(parts) if parts else np.zeros((0, *images.shape[1:]))
    returns.likelihoods(model, -pixels.reshape(len(pixels), -1).sum(-1))
    return pixels


def _export_pixel_nll(model, batch: np.ndarray) -> np.ndarray:
    batch = model.validate(batch)
    if not model.family.discrete:  # real values: the graph's per-value log densities
        return -model.pixel_log_probs(batch).astype(np.float64)
    logits = model.conditional_logits(batch).astype(np.float64)  # (B, D, K), generation order
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    seq = batch.reshape(len(batch), -1)[:, model.order]
    chosen = -np.take_along_axis(log_p, seq[..., None], -1)[..., 0]
    flat = np.empty_like(chosen)
    flat[:, model.order] = chosen
    return flat.reshape(batch.shape)


def _torch_pixel_nll(model, batch: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(model.order.device)
        return -model.pixel_log_probs(x).double().cpu().numpy()


def png_bytes(image: np.ndarray, num_categories: int) -> bytes:
    """One image (C, H, W) with values 0..K-1 as a lossless PNG file (Pillow, deflate level 9).

    K = 2 with one channel is written as 1-bit pixels; otherwise the values themselves as 8-bit
    grey (C = 1) or RGB (C = 3).
    """
    channels = image.shape[0]
    if channels not in (1, 3) or num_categories > 256:
        raise DataError(f"the complexity score compresses 1- or 3-channel images with K <= 256; these have "
                        f"{channels} channels and K = {num_categories}")
    values = np.asarray(image).astype(np.uint8)
    if channels == 1 and num_categories == 2:
        picture = Image.fromarray(values[0].astype(bool))
    else:
        picture = Image.fromarray(values[0] if channels == 1 else values.transpose(1, 2, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def compressed_bits(images: np.ndarray, num_categories: int) -> np.ndarray:
    """Code length in bits of each image (N, C, H, W) as a PNG file (``png_bytes``), float64 (N,)."""
    return np.array([8.0 * len(png_bytes(image, num_categories)) for image in np.asarray(images)])


@dataclass
class ScoreResult:
    """Scores of N images by one method. ``scores`` float64 (N,), higher = more anomalous (nats);
    ``nll`` (N,) nats; ``bits_per_dim`` (N,); ``pixel_nll`` (N, C, H, W) nats; ``columns``: the
    method's other per-image values (e.g. ``background_nll``, ``png_bits``, ``p_value``)."""

    method: str
    scores: np.ndarray
    nll: np.ndarray
    bits_per_dim: np.ndarray
    pixel_nll: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)


def score_images(model, images, method: str = "nll", *, background=None, reference=None, batch_size: int = 500,
                 progress: bool = False) -> ScoreResult:
    """Score int64 images (N, C, H, W) with ``model`` (a torch model or an ExportedModel).

    ``background``: the background model of ``likelihood-ratio``; ``reference``: images
    (e.g. training images) whose NLLs define the typical set for ``typicality``, and whose
    statistics the Gaussian of ``dose`` is fit on.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown score method {method!r}; choose one of {', '.join(METHODS)}")
    images = np.asarray(images)
    if len(images) == 0:
        raise DataError("no images to score")
    pixels = pixel_nll(model, images, batch_size, progress)
    nll = pixels.reshape(len(images), -1).sum(-1)
    background_nll = reference_nll = reference_statistics = None
    if method == "likelihood-ratio" and background is not None:
        _check_same_space(model, background)
        background_nll = image_nll(background, images, batch_size, progress)
    if method == "typicality" and reference is not None and len(reference):
        reference_nll = image_nll(model, np.asarray(reference), batch_size, progress)
    if method == "dose" and reference is not None and len(reference):
        reference = np.asarray(reference)
        reference_pixels = pixel_nll(model, reference, batch_size, progress)
        reference_statistics = state_statistics(reference_pixels, reference, model.num_categories)
    scores, columns = scores_from_nll(method, nll, images, model.num_categories, background_nll, reference_nll,
                                      pixels, reference_statistics)
    return ScoreResult(method, scores, nll, nll / (nll_dims(images) * math.log(2)), pixels, columns)


def nll_summary(nll, num_positions: int, model=None) -> dict:
    """Mean NLL in nats and bits per dim for per-image NLLs (N,) (numpy or torch) of images with D values.

    DataError for no images; with ``model``, ModelOutputError naming it for an NLL that is not finite, or
    below 0 for discrete values (``returns.likelihoods``)."""
    if not len(nll):
        raise DataError("no images to evaluate (the split is empty)")
    if model is not None:
        returns.likelihoods(model, -nll)
    mean = float(nll.mean())
    return {"nll_nats": mean, "bits_per_dim": mean / (num_positions * math.log(2)), "images": int(len(nll))}


def image_nll(model, images: np.ndarray, batch_size: int = 500, progress: bool = False) -> np.ndarray:
    """-log p(x) in nats, int64 (N, C, H, W) -> float64 (N,)."""
    return pixel_nll(model, images, batch_size, progress).reshape(len(images), -1).sum(-1)


def scores_from_nll(method: str, nll: np.ndarray, images: np.ndarray, num_categories: int,
                    background_nll: np.ndarray | None = None, reference_nll: np.ndarray | None = None,
                    pixel_nll: np.ndarray | None = None,
                    reference_statistics: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A method's scores (N,) and extra columns from the NLLs (N,) of ``images`` (see ``METHODS``);
    ``dose`` also needs their ``pixel_nll`` (N, C, H, W) and the reference images' ``state_statistics``."""
    if method == "nll":
        return nll, {}
    if method == "likelihood-ratio":
        if background_nll is None:
            raise ConfigError("the likelihood-ratio score needs a background model (--background; train one with "
                              "`densreg train ... --perturb 0.2`)")
        return nll - background_nll, {"background_nll": background_nll}
    if method == "complexity":
        bits = compressed_bits(images, num_categories)
        return nll - bits * math.log(2), {"png_bits": bits}
    if method == "dose":
        if reference_statistics is None or pixel_nll is None:
            raise ConfigError("the dose score needs reference images from the training distribution "
                              "(--reference-dataset or --reference-images)")
        return dose(state_statistics(pixel_nll, images, num_categories), reference_statistics)
    if reference_nll is None:
        raise ConfigError("the typicality score needs reference images from the training distribution "
                          "(--reference-dataset or --reference-images)")
    scores, p_value = typicality(nll, reference_nll)
    return scores, {"p_value": p_value}


def typicality(nll: np.ndarray, reference_nll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|nll - mean(reference)|, two-sided empirical p-value), each (N,) for nll (N,), reference (M,)."""
    centre = reference_nll.mean()
    distance = np.abs(nll - centre)
    reference_distance = np.sort(np.abs(reference_nll - centre))
    at_least = len(reference_distance) - np.searchsorted(reference_distance, distance, side="left")
    return distance, (at_least + 1) / (len(reference_distance) + 1)


def region_nll(pixel_nll: np.ndarray, grid: int = DOSE_GRID) -> np.ndarray:
    """NLL per region of a grid over the image (rows and columns each cut into ``grid`` near-equal
    bands, at most one per pixel), summed over channels: (N, C, H, W) nats -> (N, regions) nats,
    regions in raster order."""
    pixel_nll = np.asarray(pixel_nll)
    height, width = pixel_nll.shape[2:]
    rows = np.array_split(np.arange(height), min(grid, height))
    columns = np.array_split(np.arange(width), min(grid, width))
    per_pixel = pixel_nll.sum(1)  # (N, H, W)
    return np.stack([per_pixel[:, r][:, :, c].sum((1, 2)) for r in rows for c in columns], axis=1)


def state_statistics(pixel_nll: np.ndarray, images: np.ndarray, num_categories: int,
                     grid: int = DOSE_GRID) -> np.ndarray:
    """``dose``'s statistics of each image: its ``region_nll`` and its PNG code length in nats,
    (N, C, H, W) nats and images -> float64 (N, regions + 1)."""
    bits = compressed_bits(images, num_categories)
    return np.concatenate([region_nll(pixel_nll, grid), bits[:, None] * math.log(2)], axis=1)


def dose(statistics: np.ndarray, reference_statistics: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(-log N(statistics; mean, covariance) in nats, {"mahalanobis": squared distances}), each (N,),
    the Gaussian fit on ``reference_statistics`` (M, S): their mean and covariance (ddof 1), with
    1e-3 of the mean variance (plus 1e-9) added to the diagonal so that it stays invertible."""
    reference_statistics = np.asarray(reference_statistics, dtype=np.float64)
    if len(reference_statistics) < 2:
        raise ConfigError(f"the dose score needs at least 2 reference images, got {len(reference_statistics)}")
    mean = reference_statistics.mean(0)
    covariance = np.atleast_2d(np.cov(reference_statistics, rowvar=False))
    size = len(covariance)
    covariance = covariance + (1e-3 * np.trace(covariance) / size + 1e-9) * np.eye(size)
    centred = np.asarray(statistics, dtype=np.float64) - mean
    mahalanobis = np.einsum("ni,ni->n", centred, np.linalg.solve(covariance, centred.T).T)
    _, log_det = np.linalg.slogdet(2 * math.pi * covariance)
    return 0.5 * (mahalanobis + log_det), {"mahalanobis": mahalanobis}


def nll_dims(images: np.ndarray) -> int:
    return int(np.prod(images.shape[1:]))


def _check_same_space(model, background) -> None:
    ours = (tuple(model.event_shape), model.num_categories)
    theirs = (tuple(background.event_shape), background.num_categories)
    if ours != theirs:
        raise DataError(f"the background model takes shape {theirs[0]} with K={theirs[1]}, but the model takes "
                        f"{ours[0]} with K={ours[1]}")


def summary(values: np.ndarray) -> dict[str, float]:
    """mean, std, min, 5/25/50/75/95% quantiles and max of (N,) values."""
    values = np.asarray(values, dtype=np.float64)
    names = ("q05", "q25", "median", "q75", "q95")
    quantiles = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            **{name: float(v) for name, v in zip(names, quantiles)}, "max": float(values.max())}


def most_anomalous(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order[:max(0, int(k))]
