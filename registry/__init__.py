"""densreg.registry: the core a plugin author meets.

The density-model protocol and orderings, the hookspecs and plugin host, the catalog of
models and datasets, checkpoints, errors, and the conformance kit (``densreg.registry.testing``).
The core never imports a plugin or the application (``densreg.app``); plugins import it.

Names are loaded on first use (PEP 562), so torch-free modules such as ``errors``,
``saved`` and ``atomic`` import without torch (the onnxruntime side relies on it).
"""

from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    ".api": ("create_model", "get_catalog", "get_dataset", "list_datasets", "list_models", "list_plugins",
             "load_split", "model_spec", "register_plugin", "unregister_plugin"),
    ".atomic": ("atomic_write_bytes", "atomic_write_folder"),
    ".catalog": ("ModelSpec",),
    ".families": ("Categorical", "Family", "GaussianMixture", "MixtureParams", "family_from_spec",
                  "mixture_log_density", "register_family"),
    ".checkpoint": ("load_checkpoint", "save_checkpoint"),
    ".datasets": ("Dataset", "cache_dir"),
    ".errors": ("CheckpointError", "ConfigError", "DataError", "DensregError", "ExportError", "ModelOutputError",
                "PluginError", "RuntimeLoadError", "UnknownNameError"),
    ".hookspecs": ("hookimpl",),
    ".locking": ("output_lock",),
    ".orderings": ("make_ordering",),
    ".protocol": ("ContinuousDensityModel", "DensityModel", "State", "at_position", "categorical_from_uniform",
                  "validate_images", "validate_values"),
    ".saved": ("SavedModelInfo",),
    ".version": ("__version__",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
