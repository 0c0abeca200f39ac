"""The Python API, in the spirit of timm: list, create and load models by name.

Listing (``list_models``, ``model_spec``, ``list_plugins``, ``list_datasets``) imports no
torch: importing this module does not, and the built-in plugins register their models by
import path. What creates (``create_model``, ``load_split``, ``model_bytes``) imports torch
and the protocol when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .catalog import DEFAULT_EVENT_SHAPE, Catalog, Dataset, ModelSpec, check_config
from .datasets import validate_real_images
from .errors import ConfigError, DataError, UnknownNameError
from .families import Categorical
from .limits import check_event_shape, check_memory
from .plugin_manager import PluginHost, PluginInfo
from .saved import SavedModelInfo
from .version import __version__

if TYPE_CHECKING:
    import torch

    from .protocol import DensityModel

_catalog: Catalog | None = None
_extra_plugins: dict[str, Any] = {}


def get_catalog(reload: bool = False) -> Catalog:
    """The models and datasets of every installed plugin (loaded once, then cached)."""
    global _catalog
    if _catalog is None or reload:
        host = PluginHost()
        host.load_entry_points()
        for name, plugin in _extra_plugins.items():
            host.register_module(name, lambda plugin=plugin: plugin, "in-process")
        _catalog = Catalog.from_host(host)
    return _catalog


def register_plugin(plugin: Any, name: str) -> None:
    """Register a plugin object or module in this process (tests, notebooks)."""
    _extra_plugins[name] = plugin
    get_catalog(reload=True)


def unregister_plugin(name: str) -> None:
    """Undo ``register_plugin``."""
    _extra_plugins.pop(name, None)
    get_catalog(reload=True)


def list_plugins() -> list[PluginInfo]:
    return list(get_catalog().host.infos.values())


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names matching a glob ``pattern`` (e.g. ``'pixel*'``); clashing names qualified.

    >>> list_models("row*")
    ['row-lstm']
    """
    specs = get_catalog().model_specs(pattern)
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    return [spec.name if counts[spec.name] == 1 else spec.qualified_name for spec in specs]


def model_spec(name: str) -> ModelSpec:
    return get_catalog().model(name)


def plugin_of(name: str) -> tuple[str, str, str, str]:
    """(bare name, plugin, distribution, version) of model ``name`` as installed; a name the
    registry does not know gives (its bare part, its plugin part or "", "", "")."""
    try:
        spec = model_spec(name)
    except UnknownNameError:
        plugin, _, bare = name.rpartition(":")
        return bare, plugin, "", ""
    return spec.name, spec.plugin, spec.distribution, spec.version


def create_model(name: str, event_shape=DEFAULT_EVENT_SHAPE, num_categories: int = 2, **config) -> DensityModel:
    """Build model ``name`` for images ``event_shape`` (C, H, W) with K = ``num_categories``.

    ``config`` overrides the model's defaults; unknown keys or wrongly typed values
    raise ConfigError.
    """
    from .protocol import DensityModel  # torch: imported to create, never to list

    spec = model_spec(name)
    config = check_config(spec.factory, config)
    for key in ("event_shape", "num_categories"):
        config.pop(key, None)
    check_value_kind(spec, num_categories)
    check_model_memory(spec, event_shape, num_categories, config)
    try:
        model = spec.factory(event_shape=tuple(event_shape), num_categories=int(num_categories), **config)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a factory's failure on a config is a config error
        first = (str(exc).strip().splitlines() or [""])[0]  # torch appends C++ frames on later lines
        raise ConfigError(f"cannot build model {name!r} with {config}: {type(exc).__name__}: {first}") from exc
    if not isinstance(model, DensityModel):
        raise ConfigError(f"the factory of {spec.qualified_name} returned {type(model).__name__}, "
                          "not a DensityModel")
    return model


def is_continuous(spec: ModelSpec) -> bool:
    """Whether the registered factory models real values only (every family it declares is a real one)."""
    return not any(family.discrete for family in getattr(spec.factory, "families", (Categorical,)))


def check_value_kind(spec: ModelSpec, num_categories) -> None:
    """ConfigError when none of the model's families fits the data: K levels (values 0..K-1) or real values
    (K = 0); the first family's own message says what to use instead."""
    declared = getattr(spec.factory, "families", (Categorical,))
    if not any(family.discrete == (num_categories != 0) for family in declared):
        try:
            declared[0].for_data(num_categories)
        except ConfigError as exc:
            raise ConfigError(f"model {spec.name!r} {exc}") from None


def model_bytes(spec: ModelSpec, event_shape, num_categories: int, config: dict) -> int | None:
    """Bytes of the parameters and buffers model ``spec`` would allocate, measured by building it on
    torch's meta device (no memory used); None when the factory cannot build on the meta device."""
    import torch

    try:
        with torch.device("meta"):
            model = spec.factory(event_shape=tuple(event_shape), num_categories=int(num_categories), **config)
        tensors = [*model.parameters(), *model.buffers()]
    except Exception:  # noqa: BLE001 - the real build reports the factory's errors
        return None
    return sum(t.numel() * t.element_size() for t in tensors)


def check_model_memory(spec: ModelSpec, event_shape, num_categories, config: dict) -> None:
    """ConfigError when building the model would need more memory than is available (see limits)."""
    takes_reals = any(not family.discrete for family in getattr(spec.factory, "families", (Categorical,)))
    real = is_continuous(spec) or (takes_reals and isinstance(num_categories, int) and num_categories == 0)
    check_event_shape(tuple(event_shape), num_categories, continuous=real)
    need = model_bytes(spec, event_shape, num_categories, config)
    if need is not None:
        shape = "x".join(str(int(s)) for s in event_shape)
        check_memory(need, f"model {spec.name!r} on {shape} images with K={int(num_categories)} and {config}",
                     "choose a smaller config")


def list_datasets() -> list[Dataset]:
    return sorted((d for group in get_catalog().datasets.values() for d in group), key=lambda d: d.name)


def get_dataset(name: str) -> Dataset:
    return get_catalog().dataset(name)


def load_split(name: str, split: str = "train", data: str | None = None, download: bool = False) -> torch.Tensor:
    """Images of one split as int64 (N, C, H, W), validated against the dataset's shape and K;
    for a continuous dataset, finite float32 values (N, C, H, W)."""
    import torch

    from .protocol import validate_images

    dataset = get_dataset(name)
    array = dataset.load_split(split, data, download)
    try:
        if dataset.continuous:  # float32, as the dataset's readers promise
            return torch.from_numpy(validate_real_images(array, dataset.event_shape))
        return validate_images(array, dataset.event_shape, dataset.num_categories)
    except DataError as exc:
        raise DataError(f"dataset {dataset.name!r}, split {split!r}: {exc}") from exc


def describe_model(model: DensityModel, name: str, **more) -> SavedModelInfo:
    """The description of a live model registered as ``name`` (bare or ``plugin:model``), by this densreg:
    the name is resolved in the registry to record its plugin, distribution and version; a name the
    registry does not know is kept as given. ``more`` fills the format's own fields."""
    bare, plugin, distribution, version = plugin_of(name)
    return SavedModelInfo(model=bare, config=model.config(), event_shape=tuple(model.event_shape),
                          num_categories=int(model.num_categories), ordering=model.ordering,
                          densreg_version=__version__, value_kind=model.value_kind, plugin=plugin,
                          distribution=distribution, distribution_version=version, **more)
