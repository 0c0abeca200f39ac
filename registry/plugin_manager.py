"""Load plugins from the ``densreg`` entry-point group, recording failures instead of crashing.

Environment: ``DENSREG_STRICT_PLUGINS=1`` makes a plugin failure fatal;
``DENSREG_LOAD_PLUGINS=a,b`` loads only the named entry points.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import PluginError

GROUP = "densreg"


@dataclass
class PluginInfo:
    """One plugin: entry-point name, distribution, version, hooks it implements, load error."""

    name: str
    distribution: str = ""
    version: str = ""
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "hooks": self.hooks, "error": self.error}


def strict_plugins() -> bool:
    return os.environ.get("DENSREG_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes")


def _selected_names() -> set[str] | None:
    raw = os.environ.get("DENSREG_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginHost:
    """A pluggy manager plus what we learned while loading each plugin."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def fail(self, info: PluginInfo, exc: BaseException, stage: str) -> None:
        """Record ``exc`` against ``info``; raise PluginError when strict."""
        info.error = f"{stage}: {describe_exception(exc)}"
        if strict_plugins():
            detail = "".join(traceback.format_exception(exc))
            raise PluginError(
                f"plugin {info.name!r} ({info.distribution} {info.version}) failed to {stage}: "
                f"{describe_exception(exc)}\n{detail}"
            ) from exc

    def load_entry_points(self) -> None:
        wanted = _selected_names()
        for ep in entry_points(group=GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            if ep.name in self.infos:  # same name from two distributions: keep the first, report the second
                dist = ep.dist.name if ep.dist else ""
                other = self.infos[ep.name]
                clash = PluginInfo(name=f"{ep.name}@{dist}", distribution=dist,
                                   version=ep.dist.version if ep.dist else "")
                self.infos[clash.name] = clash
                self.fail(clash, RuntimeError(
                    f"entry point name {ep.name!r} is already used by {other.distribution}"), "load")
                continue
            self.register_module(ep.name, ep.load, ep.dist.name if ep.dist else "",
                                 ep.dist.version if ep.dist else "")

    def register_module(self, name: str, load, distribution: str = "", version: str = "") -> PluginInfo:
        """Import a plugin (``load()`` returns the module or object) and register its hooks."""
        info = PluginInfo(name=name, distribution=distribution, version=version)
        self.infos[name] = info
        try:
            plugin = load()
            self.pm.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            self.fail(info, exc, "load")
            return info
        info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or [])
        return info

    def call_each(self, hook_name: str, make_kwargs) -> None:
        """Call ``hook_name`` plugin by plugin, in registration order, so that a failure is
        attributed to its plugin; ``make_kwargs(info)`` gives each call's arguments."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order
            info = self.infos.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name))
            try:
                impl.function(**make_kwargs(info))
            except Exception as exc:  # a broken plugin must not take the others down
                self.fail(info, exc, f"run {hook_name}")
