"""What a saved model says about itself, shared by checkpoints and exports (torch-free).

A checkpoint's safetensors metadata and every file of an export folder carry the same
string keys for the model: ``model`` (bare registry name), ``plugin`` (the entry-point name
that registered it, so ``plugin:model`` is its qualified name), ``distribution`` and
``distribution_version`` (the installed package that provides the plugin), ``config`` (JSON
constructor arguments), ``event_shape`` (JSON [C, H, W]), ``num_categories`` (K; 0 for real
values), ``ordering``, ``value_kind`` ("categorical", or "continuous": real values with
mixture-of-Gaussians conditionals; absent in files written before it existed, which are
categorical) and ``densreg_version``. A model trained on the user's own files also has
``transform`` (JSON, registry/transforms.py: the preprocessing and the training data's sha256). Files written before the plugin keys existed (format
0.1) lack them and load by the bare name. Each format adds its own keys (see checkpoint.py,
export/format.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .limits import check_event_shape


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
    value_kind: str = "categorical"  # or "continuous": real values, mixture-of-Gaussians conditionals, K = 0
    plugin: str = ""
    distribution: str = ""
    distribution_version: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None
    parity: dict | None = None
    transform: dict | None = None  # registry.transforms.Transform.to_dict(); None: trained on a registered dataset

    @property
    def qualified_name(self) -> str:
        """``plugin:model``, or the bare name for a file that does not record its plugin."""
        return f"{self.plugin}:{self.model}" if self.plugin else self.model

    @property
    def provenance(self) -> str:
        """Where the model comes from, for messages: "plugin 'p' (distribution d 1.0)"."""
        if not self.plugin:
            return "an unrecorded plugin (file written before densreg recorded plugins)"
        dist = " ".join(part for part in (self.distribution, self.distribution_version) if part)
        return f"plugin {self.plugin!r}" + (f" (distribution {dist})" if dist else "")

    KEYS = ("model", "config", "event_shape", "num_categories", "ordering")  # required in every saved model

    def model_metadata(self) -> dict[str, str]:
        """The shared keys as metadata strings."""
        return {"model": self.model, "plugin": self.plugin, "distribution": self.distribution,
                "distribution_version": self.distribution_version, "config": json.dumps(self.config),
                "event_shape": json.dumps(list(self.event_shape)),
                "num_categories": str(int(self.num_categories)), "ordering": self.ordering,
                "value_kind": self.value_kind, "densreg_version": self.densreg_version}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], **more) -> "SavedModelInfo":
        """Parse the shared keys (``more`` fills the format's own fields).

        Raises KeyError for a missing key and ValueError for a malformed one; the
        caller names the file in the error it raises.
        """
        plugin, _, bare = metadata["model"].rpartition(":")  # a qualified name written by hand
        config = parse_json(metadata["config"], "config")
        if not isinstance(config, dict):
            raise ValueError(f"config is {type(config).__name__}, expected a JSON object")
        try:
            categories = int(metadata["num_categories"])
        except ValueError:
            raise ValueError(f"num_categories {metadata['num_categories'][:40]!r} is not an integer") from None
        kind = metadata.get("value_kind", "categorical")  # files written before real values existed lack it
        if kind not in VALUE_KINDS:
            raise ValueError(f"value_kind {kind[:40]!r} is not one of {', '.join(VALUE_KINDS)}")
        shape, categories = check_event_shape(parse_json(metadata["event_shape"], "event_shape"), categories,
                                              continuous=kind == "continuous")
        transform = parse_json(metadata["transform"], "transform") if "transform" in metadata else None
        if transform is not None:
            from .transforms import Transform

            Transform.from_dict(transform)  # a ValueError saying what is wrong
        more.setdefault("transform", transform)
        return cls(model=bare, config=config, event_shape=shape, num_categories=categories,
                   ordering=metadata["ordering"], value_kind=kind,
                   densreg_version=metadata.get("densreg_version", ""), plugin=metadata.get("plugin") or plugin, distribution=metadata.get("distribution", ""),
                   distribution_version=metadata.get("distribution_version", ""), **more)


VALUE_KINDS = ("categorical", "continuous")


def parse_json(text: str, key: str) -> Any:
    """``json.loads`` whose every failure (nesting too deep included) is a ValueError naming ``key``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{key} is not valid JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
