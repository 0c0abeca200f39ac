"""The densreg plugin module (entry point ``mixture`` in group ``densreg``): a model and a dataset."""

from densreg.registry import hookimpl

from .bars import BARS
from .model import Mixture


@hookimpl
def register_models(register):
    register(Mixture)


@hookimpl
def register_datasets(register):
    register(BARS)
