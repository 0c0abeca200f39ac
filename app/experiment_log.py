"""Experiment logs beside a gradient-training run's JSONL log (``densreg train --log-to SCHEME:DIR``).

Every epoch's entry of the run's log (its fields are listed in training.py) goes, once the JSONL
log holds it, to each logger the run was given; the JSONL log itself is written as before. A
spec is ``SCHEME:DIR``; the schemes (``SCHEMES``):

- ``tensorboard:DIR``: torch's ``SummaryWriter`` writes an event file into DIR (created if
  needed; a resumed run adds a second file there), one scalar per numeric field of the entry at
  global step = the epoch, under the tags of ``TENSORBOARD_TAGS`` (``nll/train``, ``nll/valid``,
  ``lr``, ``epoch/seconds``, ...). The values are stored in float64 (tensor summaries), so they
  equal the JSONL log's. Needs the ``tensorboard`` package: ``pip install 'densreg[tensorboard]'``.

Imports no torch until a logger opens.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

from densreg.registry import ConfigError

# JSONL field -> TensorBoard tag; "epoch" is the global step, other numeric fields keep their name
TENSORBOARD_TAGS = {"train_nll": "nll/train", "valid_nll": "nll/valid", "lr": "lr", "seconds": "epoch/seconds",
                    "images": "epoch/images", "images_per_s": "epoch/images_per_s", "processes": "epoch/processes"}


class TensorBoardLog:
    """Per-epoch scalars in a TensorBoard event file in ``folder``."""

    def __init__(self, folder: str) -> None:
        self.writer = summary_writer_class()(log_dir=folder)

    def write(self, entry: dict) -> None:
        for key, value in entry.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(TENSORBOARD_TAGS.get(key, key), value, entry["epoch"],
                                       new_style=True, double_precision=True)
        self.writer.flush()  # an epoch shows in TensorBoard as soon as it ends

    def close(self) -> None:
        self.writer.close()


SCHEMES = {"tensorboard": TensorBoardLog}


def summary_writer_class():
    """torch's SummaryWriter; ConfigError with the install command when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("--log-to tensorboard needs the tensorboard package: "
                          "install densreg[tensorboard] (pip install 'densreg[tensorboard]')") from exc
    return SummaryWriter


def parse_log_to(spec: str) -> tuple[str, str]:
    """``"tensorboard:runs/a"`` -> ("tensorboard", "runs/a"); ConfigError for another scheme or no folder."""
    scheme, sep, folder = spec.partition(":")
    expected = " or ".join(f"{name}:DIR" for name in SCHEMES)
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown experiment log {spec!r}: expected {expected}")
    if not sep or not folder:
        raise ConfigError(f"experiment log {spec!r} names no folder: expected {scheme}:DIR")
    return scheme, folder


def check_available(specs: Iterable[str]) -> None:
    """Parse every spec and check that its scheme's package is installed (before any work starts)."""
    for scheme, _ in map(parse_log_to, specs):
        if scheme == "tensorboard":
            summary_writer_class()


@contextmanager
def experiment_logs(specs: Iterable[str]) -> Iterator[list]:
    """The loggers of ``specs`` (see the module docstring), open for the block and closed after it."""
    loggers: list = []
    try:
        for scheme, folder in [parse_log_to(spec) for spec in specs]:
            loggers.append(SCHEMES[scheme](folder))
        yield loggers
    finally:
        for logger in loggers:
            logger.close()
