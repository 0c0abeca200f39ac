"""densreg core: the density-model protocol, the plugin registry, datasets, checkpoints, CLI.

The core never imports a plugin; plugins import this package.
"""

from .api import (create_model, get_catalog, get_dataset, list_datasets, list_models, list_plugins,
                  load_split, model_spec, register_plugin, unregister_plugin)
from .catalog import Dataset, ModelSpec
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CheckpointError, ConfigError, DataError, DensregError, PluginError, UnknownNameError
from .hookspecs import hookimpl
from .orderings import make_ordering
from .protocol import DensityModel, State, at_position, categorical_from_uniform, validate_images
from .version import __version__

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "Dataset", "DensityModel", "DensregError", "ModelSpec",
    "PluginError", "State", "UnknownNameError", "__version__", "at_position", "categorical_from_uniform", "create_model",
    "get_catalog", "get_dataset", "hookimpl", "list_datasets", "list_models", "list_plugins", "load_checkpoint",
    "load_split", "make_ordering", "model_spec", "register_plugin", "save_checkpoint", "unregister_plugin",
    "validate_images",
]
