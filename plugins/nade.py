"""NADE (Larochelle & Murray, 2011): registered as ``nade``."""

from densreg.registry import hookimpl


@hookimpl
def register_models(register):
    """Nothing registered yet."""
