"""The ``transformer`` plugin: ``transformer`` (``densreg.plugins.transformer``), registered by import path."""

from densreg.registry import hookimpl


@hookimpl
def register_models(register):
    register("densreg.plugins.transformer:Transformer", name="transformer",
             description="Autoregressive Transformer over the value sequence (as ImageGPT), with a key/value cache")
