"""What a saved model says about itself, shared by checkpoints and exports (torch-free).

A checkpoint's safetensors metadata and every file of an export folder carry the same
string keys for the model: ``model`` (registry name), ``config`` (JSON constructor
arguments), ``event_shape`` (JSON [C, H, W]), ``num_categories`` (K), ``ordering`` and
``densreg_version``. Each format adds its own keys (see checkpoint.py, export/format.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .version import __version__


@dataclass
class SavedModelInfo:
    """A saved model's description: the model's keys, plus what its format adds.

    ``metrics`` and ``extra`` come from checkpoints (training metrics, free-form JSON);
    ``opset`` and ``parity`` from exports (ONNX opset, the exporter's parity report).
    """

    model: str
    config: dict[str, Any]
    event_shape: tuple[int, int, int]
    num_categories: int
    ordering: str
    densreg_version: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None
    parity: dict | None = None

    @classmethod
    def describe(cls, model, name: str, **more) -> "SavedModelInfo":
        """The description of a live ``DensityModel`` registered as ``name``, by this densreg."""
        return cls(model=name, config=model.config(), event_shape=tuple(model.event_shape),
                   num_categories=int(model.num_categories), ordering=model.ordering,
                   densreg_version=__version__, **more)

    def model_metadata(self) -> dict[str, str]:
        """The shared keys as metadata strings."""
        return {"model": self.model, "config": json.dumps(self.config),
                "event_shape": json.dumps(list(self.event_shape)),
                "num_categories": str(int(self.num_categories)), "ordering": self.ordering,
                "densreg_version": self.densreg_version}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], **more) -> "SavedModelInfo":
        """Parse the shared keys (``more`` fills the format's own fields).

        Raises KeyError for a missing key and ValueError for a malformed one; the
        caller names the file in the error it raises.
        """
        return cls(model=metadata["model"], config=json.loads(metadata["config"]),
                   event_shape=tuple(json.loads(metadata["event_shape"])),
                   num_categories=int(metadata["num_categories"]), ordering=metadata["ordering"],
                   densreg_version=metadata.get("densreg_version", ""), **more)
