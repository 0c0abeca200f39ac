"""The ``made`` plugin: ``made`` (``densreg.plugins.made``), registered by import path (no torch to list it)."""

from densreg.registry import hookimpl


@hookimpl
def register_models(register):
    register("densreg.plugins.made:MADE", name="made",
             description="MADE (Germain et al. 2015): a masked dense network, every conditional in one pass; "
                         "ensembles over masks")
