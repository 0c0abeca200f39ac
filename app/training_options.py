"""The options of a gradient-training run (``TrainingOptions``), their checks and the default device."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import torch

from densreg.registry import ConfigError

from .performance import PRECISIONS


@dataclass
class TrainingOptions:
    """Hyperparameters of a gradient-training run; ``densreg train`` shows these defaults.

    epochs: most passes over the training set; batch_size: images per Adam step; lr: Adam's
    learning rate, multiplied by lr_decay after every epoch; weight_decay: Adam's L2 term;
    clip_grad: maximum gradient norm (None: no clipping); patience: epochs without a better
    validation NLL before stopping; max_minutes: stop after the epoch that crosses this budget
    (counted per call, None: no budget); seed: shuffling order; device: torch device (None:
    cuda if available, else cpu); precision: "float32", or "bf16" (the forward pass under
    bf16 autocast, weights and Adam in float32); threads: torch threads (None: the measured
    default of the model kind, see densreg.app.performance); compile: torch.compile the
    log-likelihood (its compile time is reported as compile_seconds); ema: keep an exponential
    moving average of the weights, moved toward them by (1 - ema) after every Adam step (e.g.
    0.999); validation, the checkpoint and the fitted model then use the averaged weights (None: off).
    """

    epochs: int = 20
    batch_size: int = 100
    lr: float = 5e-3
    lr_decay: float = 0.95
    weight_decay: float = 0.0
    clip_grad: float | None = None
    patience: int = 5
    max_minutes: float | None = None
    seed: int = 0
    device: str | None = None
    precision: str = "float32"
    threads: int | None = None
    compile: bool = False
    ema: float | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the first option out of range."""
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        def positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        def number(value) -> bool:  # a finite int or float (a resume state may hold anything)
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        need(positive_int(self.epochs), "epochs", ">= 1")
        need(positive_int(self.batch_size), "batch_size", ">= 1")
        need(positive_int(self.patience), "patience", ">= 1")
        need(number(self.lr) and self.lr > 0, "lr", "a number > 0")
        need(number(self.lr_decay) and 0 < self.lr_decay <= 1, "lr_decay", "a number in (0, 1]")
        need(number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(self.clip_grad is None or number(self.clip_grad) and self.clip_grad > 0, "clip_grad", "a number > 0")
        need(self.max_minutes is None or number(self.max_minutes) and self.max_minutes > 0, "max_minutes",
             "a number > 0")
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        need(self.threads is None or positive_int(self.threads), "threads", ">= 1")
        need(self.ema is None or number(self.ema) and 0 <= self.ema < 1, "ema", "a number in [0, 1)")
        need(self.device is None or is_device(self.device), "device", "a torch device such as cpu, cuda or cuda:1")

    def replace(self, **changes) -> "TrainingOptions":
        """A checked copy with ``changes``; unknown names raise ConfigError listing the accepted ones."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}; "
                              f"accepted: {', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)


def is_device(name) -> bool:
    """Whether torch can parse ``name`` as a device (whether it exists here is checked when used)."""
    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def usable_device(name) -> torch.device:
    """``name`` as a torch device that exists on this machine; ConfigError in one line otherwise (a name torch
    cannot parse, CUDA asked of a torch or machine without it, a GPU index past the last one)."""
    if not is_device(name):
        raise ConfigError(f"unknown device {name!r}: expected a torch device such as cpu, cuda or cuda:1")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here (torch {torch.__version__}, "
                              f"{'built without CUDA' if torch.version.cuda is None else 'no GPU found'}); use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def default_device() -> str:
    """The device of the option ``device=None``: "cuda" if available, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"
