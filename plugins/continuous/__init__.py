"""Built-in models of real-valued data (mixture-of-Gaussians conditionals): ``rnade`` and ``gaussian-mixture``.

Registered through the same ``register_models`` hook a third-party plugin uses (entry point
``continuous``); both are ``DensityModel`` subclasses whose family is ``GaussianMixture``.
This module imports no torch: the models are registered by import path, and the classes it
re-exports are imported on first use.
"""

from densreg.registry import hookimpl
from densreg.registry.lazy import lazy_exports

_EXPORTS = {".gaussian_mixture": ("GaussianMixture",), ".rnade": ("RNADE",)}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def register_models(register):
    register("densreg.plugins.continuous.rnade:RNADE", name="rnade",
             description="RNADE: NADE's shared hidden layer with a mixture of Gaussians per real value "
                         "(Uria et al. 2013)")
    register("densreg.plugins.continuous.gaussian_mixture:GaussianMixture", name="gaussian-mixture",
             description="Full-covariance mixture of Gaussians fit by EM (closed form); exact mixture conditionals")
