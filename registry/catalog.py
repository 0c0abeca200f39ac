"""What the installed plugins provide: models and datasets, looked up by name.

A name is unqualified (``markov``) or qualified by its plugin (``baselines:markov``).
When two plugins register one name, a built-in (distribution ``densreg``) keeps the
unqualified name; between third parties it is ambiguous and the error says which
plugins clash. Each stays reachable by its qualified name.

A model registered by import path (``register("pkg.model:MyModel", name=..., description=...)``)
is listed from its name and description alone; its module is imported on first use, so
listing imports no torch.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .datasets import Dataset
from .errors import ConfigError, PluginError, UnknownNameError
from .plugin_manager import (BUILTIN_DISTRIBUTION, PluginHost, PluginInfo, describe_exception, left_out_note,
                             strict_plugins)

DEFAULT_EVENT_SHAPE = (1, 28, 28)


@dataclass
class ModelSpec:
    """A registered model: its factory, or the import path of one, and where it came from.

    ``target`` is the factory itself or ``"module:attribute"``, imported on first use of
    ``factory`` (listing never imports it).
    """

    name: str
    target: Callable[..., Any] | str
    description: str
    plugin: str
    distribution: str = ""
    version: str = ""
    _loaded: Callable[..., Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def factory(self) -> Callable[..., Any]:
        """The factory, imported on first use when registered by import path (see ``load``)."""
        return self.load()

    def load(self) -> Callable[..., Any]:
        """The factory; an import path is imported once, and a failure is a PluginError of one
        line naming the model, its plugin and the path."""
        if self._loaded is None:
            self._loaded = self.target if not isinstance(self.target, str) else self._import()
        return self._loaded

    def _import(self) -> Callable[..., Any]:
        try:
            factory = import_target(self.target)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the plugin's module raises
            raise PluginError(f"model {self.name!r} of plugin {self.plugin} ({self.provenance}) cannot be "
                              f"imported from {self.target!r}: {describe_exception(exc)}") from exc
        if not callable(factory):
            raise PluginError(f"model {self.name!r} of plugin {self.plugin} ({self.provenance}): "
                              f"{self.target!r} is a {type(factory).__name__}, not a factory")
        return factory

    @property
    def provenance(self) -> str:
        """``distribution version``, or "in-process"."""
        return f"{self.distribution} {self.version}".strip() or "in-process"

    def as_dict(self) -> dict:
        return {"name": self.name, "qualified_name": self.qualified_name, "plugin": self.plugin,
                "distribution": self.distribution, "version": self.version, "description": self.description}


def split_target(target: str) -> tuple[str, str]:
    """``"pkg.module:Class"`` -> ("pkg.module", "Class"); ConfigError for any other shape."""
    module, sep, attribute = target.partition(":")
    if not sep or not module.strip() or not attribute.strip() or ":" in attribute:
        raise ConfigError(f"bad import path {target!r}: expected 'module:attribute', "
                          "e.g. 'densreg_mymodel.model:MyModel'")
    return module.strip(), attribute.strip()


def import_target(target: str) -> Any:
    """The object an import path ``"module:attribute"`` (``attribute`` may be dotted) names."""
    module, attribute = split_target(target)
    value = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def check_target(target: str, name: str) -> None:
    """ConfigError when the module of model ``name``'s import path ``target`` is not installed:
    looked up without executing it (only its parent packages are imported)."""
    module, _ = split_target(target)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package is missing
        found = None
    if found is None:
        raise ConfigError(f"model {name!r}: its import path {target!r} names no installed module {module!r}")


@dataclass
class Catalog:
    """Every model and dataset the loaded plugins registered."""

    host: PluginHost
    models: dict[str, list[ModelSpec]] = field(default_factory=dict)
    datasets: dict[str, list[Dataset]] = field(default_factory=dict)
    checks: dict[str, Callable[..., str]] = field(default_factory=dict)
    check_plugins: dict[str, str] = field(default_factory=dict)  # check name -> the plugin that registered it

    @classmethod
    def from_host(cls, host: PluginHost) -> "Catalog":
        catalog = cls(host)
        host.call_each("register_models", lambda info: {"register": catalog._model_registrar(info)})
        host.call_each("register_datasets", lambda info: {"register": catalog._dataset_registrar(info)})
        host.call_each("register_checks", lambda info: {"register": catalog._check_registrar(info)})
        catalog._roll_back({info.name for info in host.failed()})
        return catalog

    def _roll_back(self, plugins: set[str]) -> None:
        """Drop what ``plugins`` registered: a plugin whose hook raised half-way counts as not loaded
        (no model of it stays registered while it is reported as failed)."""
        for table in (self.models, self.datasets):
            for name in list(table):
                table[name] = [entry for entry in table[name] if entry.plugin not in plugins]
                if not table[name]:
                    del table[name]
        for name in [name for name, plugin in self.check_plugins.items() if plugin in plugins]:
            del self.checks[name], self.check_plugins[name]

    def registered_by(self, plugin: str) -> list[str]:
        """The names of the models and datasets that ``plugin`` registered (and that stay registered)."""
        return sorted(entry.name for table in (self.models, self.datasets) for group in table.values()
                      for entry in group if entry.plugin == plugin)

    def _check_registrar(self, info: PluginInfo):
        def register(name: str, check: Callable[..., str]) -> None:
            """A conformance check ``check(subject) -> str`` named ``name``; the first plugin to take a name
            keeps it (ConfigError for the next)."""
            if not isinstance(name, str) or not name or not callable(check):
                raise ConfigError(f"register_checks needs a name and a callable, got {name!r} and {check!r}")
            if name in self.checks:
                raise ConfigError(f"conformance check {name!r} is already registered")
            self.checks[name] = check
            self.check_plugins[name] = info.name
        return register

    def _model_registrar(self, info: PluginInfo):
        def register(factory, name: str | None = None, description: str | None = None) -> None:
            """``factory``: a callable (a DensityModel subclass), or the import path of one,
            ``"module:attribute"``, imported on first use; an import path needs ``name``."""
            spec = model_spec_of(factory, name, description, info)
            self.models.setdefault(spec.name, []).append(spec)
        return register

    def _dataset_registrar(self, info: PluginInfo):
        def register(dataset: Dataset) -> None:
            dataset.plugin, dataset.distribution = info.name, info.distribution
            self.datasets.setdefault(dataset.name, []).append(dataset)
        return register

    # -- lookup ---------------------------------------------------------------
    def failed_plugins_note(self) -> str:
        """"; plugins that failed to load: a (SystemExit: 3)" or "" when every plugin loaded."""
        failed = self.host.failed()
        if not failed:
            return ""
        return "; plugins that failed to load (see `densreg plugins`): " + ", ".join(
            f"{info.name} ({info.error})" for info in failed)

    def _resolve(self, table: dict[str, list], name: str, kind: str):
        plugin, _, bare = name.rpartition(":")
        candidates = table.get(bare, [])
        if plugin:
            candidates = [c for c in candidates if c.plugin == plugin]
        if not candidates:
            known = ", ".join(sorted(table)) or "none"
            raise UnknownNameError(f"unknown {kind} {name!r}; installed {kind}s: {known}"
                                   + self.failed_plugins_note() + left_out_note())
        if len(candidates) > 1 and not plugin:  # a built-in keeps its bare name
            builtins = [c for c in candidates if c.distribution == BUILTIN_DISTRIBUTION]
            candidates = builtins if len(builtins) == 1 else candidates
        if len(candidates) > 1:
            owners = ", ".join(f"{c.plugin} ({c.distribution or 'no distribution'})" for c in candidates)
            choices = " or ".join(f"{c.plugin}:{bare}" for c in candidates)
            raise UnknownNameError(f"{kind} name {bare!r} is registered by several plugins: {owners}; "
                                   f"pick one with {choices}")
        return candidates[0]

    def model(self, name: str) -> ModelSpec:
        return self._resolve(self.models, name, "model")

    def dataset(self, name: str) -> Dataset:
        return self._resolve(self.datasets, name, "dataset")

    def model_specs(self, pattern: str | None = None) -> list[ModelSpec]:
        specs = [s for group in self.models.values() for s in group]
        if pattern:
            specs = [s for s in specs if fnmatch.fnmatch(s.name, pattern) or fnmatch.fnmatch(s.qualified_name, pattern)]
        return sorted(specs, key=lambda s: (s.name, s.plugin))

    def clashes(self) -> dict[str, list[str]]:
        """Names registered by more than one plugin: {kind:name: [plugin, ...]}."""
        out = {}
        for kind, table in (("model", self.models), ("dataset", self.datasets)):
            for name, group in table.items():
                if len(group) > 1:
                    out[f"{kind}:{name}"] = [f"{g.plugin} ({g.distribution})" for g in group]
        return out

    def clash_messages(self) -> list[str]:
        """One sentence per clash: model and dataset names, plugin (entry-point) and command names."""
        lines = []
        for key, owners in self.clashes().items():
            kind, _, name = key.partition(":")
            table = self.models if kind == "model" else self.datasets
            builtins = [g.plugin for g in table[name] if g.distribution == BUILTIN_DISTRIBUTION]
            pick = (f"{name!r} means the built-in {builtins[0]}:{name}" if len(builtins) == 1
                    else f"{name!r} alone is refused")
            lines.append(f"{kind} name {name!r} is registered by {', '.join(owners)}: {pick}; "
                         f"use plugin:{name} to pick one")
        return lines + list(self.host.clashes)


def model_spec_of(factory, name: str | None, description: str | None, info: PluginInfo) -> ModelSpec:
    """The ModelSpec of one ``register`` call by plugin ``info``; ConfigError for a bad name or
    import path. Under DENSREG_STRICT_PLUGINS an import path is imported at once."""
    lazy = isinstance(factory, str)
    name = name or (None if lazy else getattr(factory, "registry_name", None))
    if lazy and not name:
        raise ConfigError(f"model {factory!r} is registered by import path: give its name=")
    if not name or ":" in name:
        raise ConfigError(f"a model needs a name without ':' (got {name!r})")
    if lazy:
        check_target(factory, name)
    doc = description or ("" if lazy else getattr(factory, "description", "") or inspect.getdoc(factory) or "")
    spec = ModelSpec(name, factory, doc.strip().splitlines()[0] if doc.strip() else "",
                     info.name, info.distribution, info.version)
    if lazy and strict_plugins():
        spec.load()  # strict mode: a path that does not import fails now, not at first use
    return spec


def _check_value(key: str, value: Any, default: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"bad value for {key!r}: {value!r} is not a finite number")
    if default is inspect.Parameter.empty or default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"bad value for {key!r}: {value!r} is not a {type(default).__name__} "
                          f"(default {default!r})")
    return value


RESERVED_KEYS = ("event_shape", "num_categories")  # come from the data, never from a config override


def reject_reserved(overrides: dict[str, Any]) -> None:
    """ConfigError naming the reserved keys in ``overrides``."""
    reserved = [key for key in RESERVED_KEYS if key in overrides]
    if reserved:
        raise ConfigError(f"{', '.join(map(repr, reserved))} cannot be set as config: the image shape and K come "
                          "from the data (a dataset, or --shape and --categories where a command has them)")


def check_config(factory: Callable[..., Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Reject reserved keys, keys the factory does not take and values of the wrong type; return
    the overrides."""
    reject_reserved(overrides)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(overrides)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(overrides)
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    out = {}
    for key, value in overrides.items():
        if key not in accepted:
            raise ConfigError(f"unknown config key {key!r}; accepted: {', '.join(accepted)}")
        out[key] = _check_value(key, value, params[key].default)
    return out


BUILTIN_DATASETS = "datasets"  # the entry point of densreg's own datasets (a torch-free module)


def find_dataset(name: str) -> Dataset:
    """Dataset ``name``, without importing torch when it is one of densreg's own: their plugin is
    loaded alone first (a built-in keeps its bare name whatever else is installed). Any other
    name is looked up among every plugin: in ``api``'s catalog when this process has it (it
    holds in-process plugins), else in a new one (a third-party plugin may import torch; where
    torch is missing it is reported as failed to load)."""
    host = PluginHost()
    host.load_entry_points(builtin=BUILTIN_DATASETS)
    try:
        return Catalog.from_host(host).dataset(name)
    except UnknownNameError:
        pass
    api = sys.modules.get(f"{__package__}.api")
    if api is not None:
        return api.get_dataset(name)
    host = PluginHost()
    host.load_entry_points()
    return Catalog.from_host(host).dataset(name)
