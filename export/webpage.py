"""An export folder as a static web site that scores, completes and samples in the browser.

    from densreg.export.webpage import write_site
    report = write_site("mnist-nade/", "mnist-site/")   # then serve mnist-site/ from any static server

The site holds ``index.html`` and three hand-written ES modules (``page.js``, ``densreg.js``,
``rng.js``: no framework, no build step), the export's graphs in ``model/`` (conditionals.onnx,
step.onnx, weights.bin, manifest.json, golden.json, README.md), ``site.json``, and onnxruntime-web's
files in ``ort/``, copied from the npm package pinned in ``export/web/package.json``: the WASM build
and, unless ``webgpu=False``, the WebGPU build, which the page loads instead when the browser has an
adapter. Nothing is fetched from elsewhere, so the site works offline.

The page reproduces the Python runtime exactly: the same graphs, the noise of the folder's rule
(``numpy.random.default_rng(seed).random((n, D))``; rng.js is numpy's SeedSequence and PCG64) and
the same inverse-CDF draw in float64, so its samples and completions equal ``densreg sample`` and
``densreg complete`` for the same seed, up to float32 rounding differences between the two
onnxruntime builds (which move a drawn value only when the noise falls within about 1e-6 of a
cumulative probability).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from densreg.registry import __version__
from densreg.registry.atomic import atomic_write_folder
from densreg.registry.errors import ConfigError

from . import format as fmt
from .runtime import ExportedModel

WEB = Path(__file__).resolve().parent / "web"  # the page's sources and the pinned package.json
PAGE_FILES = ("index.html", "page.js", "densreg.js", "rng.js")
MODEL_FILES = (fmt.CONDITIONALS, fmt.STEP, fmt.WEIGHTS, fmt.MANIFEST, fmt.GOLDEN, fmt.README)
ORT_FILES = {  # backend -> onnxruntime-web's files it loads (the .mjs imports its .wasm by name)
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
ORT_ENV = "DENSREG_ORT_WEB_DIR"


def pinned_version() -> str:
    """The onnxruntime-web version the site is written with (export/web/package.json)."""
    return json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"]


def default_ort_dir() -> Path:
    """$DENSREG_ORT_WEB_DIR, else the dist folder that `npm ci --prefix export/web` installs."""
    return Path(os.environ.get(ORT_ENV) or WEB / "node_modules" / "onnxruntime-web" / "dist")


def find_ort_files(ort_dir: Path, backends: tuple[str, ...]) -> dict[str, Path]:
    """{file name: path} of the onnxruntime-web files the backends need; ConfigError (one line, saying how
    to get them) when any is missing or the folder holds another version than the pinned one."""
    version = pinned_version()
    how = (f"run `npm ci --prefix export/web` in the densreg checkout, or pass --ort-dir (or set {ORT_ENV}) "
           f"to the dist folder of the npm package onnxruntime-web@{version}")
    names = [name for backend in backends for name in ORT_FILES[backend]]
    missing = [name for name in names if not (ort_dir / name).is_file()]
    if missing:
        raise ConfigError(f"onnxruntime-web's {missing[0]} is not in {ort_dir}: {how}")
    package = ort_dir.parent / "package.json"
    found = json.loads(package.read_text()).get("version") if package.is_file() else None
    if found is not None and found != version:
        raise ConfigError(f"{ort_dir} holds onnxruntime-web {found}, but the page is pinned to {version}: {how}")
    return {name: ort_dir / name for name in names}


def write_site(export_dir, out, ort_dir=None, webgpu: bool = True) -> dict:
    """Write the site of the export folder ``export_dir`` to ``out`` (replacing a previous site whole).

    The folder is opened by the Python runtime first (manifest, digests, versions), so a broken or
    hostile folder is refused as ``densreg sample`` refuses it. Returns a report: the model, the
    backends, the onnxruntime-web version, and the size of each part in bytes.
    """
    model = ExportedModel(export_dir, provider="cpu")
    if not model.family.discrete or model.family.name != "categorical":
        raise ConfigError(f"{model.name}'s export is a {model.family.describe()}: the page runs models of "
                          "categorical values only")
    if model.legacy:
        raise ConfigError(f"{export_dir} is a format-1 export (no pixel_log_prob); re-export the checkpoint")
    channels = model.event_shape[0]
    if channels not in (1, 3):
        raise ConfigError(f"the page draws grey or RGB images; {model.name} has {channels} channels")
    backends = ("wasm", "webgpu") if webgpu else ("wasm",)
    ort_files = find_ort_files(Path(ort_dir) if ort_dir else default_ort_dir(), backends)
    site_info = {"model": "model/", "densreg": __version__, "onnxruntime_web": pinned_version(),
                 "backends": list(backends)}
    files = {name: (WEB / name).read_bytes() for name in PAGE_FILES}
    files["site.json"] = (json.dumps(site_info, indent=2) + "\n").encode()
    files.update({f"model/{name}": (model.path / name).read_bytes() for name in MODEL_FILES})
    files.update({f"ort/{name}": path.read_bytes() for name, path in ort_files.items()})
    atomic_write_folder(out, files)
    sizes = {"page": sum(len(files[name]) for name in (*PAGE_FILES, "site.json")),
             "model": sum(len(data) for name, data in files.items() if name.startswith("model/")),
             "onnxruntime_web": sum(len(data) for name, data in files.items() if name.startswith("ort/"))}
    return {"model": model.name, "event_shape": list(model.event_shape), "num_categories": model.num_categories,
            "backends": list(backends), "onnxruntime_web": pinned_version(), "sizes": sizes,
            "total_bytes": sum(sizes.values())}
