"""Errors of densreg.export, importable without torch.

They subclass the core's DensregError (so the CLI prints them as one line), but
``import densreg.registry.errors`` would run the ``densreg.registry`` package, which
imports torch. So the core's errors module, which imports nothing, is loaded from
its file under its own name when the package is not loaded yet; a later
``import densreg.registry`` then finds that same module, and every class keeps one
identity in both orders of import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_CORE_ERRORS = "densreg.registry.errors"


def _core_errors():
    if _CORE_ERRORS in sys.modules:
        return sys.modules[_CORE_ERRORS]
    if "densreg.registry" in sys.modules:  # the package is loaded: import normally
        return importlib.import_module(_CORE_ERRORS)
    registry = importlib.util.find_spec("densreg.registry")  # locates it without running it
    if registry is None or not registry.submodule_search_locations:
        raise ImportError("densreg.registry is not installed")
    path = Path(next(iter(registry.submodule_search_locations))) / "errors.py"
    spec = importlib.util.spec_from_file_location(_CORE_ERRORS, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_CORE_ERRORS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(_CORE_ERRORS, None)
        raise
    return module


_errors = _core_errors()
DensregError = _errors.DensregError
DataError = _errors.DataError


class ExportError(_errors.DensregError):
    """A model cannot be exported to ONNX, or the export fails its parity check."""


class RuntimeLoadError(_errors.DensregError):
    """An export folder cannot be opened: a file missing, corrupt or truncated, or another format version."""


__all__ = ["DataError", "DensregError", "ExportError", "RuntimeLoadError"]
