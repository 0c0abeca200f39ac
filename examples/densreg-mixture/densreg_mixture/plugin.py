"""The densreg plugin module (entry point ``mixture`` in group ``densreg``)."""

from densreg.registry import hookimpl

from .model import Mixture


@hookimpl
def register_models(register):
    register(Mixture)
