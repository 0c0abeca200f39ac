"""Checkpoints: one .safetensors file, tensors plus string metadata. No pickle anywhere.

Metadata keys (all strings): ``format`` (FORMAT), ``model`` (registry name),
``config`` (JSON), ``event_shape`` (JSON), ``num_categories``, ``ordering``,
``densreg_version`` (the keys every saved model has, see saved.py), ``metrics`` (JSON)
and ``extra`` (JSON, free-form).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .atomic import atomic_write_bytes
from .errors import CheckpointError, ConfigError, UnknownNameError
from .saved import SavedModelInfo

FORMAT = "densreg-checkpoint/1"


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write a safetensors file (tensors made contiguous and unshared)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save_bytes(plain, metadata=metadata))


def save_checkpoint(path, model, name: str, metrics: dict | None = None, extra: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``model`` (registered as ``name``) to ``path`` atomically."""
    info = SavedModelInfo.describe(model, name)
    metadata = {"format": FORMAT, **info.model_metadata(), "metrics": json.dumps(metrics or {}),
                "extra": json.dumps(extra or {})}
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    save_tensors(path, tensors, metadata)


def read_tensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the metadata of a safetensors file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    raw = path.read_bytes()
    try:
        tensors = load_bytes(raw)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    return tensors, metadata


def parse_info(path, metadata: dict[str, str]) -> SavedModelInfo:
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a densreg checkpoint "
                              f"(metadata format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        return SavedModelInfo.from_metadata(metadata, metrics=json.loads(metadata.get("metrics", "{}")),
                                            extra=json.loads(metadata.get("extra", "{}")))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: densreg checkpoint metadata is incomplete or invalid: {exc}") from exc


def saved_model_name(path, info: SavedModelInfo) -> str:
    """The registry name that rebuilds the model saved at ``path``: its qualified name when the file
    records its plugin, else the bare name (built-ins win a clash). CheckpointError, naming the
    distribution to install, when that plugin is not installed."""
    from .api import model_spec

    try:
        model_spec(info.qualified_name)
        return info.qualified_name
    except UnknownNameError as exc:
        if not info.plugin:
            raise CheckpointError(f"{path}: cannot rebuild model {info.model!r}: {exc}") from exc
    try:  # the plugin was renamed, but its distribution still registers the model
        spec = model_spec(info.model)
        if info.distribution and spec.distribution == info.distribution:
            return spec.qualified_name
    except UnknownNameError:
        pass
    dist = info.distribution
    hint = f"pip install {dist}" if dist and dist != "in-process" else "register that plugin first"
    raise CheckpointError(f"{path} holds model {info.model!r} of {info.provenance}, which is not installed "
                          f"here: {hint}")


def load_checkpoint(path, device: str | torch.device = "cpu"):
    """Rebuild the model saved at ``path`` through the registry; returns (model, SavedModelInfo)."""
    from .api import create_model  # the registry is only needed to rebuild

    tensors, metadata = read_tensors(path)
    info = parse_info(path, metadata)
    config = {k: v for k, v in info.config.items() if k not in ("event_shape", "num_categories")}
    name = saved_model_name(path, info)
    try:
        model = create_model(name, event_shape=info.event_shape, num_categories=info.num_categories, **config)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the saved config does not fit model {info.model!r} as installed: {exc}") from exc
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match model {info.model!r}: {exc}") from exc
    model.eval()
    return model.to(device), info
