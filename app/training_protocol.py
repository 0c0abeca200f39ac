"""What fitting reads from a model beyond torch.nn.Module: every model-protocol attribute that
training.py, gradient_run.py and run_files.py use goes through this module, so a change to the
protocol (densreg.registry.protocol) is adapted here. It also prepares the data accordingly.
"""

from __future__ import annotations

import torch

from densreg.registry import returns

INIT_FROM_DATA = 10000  # training images given to a model's optional init_from_data before the first epoch


def checkpoint_name(model) -> str:
    """The registry name written in checkpoints when fit is given none: the model's ``registry_name``,
    else its class name in lower case."""
    return getattr(model, "registry_name", None) or type(model).__name__.lower()


def fits_in_closed_form(model) -> bool:
    """Whether the model is fitted by ``fit_closed_form`` (counting) rather than by gradient training."""
    return model.closed_form


def fit_closed_form(model, train: torch.Tensor) -> dict:
    """Fit in closed form to ``train`` (N, C, H, W); the model's metrics (NLL in nats per image), whose
    train NLL must be finite (ModelOutputError otherwise: ``returns.likelihoods``)."""
    metrics = dict(model.fit_closed_form(train))
    if "train_nll_nats" in metrics:
        returns.likelihoods(model, [-float(metrics["train_nll_nats"])], "fits (the mean over the training images)")
    return metrics


def model_config(model) -> dict:
    """The JSON-able config a checkpoint records, compared when a run resumes."""
    return model.config()


def init_from_data(model, train: torch.Tensor) -> None:
    """Let a model that has ``init_from_data`` (e.g. rnade's standardization) see the first
    INIT_FROM_DATA training images (N, C, H, W) before the first epoch; nothing otherwise."""
    if callable(getattr(model, "init_from_data", None)):
        model.init_from_data(train[:INIT_FROM_DATA])


def device_images(model, train: torch.Tensor, valid: torch.Tensor | None,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``train`` on ``device`` and ``valid`` on the CPU (None when absent or empty), both (N, C, H, W)
    in the compact dtype of the model's values: float32 for a model of real values, uint8 for 2 to 256
    categories, int64 otherwise. ``log_prob_values`` turns rows of them back into log_prob's input."""
    small = 2 <= model.num_categories <= 256  # keep the data compact (uint8) on the device
    dtype = torch.float32 if not model.family.discrete else torch.uint8 if small else torch.int64
    return train.to(dtype).to(device), valid.to(dtype) if valid is not None and len(valid) else None


def log_prob_values(model, stored: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) as ``device_images`` stores them, in the dtype the model's log_prob takes
    (int64 categories; real values as they are)."""
    return stored if not model.family.discrete else stored.long()
