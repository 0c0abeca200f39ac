"""Load plugins from the ``densreg`` entry-point group, recording failures instead of crashing.

A plugin's failure, whatever it raises (SystemExit and KeyboardInterrupt included), is
recorded as its load error and the rest keeps working. densreg's own entry points load
first, so a third party that reuses one of their names is the one reported and skipped.

Environment: ``DENSREG_STRICT_PLUGINS=1`` makes a plugin failure fatal (a PluginError of
one line, the plugin's exception as its cause); ``DENSREG_LOAD_PLUGINS=a,b`` loads only
the named entry points, densreg's own included (``baselines``, ``nade``, ... must be named
to be loaded); a model or checkpoint of a plugin it leaves out says so (``left_out_note``).
"""

from __future__ import annotations

import os
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


def left_out(plugin: str = "", distribution: str = "") -> list[str]:
    """The installed entry points that $DENSREG_LOAD_PLUGINS leaves out ([] when it is not set): the one
    named ``plugin`` if it is left out, else those of ``distribution``; all of them when neither is given."""
    wanted = _selected_names()
    if wanted is None:
        return []
    found = {ep.name: provenance(ep)[0] for ep in entry_points(group=GROUP) if ep.name not in wanted}
    if plugin in found:
        return [plugin]
    if plugin or distribution:
        return sorted(name for name, dist in found.items() if distribution and dist == distribution)
    return sorted(found)


def left_out_note(plugin: str = "", distribution: str = "") -> str:
    """"; DENSREG_LOAD_PLUGINS=... leaves out the installed plugin(s) a, b" (see ``left_out``), or ""."""
    names = left_out(plugin, distribution)
    if not names:
        return ""
    return (f"; DENSREG_LOAD_PLUGINS={os.environ['DENSREG_LOAD_PLUGINS']} leaves out the installed "
            f"plugin{'s' if len(names) > 1 else ''} {', '.join(names)} (add it to the variable, or unset it)")


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message``; for pluggy's validation errors (an implementation that
    declares an argument the hookspec lacks) every line, joined by "; "."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, pluggy.PluginValidationError):
        lines = ["; ".join(lines)]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def declared_arguments(impl: pluggy.HookImpl, hook_name: str, kwargs: dict) -> list:
    """The values of the arguments ``impl`` declares (pluggy's ``HookImpl.argnames``), in its order."""
    missing = [name for name in impl.argnames if name not in kwargs]
    if missing:  # pluggy refuses such an implementation at registration; kept for hand-made calls
        raise TypeError(f"{hook_name} implementation takes {', '.join(map(repr, missing))}, "
                        f"which densreg does not pass (it passes {', '.join(map(repr, kwargs))})")
    return [kwargs[name] for name in impl.argnames]


BUILTIN_DISTRIBUTION = "densreg"  # its plugins load first and win a bare-name clash


def provenance(ep) -> tuple[str, str]:
    """(distribution, version) of entry point ``ep``, ("", "") without one; its metadata is parsed
    once (``dist.name`` and ``dist.version`` parse it at each access)."""
    if ep.dist is None:
        return "", ""
    metadata = ep.dist.metadata
    return metadata.get("Name") or "", metadata.get("Version") or ""


class PluginHost:
    """A pluggy manager plus what we learned while loading each plugin."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.clashes: list[str] = []  # entry-point and command names a plugin could not take

    def fail(self, info: PluginInfo, exc: BaseException, stage: str) -> None:
        """Record ``exc`` against ``info``; raise PluginError (one line, ``exc`` as its cause) when strict."""
        info.error = f"{stage}: {describe_exception(exc)}"
        if strict_plugins():
            raise PluginError(f"plugin {info.name!r} ({info.distribution} {info.version}) failed to {stage}: "
                              f"{describe_exception(exc)} (DENSREG_STRICT_PLUGINS is set)") from exc

    def failed(self) -> list[PluginInfo]:
        """The plugins that failed to load or register."""
        return [info for info in self.infos.values() if info.error]

    def load_entry_points(self, builtin: str | None = None) -> None:
        """Import and register every plugin of the ``densreg`` group (those $DENSREG_LOAD_PLUGINS names).

        ``builtin``: only that one of densreg's own entry points (e.g. "datasets", whose module
        imports neither torch nor a model plugin).
        """
        wanted = _selected_names()
        found = [(ep, *provenance(ep)) for ep in entry_points(group=GROUP) if wanted is None or ep.name in wanted]
        found.sort(key=lambda item: item[1] != BUILTIN_DISTRIBUTION)  # densreg's own first: no namesake displaces them
        if builtin is not None:
            found = [item for item in found if item[0].name == builtin and item[1] == BUILTIN_DISTRIBUTION]
        for ep, dist, version in found:
            if ep.name in self.infos:  # same name from two distributions: keep the first, report the second
                self.refuse_namesake(ep.name, dist, version)
            else:
                self.register_module(ep.name, ep.load, dist, version)

    def refuse_namesake(self, name: str, dist: str, version: str) -> None:
        """Record (as a clash and a load error) that ``dist``'s entry point ``name`` is already taken."""
        other = self.infos[name]
        clash = PluginInfo(name=f"{name}@{dist}", distribution=dist, version=version)
        self.infos[clash.name] = clash
        self.clashes.append(f"plugin name {name!r} of {dist or 'an unnamed distribution'} is already "
                            f"used by {other.distribution or 'another plugin'}; {dist}'s plugin is not loaded")
        self.fail(clash, RuntimeError(f"entry point name {name!r} is already used by {other.distribution}"), "load")

    def register_module(self, name: str, load, distribution: str = "", version: str = "") -> PluginInfo:
        """Import a plugin (``load()`` returns the module or object) and register its hooks."""
        info = PluginInfo(name=name, distribution=distribution, version=version)
        self.infos[name] = info
        try:
            plugin = load()
            self.pm.register(plugin, name=name)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit: a plugin must not take the program down
            self.fail(info, exc, "load")
            return info
        info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or [])
        return info

    def call_each(self, hook_name: str, make_kwargs, after=None) -> None:
        """Call ``hook_name`` plugin by plugin, in registration order, so that a failure is
        attributed to its plugin; ``make_kwargs(info)`` gives each call's arguments (every
        argument of the hookspec) and ``after(info)``, if given, runs after each call (failed or not).

        Each implementation gets only the arguments it declares, as pluggy's own calls do, so a
        hook can gain an argument without breaking the plugins written before it.
        """
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order
            info = self.infos.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name))
            try:
                impl.function(*declared_arguments(impl, hook_name, make_kwargs(info)))
            except BaseException as exc:  # noqa: BLE001 - a broken plugin must not take the others down
                self.fail(info, exc, f"run {hook_name}")
            finally:
                if after is not None:
                    after(info)
