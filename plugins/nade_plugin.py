"""The ``nade`` plugin: ``nade`` (``densreg.plugins.nade``).

Registered by import path, so listing it imports no torch; the module is imported on
first use. Name and description equal the class's own (tests/test_lazy_plugins.py).
"""

from densreg.registry import hookimpl


@hookimpl
def register_models(register):
    register("densreg.plugins.nade:NADE", name="nade",
             description="NADE (Larochelle & Murray 2011): one hidden layer with weights shared across positions")
