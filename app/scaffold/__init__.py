"""A new plugin package from the template in ``template/`` (``densreg plugin new NAME``).

``write_plugin(name, out)`` writes a pip-installable distribution ``densreg-NAME`` whose entry point
``NAME`` (group ``densreg``) registers the model ``NAME`` (a first-order autoregressive table,
trained by gradients) by import path and the dataset ``NAME-runs``, with tests that run densreg's
conformance kit on the model. The template files are text with ``{{key}}`` fields (``fields``);
a path segment ``__package__`` becomes the import package ``densreg_NAME`` and the ``.tmpl``
suffix is dropped. Torch-free.
"""

from __future__ import annotations

import re
from importlib.resources import files as resource_files
from pathlib import Path

from densreg.registry import ConfigError, DataError, atomic_write_bytes, atomic_write_folder, __version__
from densreg.registry.locking import output_lock

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_NAME = 40
FIELD = re.compile(r"\{\{(\w+)\}\}")


def check_name(name: str) -> None:
    """ConfigError unless ``name`` can be the plugin's, model's and (after ``densreg-``) distribution's
    name: lower-case letters and digits, single ``-`` or ``_`` between them, a letter first, at most
    MAX_NAME characters, not ``densreg...``, and no installed plugin or registered model called so."""
    from densreg.registry import api

    if len(name) > MAX_NAME or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"bad plugin name {name!r}: use lower-case letters and digits, with single - or _ "
                          f"between them, starting with a letter, at most {MAX_NAME} characters (e.g. my-model)")
    if name.startswith("densreg"):
        raise ConfigError(f"bad plugin name {name!r}: give the name without densreg (the distribution is densreg-NAME)")
    plugin = next((info for info in api.list_plugins() if info.name == name), None)
    if plugin is not None:
        raise ConfigError(f"a plugin named {name!r} is already installed ({plugin.distribution or 'in-process'}); "
                          "pick another name")
    if name in api.list_models():
        spec = api.model_spec(name)
        raise ConfigError(f"a model named {name!r} is already registered by plugin {spec.plugin} "
                          f"({spec.provenance}); pick another name")


def fields(name: str) -> dict[str, str]:
    """The values of the template's ``{{key}}`` fields for the plugin ``name``."""
    words = re.split(r"[-_]", name)
    major, minor = __version__.split(".")[:2]
    return {"name": name, "package": "densreg_" + "_".join(words), "distribution": f"densreg-{name}",
            "class_name": "".join(word.capitalize() for word in words), "dataset": f"{name}-runs",
            "densreg_version": f"{major}.{minor}",
            "description": "First-order autoregressive table p(x_d | x_(d-1)), trained by gradients"}


def render(name: str) -> dict[str, bytes]:
    """{path inside the package folder: content} of the plugin ``name`` (the name is not checked)."""
    values = fields(name)
    root = resource_files(__name__) / "template"
    out: dict[str, bytes] = {}

    def walk(folder, prefix: str) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name == "__pycache__":
                continue
            path = prefix + entry.name.replace("__package__", values["package"]).removesuffix(".tmpl")
            if entry.is_dir():
                walk(entry, path + "/")
            else:
                out[path] = FIELD.sub(lambda match: values[match.group(1)], entry.read_text("utf-8")).encode()

    walk(root, "")
    return out


def write_plugin(name: str, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Check ``name``, then write the plugin package into ``out`` (default ``./densreg-NAME``), which
    must not exist or be an empty folder (DataError otherwise). Returns the folder and the paths written."""
    check_name(name)
    target = Path(out if out is not None else f"densreg-{name}")
    if target.is_symlink() or target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = ("a symbolic link" if target.is_symlink() else "a folder that is not empty" if target.is_dir()
                else "not a folder")
        raise DataError(f"refusing to write the plugin into {target}: it is {what}; give --out a new folder")
    content = render(name)
    with output_lock(target, "folder"):  # one writer, as for every file densreg writes
        _write(target, content)
    return target, list(content)


def _write(target: Path, content: dict[str, bytes]) -> None:
    if target.exists():  # an empty folder, maybe the shell's current one: filled in place, never replaced
        for path, data in content.items():
            atomic_write_bytes(target / path, data)
    else:
        atomic_write_folder(target, content)
