"""The densreg plugin module (entry point ``mixture`` in group ``densreg``): a model and a dataset.

The model is registered by import path, name and description, so listing it imports neither
``.model`` nor torch; densreg imports it when the model is first used. (Passing the class
itself, ``register(Mixture)``, works too, at the price of importing torch to list.)
"""

from densreg.registry import hookimpl

from .bars import BARS


@hookimpl
def register_models(register):
    register("densreg_mixture.model:Mixture", name="mixture",
             description="Mixture of Bernoullis/categoricals: exact log_prob by log-sum-exp, EM fit")


@hookimpl
def register_datasets(register):
    register(BARS)
